"""Whole-file writes that a reader, a concurrent writer or a kill -9 never sees half of, and the
check that a destination folder can be written before any work."""
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


def unwritable_reason(directory: str) -> str | None:
    """Why `directory` cannot be used or created as a writable folder, naming the nearest part
    of its path that exists ("/a/b is a file, not a directory", "/a is not writable"); None when
    it can. Creates nothing, so callers run it before any long work. A URL (gs://...) is refused:
    what is written there goes through os and open (metrics.jsonl appends, checkpoint metadata,
    plots, tables), which took 'gs://b/x' for a local folder ./gs:/b/x that never reached the bucket."""
    if "://" in directory:
        return (f"{directory} is a URL, and runs, studies and their outputs are written with local file APIs; "
                "mount the bucket (e.g. gcsfuse at /gcs/BUCKET) or use a shared file system, and give that path")
    existing = os.path.abspath(directory)
    while not os.path.lexists(existing):  # lexists: a broken link is not a missing folder to create
        existing = os.path.dirname(existing)
    if os.path.islink(existing) and not os.path.exists(existing):
        return f"{existing} is a link to {os.readlink(existing)!r}, which does not exist"
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
