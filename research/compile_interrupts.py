"""A Ctrl-C / SIGTERM that arrives while XLA compiles is raised after the compile returns.

jaxlib checks for signals while the main thread waits for a compile, so a handler that raises
there (Python's own for Ctrl-C, research.early_interrupts' during a command's setup, a Guard's
second Ctrl-C) abandons the compile, which goes on in XLA's thread pool. When the command then
stops and the interpreter exits, that thread touches the torn-down client and the process dies of
SIGSEGV after the stop's one line: exit -11 in place of 130 / 143, and a "Fatal Python error"
beside a stop that had gone right. Measured 2026-12-05 (jax 0.10.2, CPU): 6 of 8 Ctrl-Cs 3.7 to
6.3 s into `python -m experiments.finetune ...:sft_tiny`; a bare `jax.jit(f).lower(x).compile()`
interrupted mid-compile crashes the same way at exit. A computation interrupted while it runs
does not (the runtime waits for it), so only compiles are deferred.

    def handler(signum, frame):
        if defer_while_compiling(signum, frame):
            return                  # runs again shortly; raises once the compile has returned
        raise KeyboardInterrupt

Imports nothing heavy: research.early_interrupts uses it before JAX is imported.
"""
from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from types import FrameType

# The module whose functions wait for XLA's compiler (backend_compile_and_load and its kin): the
# signal handler's frame is the Python frame that called into the compiler.
_COMPILER_FILE = os.path.join("jax", "_src", "compiler.py")
RECHECK_SECONDS = 0.02  # short: the stop is only as late as the compile plus this
_pending: set[int] = set()  # signals whose handler is due to run again (one timer each)
_deferred: set[int] = set()  # signals a compile deferred that have not been raised yet
_lock = threading.RLock()  # reentrant: a second signal can run its handler inside the first one


def _jax_directory() -> str | None:
    """The jax package's directory once jax is imported (this module never imports it)."""
    jax = sys.modules.get("jax")
    path = getattr(jax, "__file__", None)
    return os.path.dirname(path) + os.sep if path else None


def _in_jax(frame: FrameType | None) -> bool:
    directory = _jax_directory()
    return frame is not None and directory is not None and frame.f_code.co_filename.startswith(directory)


def compiling(frame: FrameType | None) -> bool:
    """Whether a signal handler given `frame` runs while the main thread waits for XLA to compile:
    a frame of jax/_src/compiler.py, innermost or under jax's own frames only."""
    while frame is not None:
        if frame.f_code.co_filename.endswith(_COMPILER_FILE):
            return True
        if not _in_jax(frame):  # our code or the user's: not inside a compile
            return False
        frame = frame.f_back
    return False


def _run_handler_again(signum: int) -> None:
    with _lock:
        _pending.discard(signum)
    _thread.interrupt_main(signum)  # the handler then current runs, at the main thread's next check


def defer_while_compiling(signum: int, frame: FrameType | None) -> bool:
    """For a handler about to raise: False outside a compile (raise now). Inside one, arranges for
    `signum`'s handler to run again in RECHECK_SECONDS and returns True: the handler returns
    without raising or recording anything, so the signal is taken, once, by whichever handler is
    current when it runs again (a Guard installed meanwhile gets a stop request, not a second
    Ctrl-C). A second signal while one is pending adds nothing.

    A deferred signal keeps being deferred until the main thread runs code outside jax: right
    after a compile jax reads the executable's layouts and memory kinds under bare `except:`
    clauses (jax/_src/interpreters/pxla.py), where a KeyboardInterrupt raised would be swallowed
    and the stop lost (2 of 24 stops of finetune sft_tiny ran to the end, exit 0, before this)."""
    with _lock:
        if signum in _pending:
            return True
        if not (compiling(frame) or (signum in _deferred and _in_jax(frame))):
            _deferred.discard(signum)
            return False
        _deferred.add(signum)
        _pending.add(signum)
    timer = threading.Timer(RECHECK_SECONDS, _run_handler_again, (signum,))
    timer.daemon = True
    timer.start()
    return True


def _keyboard_interrupt_after_compiles(signum: int, frame: FrameType | None) -> None:
    if defer_while_compiling(signum, frame):
        return
    raise KeyboardInterrupt


def ctrl_c_after_compiles() -> None:
    """For a command with no stop handling of its own (experiments.evaluate, experiments.generate):
    Ctrl-C raises KeyboardInterrupt as Python's own handler does, except inside an XLA compile,
    where it waits for the compile to return. Only replaces Python's default handler, in the main
    thread: a background job's inherited SIG_IGN and a handler someone installed are kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _keyboard_interrupt_after_compiles)
