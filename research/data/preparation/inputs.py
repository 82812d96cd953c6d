"""Raw inputs: globs or folders of text / markdown / code files, JSONL files (each may be
compressed: .gz, .bz2, .xz), or a TFDS dataset.

`resolve_inputs(...)` checks everything cheap before any work (patterns match, files are
readable and not all empty, each JSONL file's first record has the text field), skips
binary files (a NUL byte in the first 8 KB: archives, .pyc, images; the report counts them) and
`DocumentReader` streams documents for one datatrove task: files `rank::world_size`, or
an index range of a TFDS split. A bad record later in a file fails with file:line.
Undecodable UTF-8 is not an error: the bytes are replaced and counted, and the
standardise stage repairs or drops the document by their share of its text's bytes (a JSONL
record's text field alone, not the whole line).
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Iterator

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from research.data.config import DataError
# Compressed inputs are read as the file without the suffix: .jsonl.gz is JSONL, .txt.gz one document.
from research.data.document_files import (READ_ERRORS, cannot_read, decode_utf8, is_jsonl, looks_binary,
                                          open_input, read_head, record_text)

TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What to read: `files` (sorted absolute paths, .jsonl = one document per line) or a TFDS dataset."""

    files: tuple[str, ...] = ()
    root: str = ""  # origins are relative to it
    text_field: str = "text"
    tfds_name: str = ""
    tfds_data_dir: str = ""
    tfds_split: str = "train"
    skipped: tuple[tuple[str, str], ...] = ()  # (reason, path) of matched files not read; see SKIP_REASONS

    def fingerprint(self) -> list:
        if self.tfds_name:
            return [self.tfds_name, self.tfds_data_dir, self.tfds_split, self.text_field, _tfds_files(self)]
        # The absolute root too: two copies of a corpus in two folders (same names, sizes and mtimes,
        # as an unpacked archive gives) shared a fingerprint, and the second returned the first's dataset.
        return [self.text_field, os.path.abspath(self.root)] + [
            [os.path.relpath(p, self.root), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in self.files]

    def describe(self) -> str:
        return f"tfds:{self.tfds_name}[{self.tfds_split}]" if self.tfds_name else f"{len(self.files)} files under {self.root}"

    def excluding(self, folder: str) -> InputSpec:
        """Without the files under `folder`: an --output_dir inside the input folder holds this or an
        earlier run's dataset, which must never become its own input."""
        folder = os.path.join(os.path.realpath(folder), "")

        def under(path: str) -> bool:
            return os.path.realpath(path).startswith(folder)

        inside = sorted({p for p in self.files if under(p)} | {p for _, p in self.skipped if under(p)})
        if not inside:
            return self
        files = tuple(p for p in self.files if not under(p))
        if not files:
            raise DataError(f"every input file is under --output_dir={folder.rstrip(os.sep)}; give inputs outside "
                            "it or choose another --output_dir.")
        # Its binary shards count as under_output_dir too: the same files whether the run is the first or not.
        skipped = tuple(s for s in self.skipped if not under(s[1])) + tuple(("under_output_dir", p) for p in inside)
        return dataclasses.replace(self, files=files, root=os.path.commonpath([os.path.dirname(p) for p in files]),
                                   skipped=skipped)


def _tfds_files(spec: InputSpec) -> list:
    """The prepared TFDS dataset's files (names, sizes, mtimes) and its dataset_info.json's digest:
    re-preparing it under the same name changes them, as editing an input file changes its size/mtime."""
    import hashlib

    import tensorflow_datasets as tfds
    from etils import epath
    folder = epath.Path(tfds.builder(spec.tfds_name, data_dir=spec.tfds_data_dir or None).data_dir)
    files = []
    for path in sorted(folder.iterdir()):
        stat = path.stat()
        if not stat.is_directory:
            files.append([path.name, stat.length, stat.mtime])
    info = folder / "dataset_info.json"
    return [files, hashlib.sha256(info.read_bytes()).hexdigest() if info.exists() else None]


SKIP_REASONS = {"binary": "NUL bytes in the first 8 KB: an archive, compiled or image file",
                "under_output_dir": "inside --output_dir"}


def _matches(pattern: str) -> list[str]:
    pattern = os.path.expanduser(pattern)
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**", "*")
    return [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]


def _check_jsonl_head(path: str, text_field: str) -> None:
    try:
        with open_input(path) as f:
            for line_no, raw in enumerate(f, start=1):
                if raw.strip():
                    record_text(raw, path, line_no, text_field)
                    return
    except READ_ERRORS as e:
        raise cannot_read(path, e) from None


def resolve_inputs(input_arg: str, *, text_field: str = "text", tfds_data_dir: str = "",
                   tfds_split: str = "train", exclude: str = "") -> InputSpec:
    """The files (or TFDS dataset) `input_arg` names: comma-separated globs / folders, or 'tfds:NAME'.
    exclude: a folder (the --output_dir) whose files are left out before any is opened: whatever
    a run left there (its dataset, its report) is never input, and must not stop a rerun."""
    if not input_arg.strip():
        raise DataError("--input is empty; give files, globs or folders (comma-separated), or tfds:NAME.")
    if input_arg.startswith(TFDS_PREFIX):
        return _resolve_tfds(input_arg[len(TFDS_PREFIX):], text_field, tfds_data_dir, tfds_split)
    files: set[str] = set()
    for pattern in (p.strip() for p in input_arg.split(",") if p.strip()):
        matched = _matches(pattern)
        if not matched:
            raise DataError(f"input {pattern!r} matches no files; check the path or the glob ('**' recurses).")
        files.update(os.path.abspath(p) for p in matched)
    spec = InputSpec(files=tuple(sorted(files)), text_field=text_field)
    if exclude:
        spec = spec.excluding(exclude)
    paths, under_exclude = list(spec.files), spec.skipped
    for path in paths:
        if not os.access(path, os.R_OK):
            raise DataError(f"input file {path} is not readable (permission denied); fix its permissions or leave it out.")
    heads = {path: read_head(path) for path in paths}
    binary = [path for path in paths if looks_binary(heads[path])]
    paths = [path for path in paths if not looks_binary(heads[path])]
    if not paths:
        raise DataError(f"input {input_arg!r} matches only binary files (NUL bytes: archives, compiled or image "
                        "files); give text, markdown, code or .jsonl files.")
    if not any(heads[path] for path in paths):
        raise DataError(f"input {input_arg!r} matches only empty files; nothing to prepare.")
    for path in paths:
        if is_jsonl(path):
            _check_jsonl_head(path, text_field)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return InputSpec(files=tuple(paths), root=root, text_field=text_field,
                     skipped=tuple(("binary", p) for p in binary) + under_exclude)


def _resolve_tfds(name: str, text_field: str, data_dir: str, split: str) -> InputSpec:
    from research.data.config import DataConfig
    from research.data.sources import _tfds_source  # the same checks pretraining makes, one line each
    _tfds_source(DataConfig(source="tfds", tfds_name=name, data_dir=data_dir, text_field=text_field), split)
    return InputSpec(tfds_name=name, tfds_data_dir=data_dir, tfds_split=split, text_field=text_field)


def _document(text: str, origin: str, invalid: int, num_bytes: int) -> Document:
    return Document(text=text, id=origin, metadata={"origin": origin, "invalid_utf8_bytes": invalid,
                                                    "num_bytes": num_bytes})


def read_file(path: str, root: str, text_field: str) -> Iterator[Document]:
    """The documents of one file: each non-blank line of a .jsonl, or the whole file (decompressed
    first if it ends in .gz, .bz2 or .xz)."""
    rel = os.path.relpath(path, root)
    try:
        with open_input(path) as f:
            if not is_jsonl(path):
                raw = f.read()
                if raw.strip():
                    text, invalid = decode_utf8(raw)
                    yield _document(text, rel, invalid, len(raw))
                return
            for line_no, raw in enumerate(f, start=1):
                if raw.strip():
                    text, invalid, num_bytes = record_text(raw, path, line_no, text_field)
                    yield _document(text, f"{rel}:{line_no}", invalid, num_bytes)
    except READ_ERRORS as e:
        raise cannot_read(path, e) from None


class DocumentReader(PipelineStep):
    """datatrove step: the documents of this task's share of the inputs, in a fixed order."""

    name = "read inputs"
    type = "READER"

    def __init__(self, spec: InputSpec):
        super().__init__()
        self.spec = spec

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        spec = self.spec
        if spec.tfds_name:
            yield from self._read_tfds(rank, world_size)
            return
        for path in spec.files[rank::world_size]:
            for doc in read_file(path, spec.root, spec.text_field):
                self.stat_update("documents")
                yield doc

    def _read_tfds(self, rank: int, world_size: int) -> Iterator[Document]:
        from research.data.config import DataConfig
        from research.data.sources import _tfds_source
        spec = self.spec
        source = _tfds_source(DataConfig(source="tfds", tfds_name=spec.tfds_name, data_dir=spec.tfds_data_dir,
                                         text_field=spec.text_field), spec.tfds_split)
        start, stop = rank * len(source) // world_size, (rank + 1) * len(source) // world_size
        for index in range(start, stop):
            value = source[index][spec.text_field]  # _tfds_source refused a non-text feature
            raw = value if isinstance(value, bytes) else value.encode("utf-8", errors="surrogatepass")
            text, invalid = decode_utf8(raw)
            if text.strip():
                yield _document(text, f"{spec.tfds_name}/{spec.tfds_split}[{index}]", invalid, len(raw))
