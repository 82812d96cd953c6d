"""Ctrl-C and SIGTERM as a request to stop: the loop finishes the block of steps it is running
(train.steps_per_call), saves a checkpoint at the step that block ends on and leaves cleanly,
so rerunning the same command continues bit-exactly.

SIGTERM is how SLURM, Kubernetes and TPU maintenance stop a job (with a grace period);
SIGINT is Ctrl-C. While a `Guard` is active, the first of either only sets `requested`;
the loop checks it after each block of steps. A second Ctrl-C raises KeyboardInterrupt at once, for
a user who does not want to wait for the save.

With several processes the signal may reach them at different steps; they must agree on
where to stop, so `should_stop(step)` also asks the JAX coordination service (which
receives SIGTERM itself) through `reached_preemption_sync_point`, for every step since it
last asked (see should_stop); only SIGINT gets a Python handler then, and a Ctrl-C is passed
on to that service as a SIGTERM of this process, so every process stops at the same block end.

    with preemption.Guard() as guard:       # or guard = Guard().install() ... guard.uninstall()
        for block in ...:                   # step: the last step of the block
            ...
            if guard.should_stop(step):
                save(step); raise preemption.Interrupted(guard.signal_name, step, directory)
"""
from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
from types import FrameType
from typing import Any, Iterator

import jax

from research.compile_interrupts import note_stop
# A Ctrl-C / SIGTERM of a command's setup, before a Guard (kept free of JAX so a command installs it first).
# signal_exit_code lives there too (the exit code of a stop before the imports end), and is used from here.
from research.early_interrupts import signal_exit_code, take_early_interrupt

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped early on a signal, after saving a checkpoint at `step` (or, when the signal
    came before the first step, with nothing new to save)."""

    def __init__(self, signal_name: str, step: int, checkpoint_directory: str = "", *, saved: bool = True,
                 advice: str = "rerun the same command to continue"):
        # `advice`: what to do next, when rerunning the same command would not continue (a
        # model of several trained together that diverged before the stop and saved nothing).
        self.signal_name, self.step = signal_name, step
        if saved:
            text = f"stopped by {signal_name} at step {step}; checkpoint saved in {checkpoint_directory}"
        else:
            text = f"stopped by {signal_name} before training step {step + 1}; nothing new to save"
        super().__init__(f"{text}; {advice}.")

    @property
    def exit_code(self) -> int:
        return signal_exit_code(self.signal_name)


class StoppedBetweenRuns(Interrupted):
    """A caller that trains several runs in turn (a scaling sweep) stopped on a signal that came
    while one of them trained: that run ended (or saved) and no later run starts."""

    def __init__(self, signal_name: str, after: str):
        self.signal_name, self.step = signal_name, 0
        Exception.__init__(self, f"stopped by {signal_name} after {after}; rerun the same command to continue.")


# Every signal a Guard of this process took as a stop request, in order. Why: a signal that comes
# during a run's last block of steps ends that run normally (nothing raises), and the next run's
# Guard never sees it, so a caller training runs in turn checks this list between runs.
_REQUESTS: list[str] = []
# The last number this process reported to JAX's preemption sync point. Several processes train runs
# in turn (a sweep); each run's Guard reports after the one before it, not from 1 again: a notice in one
# run's last block set the point past that run's end, and the next runs, counting from 1, never met it.
_SYNC_REPORTED = [0]


def stop_requests() -> int:
    """How many stop requests Guards have taken so far; compare with a later count, and read the
    signal with `last_stop_request()`."""
    return len(_REQUESTS)


def last_stop_request() -> str | None:
    return _REQUESTS[-1] if _REQUESTS else None


class Guard:
    """A context in which SIGINT / SIGTERM request a clean stop instead of killing the process.

    Outside the main thread (where Python cannot install handlers) it installs nothing and
    only the multi-process check applies.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._stop_now = False  # a second Ctrl-C came: should_stop raises it again if it was swallowed
        self._reported = 0  # the last step reported to JAX's preemption sync point (several processes)
        self._sync_offset: int | None = None  # what earlier Guards reported (_SYNC_REPORTED) when this one began

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            note_stop(signum, frame)  # raised inside an XLA compile, the exit must skip the teardown
            # Raised where Python ignores exceptions (a garbage-collection callback of jax's, a
            # __del__) it is printed as "Exception ignored" and lost: should_stop raises it again.
            self._stop_now = True
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without the save
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            _REQUESTS.append(self.signal_name)
            # Several processes stop only where all agree (should_stop): a Ctrl-C that cannot reach the
            # preemption service would be announced and never honoured.
            if signum == signal.SIGINT and jax.process_count() > 1 and not _notify_preemption_service():
                print("SIGINT: this multi-process run cannot stop cleanly (JAX's preemption service is off or does "
                      "not hold SIGTERM); Ctrl-C again to stop at once.", file=sys.stderr)
                return
            print(f"{self.signal_name}: saving a checkpoint after the current block of steps, then stopping"
                  + (" (Ctrl-C again to stop at once)." if signum == signal.SIGINT else "."), file=sys.stderr)

    def install(self) -> "Guard":
        """Take over SIGINT / SIGTERM until `uninstall` (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            # With several processes, SIGTERM belongs to JAX's preemption notifier (see should_stop).
            for signum in _python_signals():
                self._previous[signum] = signal.signal(signum, self._handle)
            early = take_early_interrupt() if self.signal_name is None else None
            if early is not None:  # a Ctrl-C / SIGTERM during setup (watch_early_interrupts)
                self.signal_name = early
                _REQUESTS.append(self.signal_name)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "Guard":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def should_stop(self, step: int) -> bool:
        """True when this process got a signal or (multi-process) the job is being preempted;
        raises KeyboardInterrupt after a second Ctrl-C whose own was swallowed (see _handle).
        Every process must call this at the same steps (the loop: every block's last step, in
        increasing order), so they stop at the same one."""
        if self._stop_now:  # the second Ctrl-C's KeyboardInterrupt was swallowed where it was raised
            raise KeyboardInterrupt
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            # On a notice the service sets the sync point to (the highest step any process last reported) + 1
            # and answers True only to a call with exactly that step; asked at block ends only, a block of
            # several steps stepped over it and the stop never came. So every step since the last call is
            # reported, in order, from step 1 on (a notice before the first call sets it to 1: a resumed run
            # meets it now). The service holds each process's reports still while it sets the point, so
            # that point is past every step reported, and each process meets it in the block that covers
            # it: the same block end on all, their blocks being the same.
            # Reported as numbers after those of the runs before (_SYNC_REPORTED), the same on every process.
            if self._sync_offset is None:
                self._sync_offset = _SYNC_REPORTED[0]
            reached = False
            try:
                while self._reported < step and not reached:
                    self._reported += 1
                    reached = multihost_utils.reached_preemption_sync_point(self._sync_offset + self._reported)
            except RuntimeError:  # jax_enable_preemption_service is off: no coordinated stop
                return False
            self._reported = max(self._reported, step)
            _SYNC_REPORTED[0] = self._sync_offset + self._reported
            if reached and self.signal_name is None:
                self.signal_name = "SIGTERM"
                _REQUESTS.append(self.signal_name)
            return reached  # a local-only signal would desynchronise the processes; the service decides
        return self.requested


def _python_signals() -> tuple[int, ...]:
    """The signals this process's Python handlers may take: with several processes SIGTERM belongs
    to JAX's preemption notifier, a C handler that signal.signal would replace, and restore as the
    default action (signal.getsignal sees SIG_DFL there): a later SIGTERM killed the process."""
    return _SIGNALS if jax.process_count() == 1 else (signal.SIGINT,)


def _notify_preemption_service() -> bool:
    """Pass a Ctrl-C on to JAX's preemption service as this process's SIGTERM (its notifier's signal,
    caught in C), which then sets one sync point for every process; False where nothing would catch
    it: the service is off, or SIGTERM has a Python handler or none (the default action would kill)."""
    if not (jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service):
        return False
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None) or not _handled_in_c(signal.SIGTERM):
        return False
    signal.raise_signal(signal.SIGTERM)
    return True


def _handled_in_c(signum: int) -> bool:
    """Whether the process's handler of `signum` is a function rather than the default action or
    ignore: signal.getsignal reports only what Python installed (SIG_DFL for JAX's notifier)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        action = ctypes.create_string_buffer(256)  # struct sigaction: the handler first (Linux, macOS)
        if libc.sigaction(signum, None, action) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return (ctypes.c_void_p.from_buffer(action).value or 0) not in (0, 1)  # SIG_DFL, SIG_IGN


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Ctrl-C / SIGTERM wait until the block ends, then act as they would have (their handlers run
    then, in order). For work that must not be broken off half way, e.g. a checkpointer's close
    waiting for its last save to commit: a signal raised inside orbax's wait left tracebacks from
    its finalize thread and the save's tmp folder, and lost the step (the fine-tuning loop, which
    has no Guard). Outside the main thread nothing can be held: the block just runs. With several
    processes only Ctrl-C is held: SIGTERM stays with JAX's preemption notifier (see _python_signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum))
                for signum in _python_signals()}  # several processes: JAX's notifier only records a SIGTERM
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):  # each once: a second SIGTERM from the process group adds nothing
            signal.raise_signal(signum)

