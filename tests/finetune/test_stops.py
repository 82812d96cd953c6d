"""Ctrl-C / SIGTERM during fine-tuning's steps: the step is saved, the command exits 130 / 143
in one line, and the rerun continues; on several processes (SLURM's SIGTERM to every task) all
stop at one step. Before 2026-12-06 fine-tuning had no Guard: one process stopped without saving
the step, and two processes trained on to the end (JAX's preemption notifier took the SIGTERM)
or hung in a collective after one of them stopped."""
import json
import signal
import subprocess
import sys
import time

from research.training.checkpoint_loading import checkpoint_steps_in
from tests.finetune.multiprocess_worker import REPO as REPO_ROOT
from tests.training.test_multiprocess import free_port, worker_env

STEPS = 400  # far more than the signal needs: it comes once step 3 is logged


def command(workdir) -> list[str]:
    overrides = dict(num_steps=STEPS, batch_size=8, seq_len=48, eval_batches=1, log_every_steps=1,
                     eval_every_steps=STEPS)
    return [sys.executable, "-m", "launch.multihost", "experiments.finetune",
            "--config=experiments/configs/finetune.py:sft_tiny", f"--workdir={workdir}",
            "--config.model.num_layers=1", "--config.model.d_model=32", "--config.generation_prompts=0",
            "--config.checkpoint.every_steps=1000", "--config.data.num_train=256", "--config.data.num_eval=16",
            *(f"--config.train.{k}={v}" for k, v in overrides.items())]


def logged_steps(workdir) -> list[int]:
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in lines if line.strip().endswith("}") and '"loss"' in line]


def start_and_signal(commands, workdir, signum) -> list[tuple[int, str]]:
    processes = [subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for argv, env in commands]
    try:
        deadline = time.time() + 240
        while not any(s >= 3 for s in logged_steps(workdir)) and time.time() < deadline \
                and all(p.poll() is None for p in processes):
            time.sleep(0.05)
        for p in processes:
            p.send_signal(signum)
        return [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()


def test_sigterm_saves_the_step_and_the_rerun_continues(tmp_path):
    workdir = tmp_path / "run"
    env = worker_env(1)
    (code, stderr), = start_and_signal([(command(workdir), env)], workdir, signal.SIGTERM)
    saved = checkpoint_steps_in(str(workdir / "checkpoints"))
    assert code == 143 and len(saved) == 1 and 3 <= saved[0] < STEPS, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (f"error: stopped by SIGTERM at step {saved[0]}; checkpoint saved in "
                                               f"{workdir}/checkpoints; rerun the same command to continue.")
    rerun = subprocess.run(command(workdir), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert logged_steps(workdir) == list(range(1, STEPS + 1))  # each step once: the rerun went on from the save


def test_sigterm_to_every_process_stops_both_at_one_saved_step(tmp_path):
    workdir = tmp_path / "run"
    port = free_port()
    commands = [(command(workdir), worker_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                              JAX_PROCESS_ID=str(i))) for i in range(2)]
    results = start_and_signal(commands, workdir, signal.SIGTERM)
    saved = checkpoint_steps_in(str(workdir / "checkpoints"))
    assert [code for code, _ in results] == [143, 143], [stderr[-2000:] for _, stderr in results]
    assert len(saved) == 1 and saved[0] < STEPS
    for _, stderr in results:
        assert stderr.strip().splitlines()[-1] == (f"error: stopped by SIGTERM at step {saved[0]}; checkpoint saved "
                                                   f"in {workdir}/checkpoints; rerun the same command to continue.")
