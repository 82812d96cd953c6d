"""Reading documents from local files, shared by pretraining's `files` source (research.data.text_files)
and data preparation (research.data.preparation.inputs): a file is one document, a .jsonl file one
per non-blank line; either may be compressed (.gz, .bz2, .xz: read as the file without the suffix).

A JSONL line that is not JSON, lacks the text field, or holds a non-string there is a one-line
DataError naming file:line (the files source once trained on the text 'None' of {"text": null}
and on the gzip bytes of a .jsonl.gz). Undecodable UTF-8 is not an error: each bad sequence
becomes U+FFFD and is counted, as is each lone surrogate escape.
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


def is_jsonl(path: str) -> bool:
    stem, suffix = os.path.splitext(path)
    return (stem if suffix.lower() in DECOMPRESSORS else path).endswith(".jsonl")


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """(text, number of invalid byte sequences replaced by U+FFFD)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        repaired = raw.decode("utf-8", errors="replace")
        return repaired, len(repaired) - len(raw.decode("utf-8", errors="ignore"))


def record_text(raw: bytes, path: str, line_no: int, text_field: str) -> tuple[str, int]:
    """(text of one JSONL line's `text_field`, invalid sequences replaced)."""
    line, invalid = decode_utf8(raw)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg}); fix or remove the line.") from None
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{path}:{line_no}: no field {text_field!r} (it has {keys}); set --text_field to the key "
                        "that holds the text.")
    if not isinstance(record[text_field], str):
        raise DataError(f"{path}:{line_no}: field {text_field!r} is {type(record[text_field]).__name__}, not a string; "
                        "set --text_field to the key that holds the text.")
    text, surrogates = repair_surrogates(record[text_field])
    return text, invalid + surrogates


# A JSON escape of half a surrogate pair ("\ud83d" alone, common in web scrapes) decodes to a
# string no UTF-8 encoder accepts; like undecodable bytes, each one becomes U+FFFD and is counted.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_surrogates(text: str) -> tuple[str, int]:
    return _LONE_SURROGATE.subn("\ufffd", text)
