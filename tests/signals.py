"""A stop request taken the way a training loop takes one: a signal to this process, caught by a
preemption.Guard (the loop's; here installed and removed around the signal)."""
import os
import signal
import subprocess
import sys
from typing import Sequence

from research.training import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stop_request_during_training(signum: int = signal.SIGTERM) -> None:
    """What a Ctrl-C / SIGTERM during a run's last block of steps leaves behind: the run ends
    normally, and the request is on preemption's record (stop_requests())."""
    guard = preemption.Guard().install()
    try:
        os.kill(os.getpid(), signum)
        assert guard.requested
    finally:
        guard.uninstall()


# A command's main run in a fresh interpreter, a real signal raised as one of its functions is called.
_SIGNAL_DURING = """
import importlib, runpy, signal, sys
module = importlib.import_module({module!r})
function = getattr(module, {function!r})
def signal_then_call(*args, **kwargs):
    signal.raise_signal(signal.{signal_name})
    return function(*args, **kwargs)
setattr(module, {function!r}, signal_then_call)
sys.argv = {argv!r}
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def run_with_signal_during(module: str, function: str, signal_name: str, argv: Sequence[str],
                           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m argv[0] argv[1:]` from the repository root, with a real `signal_name`
    ("SIGINT" / "SIGTERM") raised as `module.function` is called (the main must look it up
    through its module for the patch to take)."""
    script = _SIGNAL_DURING.format(module=module, function=function, signal_name=signal_name, argv=list(argv))
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout)
