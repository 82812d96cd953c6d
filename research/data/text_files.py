"""A TFDS builder for local text files, prepared as array_record without TensorFlow.

tensorflow_datasets 4.9.10 can run a real `tfds.core.GeneratorBasedBuilder` with
`file_format="array_record"` when TensorFlow is not installed (serialization is pure
Python; only tfrecord needs TF), so this is an ordinary builder. It writes TFDS's own
layout, read back by `tfds.data_source` like any prepared dataset:

    {data_dir}/research_text_files/{config}/1.3.0/research_text_files-train.array_record-00000-of-00001

The config name is a digest of the matched files (their common directory, and each file's path
in it, size and mtime), the text field and the validation fraction, so a rerun reuses the
prepared data and an edited or other corpus is rebuilt. Processes sharing a data_dir (the hosts
of one job, parallel sweep workers) prepare it once: the first takes a lock, the others wait and
read its copy. Each record is {"text": document, "origin": "path" or "path:line"}.

Not everything the patterns match is corpus (`expand_patterns`): `corpus/**/*` matched the prepared copy
itself (its shards and dataset_info.json became documents, so the digest and the corpus changed at every
open) and `**/*.jsonl` a run's metrics.jsonl. So these are left out, counted in one log line:
  - files under a `research_text_files` folder: this builder's output, wherever its data_dir (other
    files of a data_dir, e.g. a corpus in ~/tensorflow_datasets/downloads/manual, stay corpus);
  - files of a run's workdir: under a folder holding a run.json with a "fingerprint", the record
    research.training.workdir writes before a run writes anything else, at or below the folder a
    pattern names before its first wildcard (a corpus kept inside a workdir, as with --workdir=.,
    and named by its own folder, stays corpus).
Binary files (data preparation's rule: a NUL byte in the first 8 KB: parquet, archives, images) are
skipped with one warning. A .json file of JSON Lines is read as JSON Lines (document_files.reads_as_jsonl). A split
that no document can fall in (one input.txt is one document, wholly in train or validation) is refused
before anything is prepared.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import itertools
import json
import logging
import math
import os
from typing import Iterator, Sequence

import tensorflow_datasets as tfds

from research.data.config import DataConfig, DataError
from research.data.document_files import (READ_ERRORS, cannot_read, decode_utf8, looks_binary, open_input, read_head,
                                          reads_as_jsonl, record_text)
from research.data.sources import empty_split, in_validation, split_bucket

BUILDER_NAME = "research_text_files"
# research.training.workdir.RUN_FILE, written at a run's claim (importing that module loads the training loop).
_RUN_RECORD = "run.json"

log = logging.getLogger(__name__)
_logged: set[str] = set()


def _log_once(key: str, message: str) -> None:
    """Warn `message` the first time only of `key`: the source is opened at every evaluation (and the
    count of files left out grows once the copy is prepared)."""
    if key not in _logged:
        _logged.add(key)
        log.warning("%s", message)


def _holds_run_record(folder: str) -> bool:
    try:
        with open(os.path.join(folder, _RUN_RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):  # none there (the usual case), or another program's run.json
        return False
    return isinstance(record, dict) and "fingerprint" in record


def _in_workdir(folder: str, top: str, seen: dict[str, bool]) -> bool:
    """Whether `folder`, or a folder between it and `top` (both included), holds a run's record;
    `seen` caches each folder's answer."""
    if folder not in seen:
        parent = os.path.dirname(folder)
        above = folder == top or parent == folder  # a workdir above the pattern's own folder was chosen on purpose
        seen[folder] = (not above and _in_workdir(parent, top, seen)) or _holds_run_record(folder)
    return seen[folder]


def _literal_folder(pattern: str) -> str:
    """The folder a glob pattern names before its first wildcard ('corpus/**/*' -> corpus)."""
    parts = os.path.abspath(pattern).split(os.sep)
    literal = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    return os.sep.join(literal if len(literal) < len(parts) else literal[:-1]) or os.sep


def _not_corpus(path: str, top: str, seen: dict[str, bool]) -> str:
    """Why `path` (absolute, matched by a pattern whose literal folder is `top`) is this builder's
    prepared data or a run's file (module docstring); "" if neither."""
    if BUILDER_NAME in path.split(os.sep)[:-1]:
        return f"in a {BUILDER_NAME} folder, this source's prepared data"
    in_run = _in_workdir(os.path.dirname(path), top, seen)
    return "in a run's workdir, a folder holding run.json" if in_run else ""


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Sorted, de-duplicated files matching `patterns`, less prepared data and runs' files (module
    docstring); a pattern matching no other file is an error."""
    files: set[str] = set()
    left_out: dict[str, str] = {}  # path -> why
    for pattern in patterns:
        matched = {os.path.abspath(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p)}
        if not matched:
            raise DataError(f"file pattern {pattern!r} matches no files; check the path or the glob "
                            "('**' matches directories recursively).")
        top, seen = _literal_folder(os.path.expanduser(pattern)), {}
        outputs = {p: why for p in sorted(matched) if (why := _not_corpus(p, top, seen))}
        if len(outputs) == len(matched):
            example, why = next(iter(outputs.items()))
            raise DataError(f"file pattern {pattern!r} matches no files but this source's prepared data or a run's, "
                            f"never documents (e.g. {example} is {why}); check the glob, and keep data_dir and "
                            "workdirs out of the corpus folder.")
        files |= matched - outputs.keys()
        left_out.update(outputs)
    if left_out:
        example, why = min(left_out.items())
        _log_once(f"left out {patterns}", f"file patterns {list(patterns)}: left out {len(left_out)} matched files "
                  f"of this source's prepared data or a run's (e.g. {example} is {why}); they are never documents.")
    return sorted(files)


# (path, size, mtime) -> whether binary: the source is opened at every evaluation, each head read once.
_binary: dict[tuple[str, int, int], bool] = {}


def _without_binary(files: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """`files` less the binary ones (parquet bytes were trained on as text, as U+FFFD), with one warning."""
    binary = []
    for path in files:
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in _binary:
            _binary[key] = looks_binary(read_head(path))
        if _binary[key]:
            binary.append(path)
    if len(binary) == len(files):
        raise DataError(f"file patterns {list(patterns)} match only binary files (a NUL byte in the first 8 KB: "
                        f"parquet, archives, compiled or image files; e.g. {binary[0]}); give text, markdown, code "
                        "or JSON Lines files.")
    if binary:
        _log_once(f"binary {patterns}", f"file patterns {list(patterns)}: skipped {len(binary)} binary files "
                  f"(a NUL byte in the first 8 KB, e.g. {binary[0]}); they are not text.")
    skipped = set(binary)
    return [path for path in files if path not in skipped]


def _documents(path: str, text_field: str) -> Iterator[tuple[str, str, int]]:
    """(key, text, undecodable sequences) for each document in one file: a JSON Lines line, or the whole
    file; compressed files (.gz, .bz2, .xz) are read decompressed, as data preparation reads them."""
    jsonl = reads_as_jsonl(path, text_field)
    try:
        with open_input(path) as f:
            if not jsonl:  # newlines as text-mode reading gives them (1.0.0 read that way)
                text, invalid = decode_utf8(f.read())
                yield path, text.replace("\r\n", "\n").replace("\r", "\n"), invalid
                return
            for line_no, raw in enumerate(f, start=1):
                if raw.strip():
                    text, invalid, _ = record_text(raw, path, line_no, text_field)
                    yield f"{path}:{line_no}", text, invalid
    except READ_ERRORS as e:
        raise cannot_read(path, e) from None


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
    """Which files make the dataset; `name` is their digest (see module docstring)."""

    files: tuple[str, ...] = ()
    root: str = ""  # keys are relative to this directory, so the split survives a move
    text_field: str = "text"
    validation_fraction: float = 0.05
    splits: tuple[str, ...] = ("train", "validation")  # the non-empty ones: TFDS cannot write empty splits

    def __repr__(self) -> str:
        # TFDS logs a custom config at every builder made ("Using custom data configuration: %s"), three
        # per opened split, and the dataclass's own repr lists every file: 136 KB per split for 2,000 files.
        return f"TextFilesConfig({self.name}: {len(self.files)} files under {self.root})"


class _QuietCustomConfig(logging.Filter):
    """Drops TFDS's "Using custom data configuration" warning for these configs: every config here is
    custom (a digest of the files), and the line came at every builder made, three per opened split,
    so at every evaluation of a run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Using custom data configuration") and
                    isinstance(record.args, tuple) and record.args and isinstance(record.args[0], TextFilesConfig))


logging.getLogger("absl").addFilter(_QuietCustomConfig())  # TFDS logs through absl.logging


class ResearchTextFiles(tfds.core.GeneratorBasedBuilder):
    """Documents from local files, split into train / validation by a hash of each key."""

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {"1.3.0": "This builder's own prepared data, a run's workdir files and binary files are left out, "
                              "and a .json file of JSON Lines is read as JSON Lines (1.2.0 stored the prepared "
                              "copy's shards, metrics.jsonl, parquet bytes and raw JSON as documents).",
                     "1.2.0": "'.JSONL' and '.ndjson' files are JSON Lines (1.1.0 stored each as one document of raw "
                              "JSON).",
                     "1.1.0": "Compressed files are read decompressed; a JSONL text field that is not a string is "
                              "an error (1.0.0 stored gzip bytes, and the text 'None' of a null field).",
                     "1.0.0": "Initial release."}
    # Nothing is downloaded, so there are no URL checksums to find next to this module; TFDS's
    # own lookup of them needs the `importlib_resources` backport, which is not a dependency.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local text files: one document per file, or per line of a .jsonl file.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "origin": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in self.builder_config.splits}

    def _generate_examples(self, split: str):
        for key, text, in_split, _ in _split_documents(self.builder_config):
            if in_split == split:
                yield key, {"text": text, "origin": key}


def _split_documents(config: TextFilesConfig) -> Iterator[tuple[str, str, str, int]]:
    """(key relative to config.root, text, split, undecodable sequences) of every non-blank document."""
    for path in config.files:
        for key, text, invalid in _documents(path, config.text_field):
            if text.strip():
                key = os.path.relpath(key, config.root)
                yield key, text, "validation" if in_validation(key, config.validation_fraction) else "train", invalid


def _fraction_between(low: float, high: float) -> float | None:
    """The shortest decimal in (low, high]: a validation_fraction that holds out the file whose key
    hashes to `low` and keeps the one hashing to `high` in train."""
    for digits in range(2, 8):
        fraction = (math.floor(low * 10**digits) + 1) / 10**digits
        if fraction <= high:
            return round(fraction, digits)
    return None


def _check_whole_files_split(config: DataConfig, files: Sequence[str], root: str, split: str) -> None:
    """Refuse `split` when no file's key falls in it, every file being one document: known from the
    paths alone, before anything is prepared (each try left a copy of the corpus in the data_dir, and
    one input.txt can never give both splits: raising validation_fraction moved it whole to validation)."""
    buckets = sorted(split_bucket(os.path.relpath(path, root)) for path in files if os.path.getsize(path))
    fraction = config.validation_fraction
    if not buckets or (buckets[0] < fraction if split == "validation" else buckets[-1] >= fraction):
        return
    whole = ("split the text into several files (e.g. one per chapter), or give a .jsonl file of documents, "
             "one {\"text\": ...} per line")
    if len(buckets) == 1:
        other = "train" if split == "validation" else "validation"
        fix = whole + ("" if fraction or split == "train" else ", with validation_fraction > 0")
        raise DataError(f"split {split!r} of {config.describe()} has no documents; its one file is one document, "
                        f"which a hash of its path puts in {other} at validation_fraction={fraction}: {fix}.")
    suggested = _fraction_between(buckets[0], buckets[-1])
    fix = f"set validation_fraction={suggested} (the smallest that holds out a file), add files, or {whole}"
    raise DataError(f"split {split!r} of {config.describe()} has no documents; its {len(buckets)} files are one "
                    f"document each, and a hash of each path puts none in {split} at validation_fraction={fraction}: "
                    f"{fix if suggested else whole}.")


@contextlib.contextmanager
def _exclusive(lock_path: str) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` (created if missing); released on exit or if the
    process dies, so a crashed preparation never blocks the next. Cloud paths (gs://) are not
    locked: flock needs a local or network file system."""
    if "://" in lock_path:
        yield
        return
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def text_files_builder(config: DataConfig, split: str | None = None) -> ResearchTextFiles:
    """The builder for `config`'s files, prepared (once) under its data_dir; errors before any work,
    among them (`split` given) a split that would hold no document."""
    patterns = config.file_patterns
    files = _without_binary(expand_patterns(patterns), patterns)
    stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in files]
    if sum(size for _, size, _ in stats) == 0:
        raise DataError(f"file patterns {list(patterns)} match only empty files; nothing to train on.")
    root = os.path.commonpath([os.path.dirname(p) for p in files])
    # Whole files only (a JSON Lines file holds many documents): the split is known from the paths.
    if split is not None and not any(reads_as_jsonl(path, config.text_field) for path in files):
        _check_whole_files_split(config, files, root, split)
    # The absolute root too: two unpacked copies of a corpus (archive mtimes, equal sizes) in two
    # directories otherwise shared one name, and the second read the first's prepared text.
    fingerprint = json.dumps([root] + [[os.path.relpath(p, root), s, m] for p, s, m in stats]
                             + [config.text_field, config.validation_fraction])
    builder_config = TextFilesConfig(
        name="files_" + hashlib.sha1(fingerprint.encode()).hexdigest()[:16],
        description=",".join(patterns), files=tuple(files), root=root, text_field=config.text_field,
        validation_fraction=config.validation_fraction,
    )

    def make(builder_config: TextFilesConfig) -> ResearchTextFiles:
        return ResearchTextFiles(config=builder_config, data_dir=config.data_dir or None, file_format="array_record")

    builder = make(builder_config)
    if builder.is_prepared():
        return builder
    # Processes sharing data_dir (a job's hosts, parallel sweep workers) all find it unprepared;
    # unlocked, both prepared it and the second crashed renaming its copy onto the first's. So:
    # one prepares under the lock, the others wait, see it prepared, and read that copy.
    with _exclusive(os.path.join(os.path.dirname(os.path.dirname(builder.data_dir)), builder_config.name + ".lock")):
        if not make(builder_config).is_prepared():
            # One read before TFDS starts: bad JSON / a missing field / no text / an empty split fail here, cleanly.
            splits, documents, invalid = set(), 0, 0
            for _, _, in_split, bad in _split_documents(builder_config):
                splits.add(in_split)
                documents, invalid = documents + (bad > 0), invalid + bad
            if not splits:
                raise DataError(f"file patterns {list(patterns)} hold no non-blank documents; nothing to train on.")
            if split is not None and split not in splits:
                raise empty_split(config, split)
            if invalid:
                _log_once(f"invalid {builder_config.name}", f"file patterns {list(patterns)}: {documents} "
                          f"documents held {invalid} byte sequences that are not UTF-8, stored as U+FFFD.")
            make(dataclasses.replace(builder_config, splits=tuple(sorted(splits)))).download_and_prepare()
    return make(builder_config)  # a builder made now reads the prepared dataset's info (its splits) from disk
