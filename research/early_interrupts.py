"""A Ctrl-C or SIGTERM before the train loop's preemption.Guard takes over must not be lost.

Python ignores a KeyboardInterrupt raised inside a garbage-collection callback or a __del__
(it prints "Exception ignored in ..."), and importing JAX and loading a config runs such
callbacks: a Ctrl-C in a command's first second or two was swallowed and the run trained to
the end with exit 0. This module imports nothing heavy, so a command can install its handler
before its other imports:

    if __name__ == "__main__":
        from research.early_interrupts import remember_early_interrupts
        remember_early_interrupts()     # first: only remembers a Ctrl-C / SIGTERM (no traceback mid-import)
    ...
    def main(argv):
        ...                             # its own imports, then experiments.cli.stop_if_interrupted_early:
        watch_early_interrupts()        # now a Ctrl-C / SIGTERM also interrupts the setup work
        if interrupted_early(): ...     # one line, exit 130 / 143

A Guard installed later sees a remembered Ctrl-C and stops before the first step.

SIGTERM (a scheduler's stop) is handled the same way: remembered during the imports, then raised
as TerminatedEarly (a KeyboardInterrupt, so whatever withdraws a claim or stops a command on a
Ctrl-C does so for it too) and stopped on with exit 143. Without this its default action killed
the process mid-setup, leaving run.json in a workdir where nothing was saved, and a changed
rerun was refused as "another run". Only a default SIGTERM action is replaced: an inherited
SIG_IGN is kept, and so is JAX's preemption notifier once the process joined jax.distributed.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

EARLY_SIGINT = threading.Event()
EARLY_SIGTERM = threading.Event()
_taken = threading.Event()  # a Guard took a remembered Ctrl-C: Python may still report it swallowed


class TerminatedEarly(KeyboardInterrupt):
    """A SIGTERM before a Guard took over. A KeyboardInterrupt so that every handler of an unsaved
    Ctrl-C (the train loop withdrawing its claim, a command's one-line stop) handles it too;
    `signal_name` tells the command which signal to name and exit with."""

    signal_name = "SIGTERM"


def stop_signal_name(error: BaseException | None) -> str:
    """"SIGTERM" for a TerminatedEarly, else "SIGINT" (a KeyboardInterrupt is a Ctrl-C)."""
    return getattr(error, "signal_name", "SIGINT")


def signal_exit_code(signal_name: str) -> int:
    """128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell's convention for a
    process a signal stopped. Here, free of JAX, for a stop before a command's imports ended."""
    return 128 + int(getattr(signal, signal_name, signal.SIGTERM))


def _ignored() -> bool:
    # A job started in the background by a shell script inherits SIGINT ignored: keep it so.
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def _sigterm_is_ours_to_take() -> bool:
    """Whether SIGTERM still has its default action (or our handler). An inherited SIG_IGN is kept.
    So is SIGTERM in a process that joined jax.distributed (launch.multihost): JAX's preemption
    notifier installed its handler there in C, which signal.getsignal does not see (it still says
    SIG_DFL), and a multi-process run's coordinated stop relies on it (the Guard leaves it too)."""
    jax = sys.modules.get("jax")  # never imported here: this module stays free of JAX
    distributed = getattr(jax, "distributed", None)
    if distributed is not None and getattr(distributed, "is_initialized", lambda: False)():
        return False
    return signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _remember_sigterm, _early_sigterm)


def remember_early_interrupts() -> None:
    """Until watch_early_interrupts or a Guard replaces it, a Ctrl-C or SIGTERM is only remembered
    (for the import phase of a command, where an exception would end it with a traceback); a
    second Ctrl-C raises KeyboardInterrupt and a second SIGTERM takes its default action, so a
    hang there can still be broken off."""
    if threading.current_thread() is not threading.main_thread():
        return
    if not _ignored():
        signal.signal(signal.SIGINT, _remember_sigint)
    if _sigterm_is_ours_to_take():
        signal.signal(signal.SIGTERM, _remember_sigterm)


def watch_early_interrupts(*, quiet_when_swallowed: bool = True) -> None:
    """From now until a Guard takes over, Ctrl-C raises KeyboardInterrupt as Python's own handler
    does (SIGTERM: TerminatedEarly), and is remembered: the next Guard then stops before the
    first step. For command-line entry points (a notebook keeps Python's handler).
    quiet_when_swallowed: no "Exception ignored" traceback when Python swallows that
    KeyboardInterrupt (a Guard will stop the run with one line); False for commands without a
    Guard, where that traceback is all the user sees, and where a swallowed SIGTERM takes
    SIGTERM's default action (no Guard would stop for it later)."""
    global _default_unraisablehook, _guarded
    if threading.current_thread() is not threading.main_thread():
        return
    if _sigterm_is_ours_to_take():
        signal.signal(signal.SIGTERM, _early_sigterm)
    if not _ignored():
        signal.signal(signal.SIGINT, _early_sigint)
    _guarded = quiet_when_swallowed
    if sys.unraisablehook is not _quiet_swallowed_interrupt:
        _default_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _quiet_swallowed_interrupt


def interrupted_early() -> str | None:
    """The signal ("SIGINT" / "SIGTERM", SIGTERM first when both came) that came since
    remember_early_interrupts / watch_early_interrupts and no Guard has taken yet; None if none."""
    return "SIGTERM" if EARLY_SIGTERM.is_set() else "SIGINT" if EARLY_SIGINT.is_set() else None


def take_early_interrupt() -> str | None:
    """For a Guard: the signal that came before it (as interrupted_early), which it now owns
    (cleared here, so a later Guard in the same process, a notebook's next run, does not stop
    for it again); None if none came."""
    name = interrupted_early()
    if name is not None:
        EARLY_SIGINT.clear()
        EARLY_SIGTERM.clear()
        _taken.set()
    return name


def _remember_sigint(signum: int, frame: FrameType | None) -> None:
    if EARLY_SIGINT.is_set():  # the second: break off whatever is taking so long
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    EARLY_SIGINT.set()


def _early_sigint(signum: int, frame: FrameType | None) -> None:
    EARLY_SIGINT.set()
    raise KeyboardInterrupt


def _remember_sigterm(signum: int, frame: FrameType | None) -> None:
    if EARLY_SIGTERM.is_set():  # the second: the default action, as before, for a hang in the imports
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    EARLY_SIGTERM.set()


def _early_sigterm(signum: int, frame: FrameType | None) -> None:
    EARLY_SIGTERM.set()
    raise TerminatedEarly


_default_unraisablehook = sys.unraisablehook
_guarded = True  # the command trains under a Guard, which stops for a swallowed Ctrl-C / SIGTERM


def _quiet_swallowed_interrupt(unraisable: Any) -> None:
    """A swallowed Ctrl-C / SIGTERM under a Guard is handled (the Guard stops the run with one
    line): no traceback for it. Without a Guard, Python's report of it is kept, and a swallowed
    SIGTERM takes its default action: nothing would stop the command for it later."""
    error = unraisable.exc_value
    if isinstance(error, TerminatedEarly) and not _guarded:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    handled = EARLY_SIGINT.is_set() or EARLY_SIGTERM.is_set() or _taken.is_set()
    if not (_guarded and isinstance(error, KeyboardInterrupt) and handled):
        _default_unraisablehook(unraisable)
