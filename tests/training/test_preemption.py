"""SIGTERM (SLURM / TPU preemption) and Ctrl-C: save at the current step, exit cleanly, rerun is exact."""
import signal
import subprocess
import sys
import time

from research.training import train_and_evaluate

from tests.training.conftest import run_config
from tests.training.test_resume import REPO, assert_same_run, cli_overrides, latest_checkpoint, per_step


def _logged_step(workdir, step):
    """Whether the run has logged `step` (it is training, past compilation)."""
    try:
        return f'"step": {step},' in (workdir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return False


def test_sigterm_saves_the_current_step_and_the_rerun_is_exact(tokenizers, compilation_cache, tmp_path):
    steps = 40
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=steps)
    config.model.dropout_rate = 0.1
    config.checkpoint.every_steps = 1000  # only the last step is a scheduled save: the stop's save is the signal's
    train_and_evaluate(config, str(tmp_path / "whole"))
    workdir = tmp_path / "preempted"
    command = [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny",
               f"--workdir={workdir}", *cli_overrides(config)]
    process = subprocess.Popen(command, cwd=REPO, env=compilation_cache, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not _logged_step(workdir, 3) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, f"{process.returncode}\n{stderr[-3000:]}"
    last = stderr.strip().splitlines()[-1]
    stopped_at = latest_checkpoint(workdir)
    assert last == (f"stopped by SIGTERM at step {stopped_at}; checkpoint saved in {workdir}/checkpoints; "
                    "rerun the same command to continue."), stderr[-3000:]
    assert "Traceback" not in stderr
    print(f"stopped at step {stopped_at}")
    assert 3 <= stopped_at < steps
    rerun = subprocess.run(command, cwd=REPO, env=compilation_cache, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_run(per_step(workdir), per_step(tmp_path / "whole"), steps)


def test_ctrl_c_before_training_is_one_line_and_exit_130(tokenizers, tmp_path):
    """Ctrl-C while the run is still setting up (here: right after the workdir is claimed)."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=40)
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny",
               f"--workdir={workdir}", *cli_overrides(config)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (workdir / "run.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, f"{process.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT") and last.endswith("rerun the same command to continue.") or \
        last.endswith("continue from the last checkpoint."), last
