"""Whole-file writes that a reader, a concurrent writer or a kill -9 never sees half of."""
from __future__ import annotations

import os
import uuid


def _temporary(path: str) -> str:
    # One per writer, also across hosts sharing a file system (containers often share pids).
    return f"{path}.tmp{os.getpid()}.{uuid.uuid4().hex[:12]}"


def write_text_atomically(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path` (one per writer, so concurrent writers do
    not share it), then rename it over `path`: the file holds the old text or the new, never a part."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str, data: bytes) -> None:
    """write_text_atomically for bytes."""
    temporary = _temporary(path)
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)
