"""A Ctrl-C / SIGTERM during an XLA compile stops the command after the compile, not with a
segfault at exit (research/compile_interrupts.py)."""
import os
import signal
import subprocess
import sys
import time
import types

import jax
import pytest

from research import compile_interrupts
from research.training import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frame(filename: str, parent: object = None) -> types.SimpleNamespace:
    """A stand-in for the frame a signal handler is given: only what compiling() reads."""
    return types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename=filename), f_back=parent)


JAX_SRC = os.path.join(os.path.dirname(jax.__file__), "_src")
COMPILER_FRAME = _frame(os.path.join(JAX_SRC, "compiler.py"), _frame(os.path.join(JAX_SRC, "pjit.py"), _frame("train.py")))
# Where jax reads a new executable's layouts, under bare `except:` clauses.
AFTER_COMPILE_FRAME = _frame(os.path.join(JAX_SRC, "interpreters", "pxla.py"), _frame("train.py"))


def _wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)  # bytecode keeps running here, so a pending handler runs


def test_compiling_reads_the_frames_up_to_the_callers_code():
    assert compile_interrupts.compiling(COMPILER_FRAME)
    assert compile_interrupts.compiling(_frame(os.path.join(JAX_SRC, "profiler.py"), COMPILER_FRAME))
    assert not compile_interrupts.compiling(AFTER_COMPILE_FRAME)
    assert not compile_interrupts.compiling(_frame("train.py", COMPILER_FRAME))  # the compile returned
    assert not compile_interrupts.compiling(None)


def test_a_deferred_signal_runs_its_handler_again_once():
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(frame))
    try:
        assert compile_interrupts.defer_while_compiling(signal.SIGUSR1, COMPILER_FRAME)
        assert compile_interrupts.defer_while_compiling(signal.SIGUSR1, COMPILER_FRAME)  # a second: nothing more
        assert calls == []
        _wait_for(lambda: calls)
        time.sleep(5 * compile_interrupts.RECHECK_SECONDS)
        assert len(calls) == 1
        assert not compile_interrupts.compiling(calls[0])  # this test's own frame: raise here
        assert not compile_interrupts.defer_while_compiling(signal.SIGUSR1, calls[0])
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_deferred_signal_waits_until_the_main_thread_leaves_jax():
    """Raised in jax's code right after the compile, a bare `except:` there would swallow it."""
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(frame))
    try:
        assert not compile_interrupts.defer_while_compiling(signal.SIGUSR1, AFTER_COMPILE_FRAME)  # no compile: now
        assert compile_interrupts.defer_while_compiling(signal.SIGUSR1, COMPILER_FRAME)
        _wait_for(lambda: len(calls) == 1)
        assert compile_interrupts.defer_while_compiling(signal.SIGUSR1, AFTER_COMPILE_FRAME)  # still in jax
        _wait_for(lambda: len(calls) == 2)
        assert not compile_interrupts.defer_while_compiling(signal.SIGUSR1, _frame("train.py"))  # raise here
        assert not compile_interrupts.defer_while_compiling(signal.SIGUSR1, AFTER_COMPILE_FRAME)  # a new one: now
        time.sleep(5 * compile_interrupts.RECHECK_SECONDS)
        assert len(calls) == 2
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_guards_second_ctrl_c_during_a_compile_raises_after_it():
    guard = preemption.Guard().install()
    returned = False
    try:
        guard.signal_name = "SIGINT"  # the first Ctrl-C asked for a save and a stop
        with pytest.raises(KeyboardInterrupt):
            guard._handle(signal.SIGINT, COMPILER_FRAME)  # inside the compile: no raise
            returned = True
            _wait_for(lambda: False, seconds=2.0)  # the handler runs again here, outside it, and raises
        assert returned
    finally:
        guard.uninstall()


# A command compiling for a few seconds when the signal comes: in its setup (early handlers
# watching), or a command with no stop handling but ctrl_c_after_compiles (experiments.evaluate).
_EARLY = dict(setup="remember_early_interrupts()", watch="watch_early_interrupts()")
_PLAIN = dict(setup="ctrl_c_after_compiles()", watch="")
_COMPILE_INTERRUPTED = """
import os, signal, sys, threading, time
from research.compile_interrupts import ctrl_c_after_compiles
from research.early_interrupts import remember_early_interrupts, watch_early_interrupts, signal_exit_code
{setup}
import jax, jax.numpy as jnp
{watch}

def chain(x):
    for i in range(150):  # about 2 s of XLA:CPU compile (0.3 s is when the signal comes)
        x = jnp.sin(x) @ x + i
    return x

lowered = jax.jit(chain).lower(jnp.ones((8, 8)))
threading.Timer(0.3, os.kill, (os.getpid(), signal.{name})).start()
try:
    lowered.compile()
    time.sleep(1)  # a command's next work: where a signal deferred to the compile's end is raised
    print("compiled: the signal came too late to test anything")
except KeyboardInterrupt:
    print("stopped by {name}")
    sys.exit(signal_exit_code("{name}"))
"""


@pytest.mark.parametrize("name, handlers", [("SIGINT", _EARLY), ("SIGTERM", _EARLY), ("SIGINT", _PLAIN)],
                         ids=["setup-SIGINT", "setup-SIGTERM", "plain-command-SIGINT"])
def test_a_stop_during_a_compile_exits_with_its_code_not_a_segfault(name, handlers):
    """Before the fix a stop here exited -11 ("Fatal Python error: Segmentation fault") once the
    abandoned compile finished on XLA's thread pool during the interpreter's exit."""
    # No persistent compilation cache (the suite's, tests/conftest.py): a cache hit would return
    # before the signal comes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_ENABLE_COMPILATION_CACHE="false", JAX_COMPILATION_CACHE_DIR="")
    result = subprocess.run([sys.executable, "-c", _COMPILE_INTERRUPTED.format(name=name, **handlers)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 128 + getattr(signal, name), (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.stdout.strip() == f"stopped by {name}"
    assert "Fatal Python error" not in result.stderr
