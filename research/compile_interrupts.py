"""A Ctrl-C / SIGTERM that stops a command during an XLA compile must not crash its exit.

jaxlib checks for signals while the main thread waits for a compile, so a stop raised by a
handler (Python's own for Ctrl-C, research.early_interrupts' during a command's setup, a Guard's
second Ctrl-C) abandons the compile, which goes on in XLA's thread pool. The stop itself goes
right (its one line, the claim withdrawn), but when the interpreter then tears down its modules
that thread touches the freed client and the process dies of SIGSEGV: exit -11 in place of
130 / 143, and a "Fatal Python error". Measured 2026-12-05 (jax 0.10.2, CPU): 6 of 8 Ctrl-Cs
3.7 to 6.3 s into `python -m experiments.finetune ...:sft_tiny`; a bare
`jax.jit(f).lower(x).compile()` interrupted mid-compile crashes the same way at exit. A
computation interrupted while it runs does not (the runtime waits for it).

So a handler that raises a stop calls note_stop first, and when the stop came inside a compile
the process ends without the teardown: an atexit hook, registered when this module is imported,
flushes stdout and stderr and calls os._exit(128 + signal). The training commands import it
first (through research.early_interrupts), so the hooks registered later (orbax, W&B) run
before it: atexit runs the last registered first. Raising the stop at once, inside the compile, is kept: tried first,
deferring it until the compile had returned raised it at arbitrary points of the code after the
compile, where it was swallowed by jax's bare `except:` clauses (2 of 24 stops lost, exit 0) or
left a ThreadPoolExecutor worker unregistered, and the exit hung.

Imports nothing heavy: research.early_interrupts uses it before JAX is imported.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import FrameType

# The module whose functions wait for XLA's compiler (backend_compile_and_load and its kin): the
# signal handler's frame is the Python frame that called into the compiler.
_COMPILER_FILE = os.path.join("jax", "_src", "compiler.py")
# Frames a handler running inside another handler sees on top of the interrupted code: looked through.
_HANDLER_FILES = (os.path.join("research", "compile_interrupts.py"), os.path.join("research", "early_interrupts.py"),
                  os.path.join("research", "training", "preemption.py"), threading.__file__)
_stopped_mid_compile: int | None = None  # the signal whose stop was raised inside a compile


def _packages() -> tuple[str, ...]:
    """The directories of jax and jaxlib once imported (this module never imports them)."""
    paths = (getattr(sys.modules.get(name), "__file__", None) for name in ("jax", "jaxlib"))
    return tuple(os.path.dirname(path) + os.sep for path in paths if path)


def compiling(frame: FrameType | None) -> bool:
    """Whether a signal handler given `frame` runs while the main thread waits for XLA to compile:
    a frame of jax/_src/compiler.py, innermost or under jax's own frames only."""
    packages = _packages() or ("\0",)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.endswith(_COMPILER_FILE):
            return True
        if not filename.endswith(_HANDLER_FILES) and not filename.startswith(packages):
            return False  # our code or the user's: not inside a compile
        frame = frame.f_back
    return False


def note_stop(signum: int, frame: FrameType | None) -> None:
    """For a signal handler about to raise a stop: when it raises inside a compile, the process
    will end without the interpreter's teardown (module docstring), with exit 128 + signum."""
    global _stopped_mid_compile
    if _stopped_mid_compile is None and compiling(frame):
        _stopped_mid_compile = signum


def stopped_mid_compile() -> int | None:
    """The signal whose stop was raised inside a compile, if one was."""
    return _stopped_mid_compile


def _exit_without_teardown() -> None:
    if _stopped_mid_compile is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or replaced: nothing left to lose
            pass
    os._exit(128 + _stopped_mid_compile)


atexit.register(_exit_without_teardown)  # runs after every hook registered later


def _keyboard_interrupt_noting_compiles(signum: int, frame: FrameType | None) -> None:
    note_stop(signum, frame)
    raise KeyboardInterrupt


def ctrl_c_after_compiles() -> None:
    """For a command with no stop handling of its own (experiments.evaluate, experiments.generate):
    Ctrl-C raises KeyboardInterrupt as Python's own handler does, and one raised inside a compile
    ends the process without the teardown that would crash. Only replaces Python's default
    handler, in the main thread: a background job's inherited SIG_IGN and a handler someone
    installed are kept."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _keyboard_interrupt_noting_compiles)
