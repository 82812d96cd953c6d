"""A Ctrl-C / SIGTERM that stops a command during an XLA compile exits with its code, not with a
segfault in the interpreter's teardown (research/compile_interrupts.py)."""
import os
import signal
import subprocess
import sys
import threading
import types

import jax
import pytest

from research import compile_interrupts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_SRC = os.path.join(os.path.dirname(jax.__file__), "_src")


def _frame(filename: str, parent: object = None) -> types.SimpleNamespace:
    """A stand-in for the frame a signal handler is given: only what compiling() reads."""
    return types.SimpleNamespace(f_code=types.SimpleNamespace(co_filename=filename), f_back=parent)


COMPILER_FRAME = _frame(os.path.join(JAX_SRC, "compiler.py"), _frame(os.path.join(JAX_SRC, "pjit.py"), _frame("train.py")))


def test_compiling_reads_the_frames_up_to_the_callers_code():
    assert compile_interrupts.compiling(COMPILER_FRAME)
    assert compile_interrupts.compiling(_frame(os.path.join(JAX_SRC, "profiler.py"), COMPILER_FRAME))
    # A SIGTERM whose handler runs inside a Ctrl-C's handler is given that handler's frames: the
    # compile is under them.
    handlers = _frame(threading.__file__, _frame(os.path.join("research", "early_interrupts.py"), COMPILER_FRAME))
    assert compile_interrupts.compiling(handlers)
    assert not compile_interrupts.compiling(_frame(os.path.join(JAX_SRC, "interpreters", "pxla.py"), _frame("train.py")))
    assert not compile_interrupts.compiling(_frame("train.py", COMPILER_FRAME))  # the compile returned
    assert not compile_interrupts.compiling(None)


def test_note_stop_remembers_only_a_stop_raised_inside_a_compile(monkeypatch):
    monkeypatch.setattr(compile_interrupts, "_stopped_mid_compile", None)
    compile_interrupts.note_stop(signal.SIGINT, _frame("train.py"))
    assert compile_interrupts.stopped_mid_compile() is None
    compile_interrupts.note_stop(signal.SIGTERM, COMPILER_FRAME)
    compile_interrupts.note_stop(signal.SIGINT, COMPILER_FRAME)  # the first one's code is kept
    assert compile_interrupts.stopped_mid_compile() == signal.SIGTERM


# A command compiling when the signal comes: in its setup (early handlers watching), or a
# command with no stop handling but ctrl_c_after_compiles (experiments.evaluate).
_EARLY = dict(setup="remember_early_interrupts()", watch="watch_early_interrupts()")
_PLAIN = dict(setup="ctrl_c_after_compiles()", watch="")
_COMPILE_INTERRUPTED = """
import os, signal, sys, threading, time
from research.compile_interrupts import ctrl_c_after_compiles, stopped_mid_compile
from research.early_interrupts import remember_early_interrupts, watch_early_interrupts, signal_exit_code
{setup}
import jax, jax.numpy as jnp
{watch}

def chain(x, offset):
    for i in range(150):  # about 2 s of XLA:CPU compile on a 2-core machine
        x = jnp.sin(x) @ x + (i + offset)
    return x

# How long this machine takes for such a compile (another program: nothing is cached), so that
# the signal comes a quarter of the way into the one that follows.
start = time.monotonic()
jax.jit(lambda x: chain(x, 0.5)).lower(jnp.ones((8, 8))).compile()
seconds = time.monotonic() - start
assert seconds > 0.2, f"the compile took {{seconds:.2f}} s: too short to signal inside it"
lowered = jax.jit(lambda x: chain(x, 0.0)).lower(jnp.ones((8, 8)))

class Teardown:  # printed when the interpreter tears down this module: the teardown that crashed
    def __del__(self):
        print("torn down", flush=True)

marker = Teardown()
threading.Timer(seconds / 4, os.kill, (os.getpid(), signal.{name})).start()
try:
    lowered.compile()
    print("compiled: the signal came after the compile")
except KeyboardInterrupt:
    print("stopped by {name}", "inside the compile" if stopped_mid_compile() else "outside the compile")
    sys.exit(signal_exit_code("{name}"))
"""


@pytest.mark.parametrize("name, handlers", [("SIGINT", _EARLY), ("SIGTERM", _EARLY), ("SIGINT", _PLAIN)],
                         ids=["setup-SIGINT", "setup-SIGTERM", "plain-command-SIGINT"])
def test_a_stop_during_a_compile_exits_with_its_code_not_a_segfault(name, handlers):
    """Before the fix a stop here could exit -11 ("Fatal Python error: Segmentation fault"): the
    abandoned compile finished on XLA's thread pool during the interpreter's teardown. Whether it
    crashes depends on when the compile ends, so the test checks that the teardown is skipped
    (which it is not without the fix: "torn down" is printed), and the exit code."""
    # No persistent compilation cache (the suite's, tests/conftest.py): a cache hit would return
    # before the signal comes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_ENABLE_COMPILATION_CACHE="false", JAX_COMPILATION_CACHE_DIR="")
    script = _COMPILE_INTERRUPTED.format(name=name, **handlers)
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 128 + getattr(signal, name), (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.stdout.strip() == f"stopped by {name} inside the compile"
    assert "Fatal Python error" not in result.stderr
