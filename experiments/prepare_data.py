"""Prepare a training dataset: `python -m experiments.prepare_data --input=GLOB_OR_JSONL --output_dir=DIR --name=NAME`.

Reads raw text (comma-separated files, globs or folders of text / markdown / code files;
.jsonl files with --text_field; either compressed as .gz / .bz2 / .xz; or tfds:NAME with
--tfds_data_dir / --tfds_split; binary files and --output_dir are skipped), runs the
stages of research.data.preparation on datatrove's executor, and writes the TFDS dataset
DIR/NAME/1.0.0 (array_record; `text` and `origin` features; train and validation splits)
with preparation_report.{json,txt,png} beside it. Rerunning the same command resumes an
interrupted run, or returns at once when the dataset is already there.
"""
from __future__ import annotations

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments.cli import parse_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "prepare_data.py")


def _define_flags() -> None:
    # Defined only when run as a program (as experiments.evaluate does): importing this module
    # (tests, notebooks, another entry point in the same process) adds no global flags, whose
    # names (config, output_dir) collide with the other entry points'.
    # No default config here: ml_collections would load it, with every --config.KEY override, when
    # the flag is defined, where a misspelled key is a traceback. _parse_flags puts it on the
    # command line instead, so experiments.cli.parse_flags reports such a key in one line.
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. experiments/configs/prepare_data.py:code (default: its 'web' preset).")
    flags.DEFINE_string("input", None, "Comma-separated files, globs ('**' recurses) or folders; or tfds:NAME.")
    flags.DEFINE_string("output_dir", None, "TFDS data_dir to write the dataset into.")
    flags.DEFINE_string("name", None, "Dataset name (lower-case letters, digits, '_').")
    flags.DEFINE_string("text_field", "text", "JSON key (.jsonl) or TFDS feature holding the text.")
    flags.DEFINE_string("tfds_data_dir", "", "data_dir of a tfds:NAME input.")
    flags.DEFINE_string("tfds_split", "train", "Split of a tfds:NAME input.")
    flags.mark_flags_as_required(["input", "output_dir", "name"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    from research.data.config import DataError
    from research.data.preparation import PreparationConfig, prepare_dataset, resolve_inputs
    from research.data.preparation.prepare import check_destination
    from research.data.preparation.report import summary_text

    f = flags.FLAGS
    try:
        check_destination(f.output_dir, f.name)  # before reading a possibly large input
        config = PreparationConfig.from_dict(f.config.to_dict())
        spec = resolve_inputs(f.input, text_field=f.text_field, tfds_data_dir=f.tfds_data_dir,
                              tfds_split=f.tfds_split, exclude=f.output_dir)
        report = prepare_dataset(spec, output_dir=f.output_dir, name=f.name, config=config)
    except DataError as error:
        sys.exit(f"error: {error}")
    except Exception as error:  # a DataError raised inside a datatrove task arrives wrapped or re-raised
        cause = error
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        sys.exit(f"error: {cause}")
    if report.get("submitted"):
        print(f"submitted; the dataset will appear at {report['dataset_dir']} (work dir {report['work_dir']})")
    else:
        print(summary_text(report).split("\n\nExamples")[0])


def _parse_flags(argv: list[str]) -> list[str]:
    """parse_flags, with --config=DEFAULT_CONFIG first when no --config is given (overrides apply to it)."""
    if not any(re.match(r"-{1,2}config(=|$)", arg) for arg in argv[1:]):
        argv = [argv[0], f"--config={DEFAULT_CONFIG}", *argv[1:]]
        sys.argv = argv  # ml_collections reads the --config.KEY overrides from sys.argv
    return parse_flags(argv)


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=_parse_flags)
