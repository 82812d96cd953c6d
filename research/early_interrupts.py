"""A Ctrl-C before the train loop's preemption.Guard takes over must not be lost.

Python ignores a KeyboardInterrupt raised inside a garbage-collection callback or a __del__
(it prints "Exception ignored in ..."), and importing JAX and loading a config runs such
callbacks: a Ctrl-C in a command's first second or two was swallowed and the run trained to
the end with exit 0. This module imports nothing heavy, so a command can install its handler
before its other imports:

    if __name__ == "__main__":
        from research.early_interrupts import remember_early_interrupts
        remember_early_interrupts()     # first: only remembers a Ctrl-C (no traceback mid-import)
    ...
    def main(argv):
        ...                             # its own imports, then experiments.cli.stop_if_interrupted_early:
        watch_early_interrupts()        # now a Ctrl-C also interrupts the setup work
        if interrupted_early(): ...     # one line, exit 130

A Guard installed later sees a remembered Ctrl-C and stops before the first step.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

EARLY_SIGINT = threading.Event()
_taken = threading.Event()  # a Guard took a remembered Ctrl-C: Python may still report it swallowed


def _ignored() -> bool:
    # A job started in the background by a shell script inherits SIGINT ignored: keep it so.
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def remember_early_interrupts() -> None:
    """Until watch_early_interrupts or a Guard replaces it, a Ctrl-C is only remembered (for
    the import phase of a command, where an exception would end it with a traceback); a second
    one raises KeyboardInterrupt, so a hang there can still be broken off."""
    if threading.current_thread() is threading.main_thread() and not _ignored():
        signal.signal(signal.SIGINT, _remember_sigint)


def watch_early_interrupts(*, quiet_when_swallowed: bool = True) -> None:
    """From now until a Guard takes over, Ctrl-C raises KeyboardInterrupt as Python's own handler
    does, and is remembered: the next Guard then stops before the first step. For command-line
    entry points (a notebook keeps Python's handler). quiet_when_swallowed: no "Exception
    ignored" traceback when Python swallows that KeyboardInterrupt (a Guard will stop the run
    with one line); False for commands without a Guard, where that traceback is all the user sees."""
    if threading.current_thread() is not threading.main_thread() or _ignored():
        return
    signal.signal(signal.SIGINT, _early_sigint)
    if quiet_when_swallowed and sys.unraisablehook is not _quiet_swallowed_interrupt:
        global _default_unraisablehook
        _default_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _quiet_swallowed_interrupt


def interrupted_early() -> bool:
    """Whether a Ctrl-C came since remember_early_interrupts / watch_early_interrupts (and no
    Guard has taken it yet)."""
    return EARLY_SIGINT.is_set()


def take_early_interrupt() -> bool:
    """For a Guard: whether a Ctrl-C came before it, which it now owns (cleared here, so a later
    Guard in the same process, a notebook's next run, does not stop for it again)."""
    if not EARLY_SIGINT.is_set():
        return False
    EARLY_SIGINT.clear()
    _taken.set()
    return True


def _remember_sigint(signum: int, frame: FrameType | None) -> None:
    if EARLY_SIGINT.is_set():  # the second: break off whatever is taking so long
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    EARLY_SIGINT.set()


def _early_sigint(signum: int, frame: FrameType | None) -> None:
    EARLY_SIGINT.set()
    raise KeyboardInterrupt


_default_unraisablehook = sys.unraisablehook


def _quiet_swallowed_interrupt(unraisable: Any) -> None:
    """The swallowed Ctrl-C is handled (the Guard stops the run with one line): no traceback for it."""
    if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and (EARLY_SIGINT.is_set() or _taken.is_set())):
        _default_unraisablehook(unraisable)
