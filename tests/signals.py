"""A stop request taken the way a training loop takes one: a signal to this process, caught by a
preemption.Guard (the loop's; here installed and removed around the signal)."""
import os
import signal

from research.training import preemption


def stop_request_during_training(signum: int = signal.SIGTERM) -> None:
    """What a Ctrl-C / SIGTERM during a run's last block of steps leaves behind: the run ends
    normally, and the request is on preemption's record (stop_requests())."""
    guard = preemption.Guard().install()
    try:
        os.kill(os.getpid(), signum)
        assert guard.requested
    finally:
        guard.uninstall()
