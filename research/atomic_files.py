"""Whole-file writes that a reader, a concurrent writer or a kill -9 never sees half of."""
from __future__ import annotations

import os


def write_text_atomically(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path` (one per process, so concurrent writers do
    not share it), then rename it over `path`: the file holds the old text or the new, never a part."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)
