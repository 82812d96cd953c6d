"""preemption on several processes, without starting them: jax.process_count and the sync point
are stood in for (the real two-process stops: tests/training/test_multiprocess.py)."""
import signal

import jax

from research.training import preemption


def test_with_several_processes_every_step_of_a_block_is_reported_to_the_preemption_sync_point(monkeypatch):
    """JAX's preemption sync point (the highest step reported + 1) answers True only to a call with
    exactly that step: reported at block ends only (1, 4, 7 in blocks of 3), point 6 was stepped
    over and a SIGTERM never stopped a multi-process run. (The real two-process stop:
    tests/training/test_multiprocess.py.)"""
    from jax.experimental import multihost_utils
    reported, point = [], 6

    def reached(step):
        reported.append(step)
        return step == point

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", reached)
    monkeypatch.setattr(preemption, "_SYNC_REPORTED", [0])  # a fresh process
    guard = preemption.Guard()
    assert [guard.should_stop(step) for step in (0, 1, 4, 7)] == [False, False, False, True]
    assert reported == [1, 2, 3, 4, 5, 6] and guard.signal_name == "SIGTERM"
    # A notice during setup, before any step was reported, sets the point to 1: a run resumed at
    # step 100 asked at 100 only and never met it.
    reported.clear()
    point = 1
    monkeypatch.setattr(preemption, "_SYNC_REPORTED", [0])
    assert preemption.Guard().should_stop(100) and reported == [1]


def test_with_several_processes_runs_in_turn_report_after_the_run_before(monkeypatch):
    """A sweep trains its runs in turn, a Guard each. A notice in the first run's last block set the
    point past its end (10 steps: point 11); the second run reported 1, 2, ... again and never met it,
    so the sweep trained on through every later run."""
    from jax.experimental import multihost_utils
    reported = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                        lambda step: reported.append(step) or step == 11)
    monkeypatch.setattr(preemption, "_SYNC_REPORTED", [0])
    first = preemption.Guard()
    assert not any(first.should_stop(step) for step in (5, 10))  # its last block: no stop inside it
    second = preemption.Guard()
    assert second.should_stop(5) and reported == list(range(1, 12))  # the second run's first block end


def test_with_several_processes_a_held_stop_leaves_sigterm_to_jax(monkeypatch):
    """stops_held (the fine-tuning checkpointer's close) took SIGTERM from JAX's preemption notifier, a C
    handler Python sees as SIG_DFL, and restored SIG_DFL: a later SIGTERM killed the process outright.
    Here a Python handler stands in for the notifier; SIGTERM must stay with it, during and after."""
    notifier = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: notifier.append(signum))
    try:
        handler = signal.getsignal(signal.SIGTERM)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        with preemption.stops_held():
            assert signal.getsignal(signal.SIGTERM) is handler
            signal.raise_signal(signal.SIGTERM)
            assert notifier == [signal.SIGTERM]  # taken by the notifier at once, not held
        assert signal.getsignal(signal.SIGTERM) is handler and notifier == [signal.SIGTERM]
        guard = preemption.Guard().install()
        try:
            assert signal.getsignal(signal.SIGTERM) is handler
        finally:
            guard.uninstall()
    finally:
        signal.signal(signal.SIGTERM, previous)
