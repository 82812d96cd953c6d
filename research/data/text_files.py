"""A TFDS builder for local text files, prepared as array_record without TensorFlow.

tensorflow_datasets 4.9.10 can run a real `tfds.core.GeneratorBasedBuilder` with
`file_format="array_record"` when TensorFlow is not installed (serialization is pure
Python; only tfrecord needs TF), so this is an ordinary builder. It writes TFDS's own
layout, read back by `tfds.data_source` like any prepared dataset:

    {data_dir}/research_text_files/{config}/1.2.0/research_text_files-train.array_record-00000-of-00001

The config name is a digest of the matched files (their common directory, and each file's path
in it, size and mtime), the text field and the validation fraction, so a rerun reuses the
prepared data and an edited or other corpus is rebuilt. Processes sharing a data_dir (the hosts
of one job, parallel sweep workers) prepare it once: the first takes a lock, the others wait and
read its copy. Each record is {"text": document, "origin": "path" or "path:line"}.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import logging
import os
from typing import Iterator, Sequence

import tensorflow_datasets as tfds

from research.data.config import DataError
from research.data.document_files import READ_ERRORS, cannot_read, decode_utf8, is_jsonl, open_input, record_text
from research.data.sources import in_validation

BUILDER_NAME = "research_text_files"


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Sorted, de-duplicated files matching `patterns`; a pattern matching no file is an error."""
    files: set[str] = set()
    for pattern in patterns:
        matched = [p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)]
        if not matched:
            raise DataError(f"file pattern {pattern!r} matches no files; check the path or the glob "
                            "('**' matches directories recursively).")
        files.update(os.path.abspath(p) for p in matched)
    return sorted(files)


def _documents(path: str, text_field: str) -> Iterator[tuple[str, str]]:
    """(key, text) for each document in one file: a .jsonl line, or the whole file; compressed
    files (.gz, .bz2, .xz) are read decompressed, as data preparation reads them."""
    try:
        with open_input(path) as f:
            if not is_jsonl(path):  # newlines as text-mode reading gives them (1.0.0 read that way)
                yield path, decode_utf8(f.read())[0].replace("\r\n", "\n").replace("\r", "\n")
                return
            for line_no, raw in enumerate(f, start=1):
                if raw.strip():
                    yield f"{path}:{line_no}", record_text(raw, path, line_no, text_field)[0]
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

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.2.0": "'.JSONL' and '.ndjson' files are JSON Lines (1.1.0 stored each as one document of raw "
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
        for key, text, in_split in _split_documents(self.builder_config):
            if in_split == split:
                yield key, {"text": text, "origin": key}


def _split_documents(config: TextFilesConfig) -> Iterator[tuple[str, str, str]]:
    """(key relative to config.root, text, split) of every non-blank document."""
    for path in config.files:
        for key, text in _documents(path, config.text_field):
            if text.strip():
                key = os.path.relpath(key, config.root)
                yield key, text, "validation" if in_validation(key, config.validation_fraction) else "train"


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


def text_files_builder(patterns: Sequence[str], *, text_field: str, validation_fraction: float,
                       data_dir: str | None) -> ResearchTextFiles:
    """The builder for `patterns`, prepared (once) under `data_dir`; errors before any work."""
    files = expand_patterns(patterns)
    stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in files]
    if sum(size for _, size, _ in stats) == 0:
        raise DataError(f"file patterns {list(patterns)} match only empty files; nothing to train on.")
    root = os.path.commonpath([os.path.dirname(p) for p in files])
    # The absolute root too: two unpacked copies of a corpus (archive mtimes, equal sizes) in two
    # directories otherwise shared one name, and the second read the first's prepared text.
    fingerprint = json.dumps([root] + [[os.path.relpath(p, root), s, m] for p, s, m in stats]
                             + [text_field, validation_fraction])
    config = TextFilesConfig(
        name="files_" + hashlib.sha1(fingerprint.encode()).hexdigest()[:16],
        description=",".join(patterns),
        files=tuple(files), root=root, text_field=text_field, validation_fraction=validation_fraction,
    )
    def make(config: TextFilesConfig) -> ResearchTextFiles:
        return ResearchTextFiles(config=config, data_dir=data_dir or None, file_format="array_record")

    builder = make(config)
    if builder.is_prepared():
        return builder
    # Processes sharing data_dir (a job's hosts, parallel sweep workers) all find it unprepared;
    # unlocked, both prepared it and the second crashed renaming its copy onto the first's. So:
    # one prepares under the lock, the others wait, see it prepared, and read that copy.
    with _exclusive(os.path.join(os.path.dirname(os.path.dirname(builder.data_dir)), config.name + ".lock")):
        if not make(config).is_prepared():
            # One read before TFDS starts: bad JSON / a missing field / no text fail here, cleanly.
            splits = {split for _, _, split in _split_documents(config)}
            if not splits:
                raise DataError(f"file patterns {list(patterns)} hold no non-blank documents; nothing to train on.")
            make(dataclasses.replace(config, splits=tuple(sorted(splits)))).download_and_prepare()
    return make(config)  # a builder made now reads the prepared dataset's info (its splits) from disk
