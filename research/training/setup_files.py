"""What a run's setup found of its record files in a workdir, and removing what it added since.

A metric writer (research/training/metrics.py) snapshots its files (metrics.jsonl, the
TensorBoard and W&B directories) as it starts; when a workdir claim is withdrawn (a stop during
setup), `remove_added` takes away what the setup added and nothing that was there before: a
resumed run's event files, a symlinked log directory's other entries, links W&B re-pointed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Mapping, NamedTuple, Sequence, Union


class Dir(NamedTuple):
    names: frozenset[str]  # its entries
    links: dict[str, str]  # name -> target of each entry that is a symbolic link


Before = Union[Dir, int, None]  # a directory; a file (or anything else) and its size in bytes; nothing there


def snapshot(path: str) -> Before:
    """What is at `path`: a directory's entries, a link to a directory's included (its entries are
    someone's, say shared log storage's: recording none of them, discard emptied the link's
    target) and the targets of the links among them, a file's size, or None when nothing is there."""
    if os.path.isdir(path):
        with os.scandir(path) as entries:
            entries = list(entries)
        return Dir(frozenset(e.name for e in entries),
                   {e.name: os.readlink(e.path) for e in entries if e.is_symlink()})
    if not os.path.lexists(path):
        return None
    return os.path.getsize(path) if os.path.isfile(path) else 0


def _repair_links(directory: str, links: Mapping[str, str], removed: Sequence[str]) -> None:
    """Links that were in `directory` and that a run re-pointed into what remove_added just
    removed (W&B's latest-run, debug.log, debug-internal.log): pointed back where they pointed
    before, or removed where that is gone too, so none is left dangling. Others are left alone."""
    for name, target in links.items():
        link = os.path.join(directory, name)
        if not os.path.islink(link) or os.path.exists(link) or os.readlink(link) == target:
            continue
        now = os.path.realpath(os.path.join(directory, os.readlink(link)))
        if not any(now == r or now.startswith(r + os.sep) for r in removed):
            continue
        if os.path.exists(os.path.join(directory, target)):
            temporary = link + ".restoring"
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            os.symlink(target, temporary)
            os.replace(temporary, link)
        else:
            os.remove(link)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_added(before: Mapping[str, Before], *, appended: str) -> None:
    """Remove from each path of `before` what was added since its snapshot: all of a path that
    was not there; of a directory (or a link to one) that was, the entries added since, then its
    links repaired; the file `appended` (metrics.jsonl, the only file appended to) cut back to its
    recorded size. Other files that were there are left whole."""
    for path, was in before.items():
        if was is None:  # the setup made it: all of it goes
            _remove(path)
        elif isinstance(was, int):
            if path == appended and os.path.isfile(path):
                os.truncate(path, min(was, os.path.getsize(path)))
        elif isinstance(was, Dir) and os.path.isdir(path):
            added = sorted(set(os.listdir(path)) - was.names)
            for name in added:
                _remove(os.path.join(path, name))
            _repair_links(path, was.links, [os.path.join(os.path.realpath(path), n) for n in added])
