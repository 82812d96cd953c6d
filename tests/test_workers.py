"""experiments/workers.py: run claims that die with their process, core slices, bad --workers."""
import os
import subprocess
import sys
import time

import pytest

from experiments import workers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = """
import sys, time
from experiments import workers
with workers.claim(sys.argv[1]) as ours:
    print("held" if ours else "busy", flush=True)
    time.sleep(600)
"""


def test_a_claim_excludes_other_processes_and_ends_with_its_process(tmp_path):
    run_dir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, run_dir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with workers.claim(run_dir) as ours:
            assert not ours
    finally:
        holder.kill()  # kill -9: no chance to release the lock itself
        holder.wait()
    with workers.claim(run_dir) as ours:
        assert ours
        with workers.claim(run_dir) as again:  # a second descriptor in the same process is another claimant
            assert not again


def test_cores_are_split_into_disjoint_contiguous_slices():
    assert workers.split_cores(range(4), 2) == [[0, 1], [2, 3]]
    assert workers.split_cores([7, 3, 5], 2) == [[3, 5], [7]]
    assert workers.split_cores([0, 1], 1) == [[0, 1]]
    with pytest.raises(ValueError, match="workers=3: this process may use 2 cores"):
        workers.split_cores([0, 1], 3)


def test_each_worker_is_told_the_peak_of_its_own_cores(monkeypatch):
    """The study's workers were told the whole host's peak though pinned to a share of its cores:
    their MFU read about 1/workers of the truth."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(5)))
    assert workers.peak_shares(1e11, 2) == pytest.approx([0.4e11, 0.6e11])  # slices [0, 1] and [2, 3, 4]
    assert workers.peak_shares(1e11, 1) == [1e11]


def test_auto_workers_only_on_a_single_cpu_host():
    cores = len(os.sched_getaffinity(0))
    assert workers.auto_workers("cpu") == min(cores, workers.MAX_AUTO_WORKERS)
    assert workers.auto_workers("gpu") == workers.auto_workers("tpu") == 1
    assert workers.auto_workers("cpu", num_processes=2) == 1


@pytest.mark.parametrize("value, message", [
    ("-1", "error: --workers=-1: give the number of processes (>= 1), or 0 for one per core."),
    ("999", "error: --workers=999 is more than the "),
])
def test_bad_worker_counts_are_one_line_before_anything_is_written(tmp_path, value, message):
    workdir = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "experiments.scaling_laws",
                             "--config=experiments/configs/scaling_laws.py:test_tiny", f"--workdir={workdir}",
                             f"--workers={value}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert not workdir.exists()


def test_emergence_study_in_two_workers_trains_each_size_once_and_reports(tmp_path):
    """`python -m experiments.emergence ... --workers=2`: each size trained and evaluated by one
    worker (the other sees its claim), their log lines echoed, and the report written after."""
    workdir = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "experiments.emergence",
                             "--config=experiments/configs/emergence.py:micro", f"--workdir={workdir}", "--workers=2"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "training 2 sizes in 2 worker processes" in result.stdout
    for size in ("scale-1e4", "scale-3e4"):
        trained = [line for line in result.stdout.splitlines() if f"{size}: trained in " in line]
        assert len(trained) == 1 and trained[0].startswith("[worker "), result.stdout
        assert list((workdir / "runs" / size / "evals").glob("step_*.json"))
    assert (workdir / "report" / "report.md").is_file()
    assert not any(line.startswith("[worker") and " I1" in line for line in result.stdout.splitlines())


def test_a_failed_workers_last_line_leaves_out_library_logging(tmp_path):
    log = tmp_path / "worker-0.log"
    log.write_text("d8-l2: training 60 steps\nW1203 22:57:37.1 builder.py:1] Using custom data configuration\n"
                   "I1203 22:57:38.0 x.py:2] saved\n")
    assert workers.last_lines(str(log), 1) == "d8-l2: training 60 steps"
    # A progress bar drawn after the worker's error line once hid it (and its advice to rerun
    # was wrong): the error line is the one reported.
    log.write_text("sweep:   0%| | 0.00/2.01G [00:00<?, ?FLOP/s]\nerror: runs/x was trained with a different "
                   "config (sections ['opt'] differ)\nsweep:   0%| | 0.00/2.01G [00:00<?, ?FLOP/s]\n")
    assert workers.last_lines(str(log), 1) == ("error: runs/x was trained with a different config (sections "
                                               "['opt'] differ)")


def test_a_progress_bars_line_does_not_hide_the_error_printed_onto_its_end(tmp_path):
    """The worker's error (stderr) was written right after a bar's redraw (stdout, no newline):
    the whole line was dropped as a bar and an unrelated line reported as the worker's error."""
    log = tmp_path / "worker-0.log"
    log.write_text("sweep: 5 runs over 5 models (tokens)\nsweep:   0%|          | 0.00/2.01G [00:00<?, ?FLOP/s]\r"
                   "sweep:   0%|          | 0.00/2.01G [00:00<?, ?FLOP/s, ladder-L1-D8-3steps]error: "
                   "opt.learning_rate=-1.0 must be positive.\nsweep:   0%|          | 0.00/2.01G [00:00<?, ?FLOP/s]\n")
    assert workers.last_lines(str(log), 1) == "error: opt.learning_rate=-1.0 must be positive."


WAIT_FOR_SIGTERM = """
import signal, sys, time
def stop(signum, frame):
    print("saved on", signal.Signals(signum).name, flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_signal_to_the_parent_stops_the_workers_gracefully_and_raises_stopped(tmp_path):
    """Ctrl-C of the command reached only the parent's KeyboardInterrupt, whose cleanup killed the
    workers (-9, nothing saved): the workers get SIGTERM (their loops save and stop) and the
    parent waits for them, then raises Stopped (one line, exit code 130)."""
    import signal

    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    sent, handlers = [], [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]

    def poll():
        if not sent and all(p.exists() and "ready" in p.read_text() for p in logs):
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(workers.Stopped, match="stopped by SIGINT: the workers saved") as stop:
        workers.run_workers([[sys.executable, "-c", WAIT_FOR_SIGTERM]] * 2, log_dir=str(tmp_path), poll=poll,
                            poll_seconds=0.05, forward_signals=True)
    assert stop.value.exit_code == 130
    assert all("saved on SIGTERM" in p.read_text() for p in logs)
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # restored


def test_a_later_worker_that_fails_stops_the_others_and_is_the_one_named(tmp_path):
    # Only the first live worker was polled: worker 1's failure went unseen while worker 0 ran on
    # (20 s here; in a study, the rest of its runs), and then worker 0's -15 would have been named.
    start = time.perf_counter()
    codes = workers.run_workers([["sleep", "20"], [sys.executable, "-c", "print('bad config'); raise SystemExit(3)"]],
                                log_dir=str(tmp_path), poll_seconds=0.1)
    assert time.perf_counter() - start < 10 and list(codes) == [-15, 3] and codes.first_failed == 1
    assert workers.failure_line(codes, str(tmp_path)) == (
        f"worker 1 exited with code 3; its log ends: bad config (whole log: {tmp_path}/worker-1.log)")
    assert workers.failure_line([0, -9], str(tmp_path)).startswith("worker 1 was killed by SIGKILL; its log ends: ")
    assert workers.failure_line([0, 0], str(tmp_path)) is None
