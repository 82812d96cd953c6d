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
        raise_if_interrupted_early()    # one that came during the imports; caught: one line, exit 130 / 143

A Guard installed later sees a remembered Ctrl-C and stops before the first step.

SIGTERM (a scheduler's stop) is handled the same way: remembered during the imports, then raised
as TerminatedEarly (a KeyboardInterrupt, so whatever withdraws a claim or stops a command on a
Ctrl-C does so for it too) and stopped on with exit 143. Without this its default action killed
the process mid-setup, leaving run.json in a workdir where nothing was saved, and a changed
rerun was refused as "another run". Only a default SIGTERM action is replaced: an inherited
SIG_IGN is kept, and so is JAX's preemption notifier once the process joined jax.distributed.
One TerminatedEarly is raised at a time: a second SIGTERM while the first is handled (SLURM
signals the whole process group, a --workers parent its workers) adds nothing.

A Ctrl-C / SIGTERM raised where Python drops it (a finalizer, a gc callback) is delivered again
at the next ordinary statement, where it stops the command as any other (see
_quiet_swallowed_interrupt): only hidden, it was left to a later Guard, and where none followed
(a --workers parent, work after the last run, a dry run) the command went on to exit 0.
"""
from __future__ import annotations

import _thread
import signal
import sys
import threading
from types import FrameType
from typing import Any

from research.compile_interrupts import note_stop

EARLY_SIGINT = threading.Event()
EARLY_SIGTERM = threading.Event()
_taken = threading.Event()  # a Guard took a remembered Ctrl-C: Python may still report it swallowed
_terminating = False  # a TerminatedEarly is on its way up (raised, not dropped): a later SIGTERM adds nothing


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
    A Ctrl-C / SIGTERM these handlers raise where Python swallows it is delivered again, with no
    "Exception ignored" traceback (_quiet_swallowed_interrupt). quiet_when_swallowed: neither
    for another KeyboardInterrupt Python swallows once a Ctrl-C / SIGTERM came (a Guard stops
    the run for it with one line); False for commands without a Guard, where that traceback is
    all the user sees."""
    global _default_unraisablehook, _guarded, _terminating
    if threading.current_thread() is not threading.main_thread():
        return
    _terminating = False
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
    global _terminating
    name = interrupted_early()
    if name is not None:
        EARLY_SIGINT.clear()
        EARLY_SIGTERM.clear()
        _taken.set()
        _terminating = False  # the Guard stops for it; after the Guard a new SIGTERM raises again
    return name


def raise_if_interrupted_early() -> None:
    """For a command's main once it watches (watch_early_interrupts): the Ctrl-C / SIGTERM
    remembered during its imports, raised as KeyboardInterrupt / TerminatedEarly (SIGTERM first
    when both came) to stop it like one arriving now; nothing when none came."""
    global _terminating
    remembered = interrupted_early()
    if remembered == "SIGTERM":
        _terminating = True  # a second SIGTERM while the command stops for this one adds nothing
        raise TerminatedEarly
    if remembered == "SIGINT":
        raise KeyboardInterrupt


def _remember_sigint(signum: int, frame: FrameType | None) -> None:
    if EARLY_SIGINT.is_set():  # the second: break off whatever is taking so long
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    EARLY_SIGINT.set()


def _early_sigint(signum: int, frame: FrameType | None) -> None:
    EARLY_SIGINT.set()
    if _in_the_hook(frame):  # raised here, it would be lost: the hook's own errors are only printed
        _deliver_again(signum)
        return
    note_stop(signum, frame)  # raised inside an XLA compile, the exit must skip the teardown
    raise KeyboardInterrupt


def _remember_sigterm(signum: int, frame: FrameType | None) -> None:
    if EARLY_SIGTERM.is_set():  # the second: the default action, as before, for a hang in the imports
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    EARLY_SIGTERM.set()


def _early_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as TerminatedEarly, once: a second SIGTERM while the first's TerminatedEarly is on
    its way up returns here, so it cannot break off what handles the first (the train loop
    withdrawing its workdir claim, a main printing its line), which left run.json where nothing
    was saved, or a traceback and exit 1. SLURM signals the whole process group, and a --workers
    parent forwards the signal to its workers, so two SIGTERMs a moment apart are ordinary."""
    global _terminating
    EARLY_SIGTERM.set()
    if _terminating:
        return
    if _in_the_hook(frame):  # raised here, it would be lost: the hook's own errors are only printed
        _deliver_again(signum)
        return
    _terminating = True
    note_stop(signum, frame)  # as _early_sigint
    raise TerminatedEarly


_default_unraisablehook = sys.unraisablehook
_guarded = True  # watch_early_interrupts' quiet_when_swallowed: the command trains under a Guard


def _quiet_swallowed_interrupt(unraisable: Any) -> None:
    """sys.unraisablehook while watch_early_interrupts' handlers are in place. A Ctrl-C / SIGTERM
    those handlers raised inside a finalizer or gc callback, which Python swallows, is delivered
    again (no traceback for it): hiding it and leaving it to a later Guard let a command with no
    Guard to come (a --workers parent, the work after a run, a dry run) go on to exit 0. Another
    swallowed KeyboardInterrupt once a Ctrl-C / SIGTERM came is not reported under a Guard (it
    stops the run with one line); every other error is, by Python's own hook."""
    global _terminating
    error = unraisable.exc_value
    if isinstance(error, TerminatedEarly):  # only _early_sigterm raises it (and a main, never in a finalizer)
        _terminating = False  # dropped: the next one must raise
        _deliver_again(signal.SIGTERM)
        return
    ours = EARLY_SIGINT.is_set() and signal.getsignal(signal.SIGINT) is _early_sigint
    if type(error) is KeyboardInterrupt and ours:  # raised by _early_sigint (a Guard's is its own)
        _deliver_again(signal.SIGINT)
        return
    handled = EARLY_SIGINT.is_set() or EARLY_SIGTERM.is_set() or _taken.is_set()
    if not (_guarded and isinstance(error, KeyboardInterrupt) and handled):
        _default_unraisablehook(unraisable)


def _in_the_hook(frame: FrameType | None) -> bool:
    """Whether a signal handler runs inside _quiet_swallowed_interrupt (or what it calls)."""
    while frame is not None:
        if frame.f_code is _quiet_swallowed_interrupt.__code__:
            return True
        frame = frame.f_back
    return False


def _deliver_again(signum: int) -> None:
    """Have `signum`'s handler run again at the main thread's next ordinary bytecode, once the
    hook (and the finalizer it reports on) returned: raised in either, Python would drop it
    again. The handler current then takes it: ours raises where the command stops for it (its
    one line, its exit code); one that lands in a finalizer again comes back here.

    Python runs a pending signal's handler at its next check, and a call to a C function is
    followed by one: _thread.interrupt_main(signum) called plainly ran the handler right here,
    inside the hook, where what it raises is printed as "Exception ignored in sys.unraisablehook"
    and lost. Called through map and unpacked, nothing checks before this function and the hook
    return (so on CPython 3.11 to 3.13; tests/training/test_preemption.py checks the one in use)."""
    _, = map(_thread.interrupt_main, (signum,))
