"""Reading documents from local files, shared by pretraining's `files` source (research.data.text_files)
and data preparation (research.data.preparation.inputs): a file is one document, a .jsonl file one
per non-blank line; either may be compressed (.gz, .bz2, .xz: read as the file without the suffix).
The files source also reads a .json file as JSON Lines when its first line is a JSON object holding
the text field (what datasets' Dataset.to_json and pandas' to_json(lines=True) write: `reads_as_jsonl`);
and it skips, as data preparation does, a file with a NUL byte in its first 8 KB (an archive, parquet,
compiled or image file: `read_head`, `looks_binary`).

A JSONL line that is not JSON, lacks the text field, or holds a non-string there is a one-line
DataError naming file:line (the files source once trained on the text 'None' of {"text": null}
and on the gzip bytes of a .jsonl.gz). Undecodable UTF-8 is not an error: each bad sequence
becomes U+FFFD and is counted, as is each lone surrogate escape; in a JSONL line, only those
inside the text field count (bad bytes in a url field made clean documents 'invalid').
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import zlib
from typing import BinaryIO

from research.data.config import DataError

DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What reading a missing, unreadable, corrupt or truncated (compressed) file raises.
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def open_input(path: str) -> BinaryIO:
    return DECOMPRESSORS.get(os.path.splitext(path)[1].lower(), open)(path, "rb")


def cannot_read(path: str, error: Exception) -> DataError:
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return DataError(f"input file {path} cannot be read ({reason}); fix it or leave it out.")


# JSON Lines by any of its spellings: '.JSONL' and '.ndjson' files were read as one plain-text
# document of raw JSON each (syntax, keys and every field trained on; --text_field ignored).
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def _content_name(path: str) -> str:
    """`path` lowercased, without a compression suffix: the name of what reading it gives."""
    stem, suffix = os.path.splitext(path)
    return (stem if suffix.lower() in DECOMPRESSORS else path).lower()


def is_jsonl(path: str) -> bool:
    return _content_name(path).endswith(JSONL_SUFFIXES)


def reads_as_jsonl(path: str, text_field: str) -> bool:
    """Whether `path` holds JSON Lines: a .jsonl / .ndjson file, or a .json file whose first non-blank line
    is a JSON object holding `text_field` (what datasets' to_json writes: read whole, it trained on JSON
    syntax and text_field was ignored). Any other .json (a package.json, an indented or one-line config,
    an array) stays one plain document, as data preparation reads it."""
    if is_jsonl(path):
        return True
    if not _content_name(path).endswith(".json"):
        return False
    if read_head(path).lstrip()[:1] != b"{":  # an array or indented text: known without reading a line of it
        return False
    try:
        with open_input(path) as f:
            first = next((raw for raw in f if raw.strip()), b"")
    except READ_ERRORS as e:
        raise cannot_read(path, e) from None
    try:
        record = json.loads(first.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:  # an object spread over lines
        return False
    return isinstance(record, dict) and text_field in record


# Data preparation's rule for binary inputs (research/data/preparation/inputs.py): text holds no NUL
# byte, while archives, .pyc, images and parquet ('PAR1\x15\x00...') hold one this early.
BINARY_PROBE_BYTES = 8192


def read_head(path: str) -> bytes:
    """The first BINARY_PROBE_BYTES of the file's (decompressed) content."""
    try:
        with open_input(path) as f:
            return f.read(BINARY_PROBE_BYTES)
    except READ_ERRORS as e:
        raise cannot_read(path, e) from None


def looks_binary(head: bytes) -> bool:
    return b"\0" in head


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """(text, number of invalid byte sequences replaced by U+FFFD)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        repaired = raw.decode("utf-8", errors="replace")
        return repaired, len(repaired) - len(raw.decode("utf-8", errors="ignore"))


def record_text(raw: bytes, path: str, line_no: int, text_field: str) -> tuple[str, int, int]:
    """(text of one JSONL line's `text_field`, invalid sequences replaced in it, its size in bytes).

    The count and size are the field's, not the line's: bad bytes in another field (a url) made a
    clean text 'invalid', and a large clean field beside it (html) hid a text 6% bad bytes."""
    # Undecodable bytes stay apart from the text as lone surrogates (U+DC80..U+DCFF) until the
    # field is picked; a JSON escape cannot hide them (a raw byte never joins a \uXXXX escape).
    line = raw.decode("utf-8", errors="surrogateescape")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg}); fix or remove the line.") from None
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{path}:{line_no}: no field {text_field!r} (it has {keys}); set --text_field to the key "
                        "that holds the text.")
    value = record[text_field]
    if not isinstance(value, str):
        raise DataError(f"{path}:{line_no}: field {text_field!r} is {type(value).__name__}, not a string; "
                        "set --text_field to the key that holds the text.")
    if not _LONE_SURROGATE.search(value):
        return value, 0, len(value.encode("utf-8"))
    escaped = len(_ESCAPED_BYTE.findall(value))
    # Each escaped byte was one byte of the file; a lone surrogate escape counts as the 3 bytes it names.
    size = len(value.encode("utf-8", errors="surrogatepass")) - 2 * escaped
    # A run of escaped bytes decodes as the whole line did before: one U+FFFD per bad sequence.
    text = _ESCAPED_BYTES.sub(lambda run: decode_utf8(run.group().encode("utf-8", errors="surrogateescape"))[0], value)
    invalid = text.count("\ufffd") - value.count("\ufffd")
    text, surrogates = repair_surrogates(text)
    return text, invalid + surrogates, size


# A JSON escape of half a surrogate pair ("\ud83d" alone, common in web scrapes) decodes to a
# string no UTF-8 encoder accepts; like undecodable bytes, each one becomes U+FFFD and is counted.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# What decoding with errors='surrogateescape' makes of each undecodable byte.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")


def repair_surrogates(text: str) -> tuple[str, int]:
    return _LONE_SURROGATE.subn("\ufffd", text)
