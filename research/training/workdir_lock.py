"""Which process is training in a workdir right now: a POSIX record lock held for the run's life.

Two commands started on one workdir used to train side by side: their checkpoints replaced
each other's steps and metrics.jsonl held both runs' rows interleaved, each exit 0. And a run
killed (kill -9, an out-of-memory kill) before its first checkpoint left its run.json behind,
so a corrected command was refused as "another run" until the workdir was deleted by hand.
Both need to know whether the process that claimed the workdir still lives; the kernel answers
that: it drops a process's record locks when the process dies, however it dies. Where locks are
only local (NFS mounted nolock, some FUSE mounts) a run on another host holds none that this one
sees: a run there that has not saved yet can then be taken for dead and its claim replaced.

`lockf` (fcntl record locks) rather than `flock`: a child forked while the lock is held (a data
worker) does not inherit it, so it cannot outlive a killed run and refuse every rerun. Record
locks belong to the process, so a second claim of a workdir this process already holds (runs
trained one after another in one Python session, as the tests do) succeeds. File systems
without lock support are not locked: nothing is refused there (cloud URLs are refused as workdirs:
atomic_files.unwritable_reason).
"""
from __future__ import annotations

import errno
import fcntl
import os
from typing import Sequence

LOCK_FILE = ".training_lock"
# realpath of a workdir -> the open descriptor whose lock this process holds.
_held: dict[str, int] = {}


def _key(workdir: str) -> str:
    return os.path.realpath(workdir)


def holder(workdir: str) -> str:
    """What the lock file says of the process holding it ('pid N on HOST'), for error lines."""
    try:
        with open(os.path.join(workdir, LOCK_FILE), encoding="utf-8") as f:
            return f.read().strip() or "a process"
    except OSError:
        return "a process"


def holds(workdir: str) -> bool:
    """Whether this process holds `workdir`'s lock (a run of this process is training there)."""
    return _key(workdir) in _held


def hold(workdir: str) -> bool | None:
    """Take `workdir`'s lock for this process (until `release` or the process ends). True when
    this process now holds it; False when another live process does; None when no lock can be
    taken there (no lock support, a read-only mount): the caller goes on as before locks existed."""
    key = _key(workdir)
    if key in _held:
        return True
    try:
        fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        return False if error.errno in (errno.EACCES, errno.EAGAIN) else None
    _held[key] = fd  # first: release() closes it even if writing the holder's name fails (a full disk)
    try:
        os.ftruncate(fd, 0)  # say who holds it, for the line that refuses a second command
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
    except OSError:
        pass  # the lock holds without the name; the refusal then says "a process"
    return True


def held_elsewhere(workdir: str) -> bool:
    """Whether another live process holds `workdir`'s lock (this call takes no lock for long)."""
    if _key(workdir) in _held or not os.path.isfile(os.path.join(workdir, LOCK_FILE)):
        return False
    held = hold(workdir)
    if held:
        release([workdir])
    return held is False


def release(workdirs: Sequence[str], *, remove: bool = False) -> None:
    """Give up the locks this process holds on `workdirs` (those it does not hold: nothing).
    `remove`: delete the lock file too (a claim withdrawn: the workdir is left as it was found);
    unlinked while still locked, so a command that opened it meanwhile finds it held."""
    for workdir in workdirs:
        fd = _held.pop(_key(workdir), None)
        if fd is None:
            continue
        if remove:
            try:
                os.remove(os.path.join(workdir, LOCK_FILE))
            except OSError:
                pass
        os.close(fd)  # closing drops the process's record locks on the file
