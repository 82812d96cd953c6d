"""experiments/workers.py: run claims that die with their process, core slices, bad --workers."""
import os
import subprocess
import sys

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
