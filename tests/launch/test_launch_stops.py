"""launch's local backend when the launcher is stopped: its jobs stop with it and are recorded,
a killed launcher takes its jobs down, and a relaunch never trains a job that still runs."""
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = "experiments/configs/pretrain.py:gpt_tiny"  # get_sweep(): 3 learning rates
NAMES = ("learning_rate=0.001", "learning_rate=0.003", "learning_rate=0.01")


def _launch_argv(workdir) -> list[str]:
    return [sys.executable, "-m", "launch", f"--config={PRETRAIN}", "--module=tests.launch.echo_job",
            f"--workdir={workdir}", "--max_parallel=2"]


def _wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_launcher_passes_the_stop_on_and_records_how_each_job_ended(tmp_path, signum, code):
    env = {**os.environ, "ECHO_JOB_SLEEP": "120"}
    launcher = subprocess.Popen(_launch_argv(tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: all((tmp_path / name / "argv.json").exists() for name in NAMES[:2]))
    launcher.send_signal(signum)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == code
    assert err.splitlines()[-1].startswith(f"error: stopped by {signal.Signals(signum).name}: the running jobs")
    rows = [line.split()[:4] for line in out.splitlines() if line.startswith(NAMES)]
    assert rows == [[NAMES[0], "stopped", "(exit", f"{code})"], [NAMES[1], "stopped", "(exit", f"{code})"],
                    [NAMES[2], "not", "started", "-"]]
    # Each job got the signal once (a second Ctrl-C would have stopped it without saving).
    assert [(tmp_path / name / "stopped_by").read_text() for name in NAMES[:2]] == [signal.Signals(signum).name] * 2
    assert not (tmp_path / NAMES[2]).exists()


def test_a_killed_launcher_takes_its_jobs_down_and_a_relaunch_waits_for_them(tmp_path):
    env = {**os.environ, "ECHO_JOB_SLEEP": "120", "ECHO_JOB_SAVE_SECONDS": "8"}
    launcher = subprocess.Popen(_launch_argv(tmp_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    _wait_for(lambda: all((tmp_path / name / "argv.json").exists() for name in NAMES[:2]))
    launcher.kill()
    launcher.wait()
    # The jobs were told (SIGTERM: they save and stop) and are saving: a relaunch now is refused.
    _wait_for(lambda: all((tmp_path / name / "stopped_by").exists() for name in NAMES[:2]), 30)
    assert (tmp_path / NAMES[0] / "stopped_by").read_text() == "SIGTERM"
    quick = subprocess.run(_launch_argv(tmp_path), cwd=REPO, env={**os.environ}, capture_output=True, text=True)
    assert quick.returncode == 1 and len(quick.stderr.splitlines()) == 1
    assert "is still running from an earlier launch" in quick.stderr
    assert not (tmp_path / NAMES[2]).exists()  # refused before anything started
    # Once they have stopped, the same command runs the sweep.
    deadline = time.time() + 60
    while True:
        again = subprocess.run(_launch_argv(tmp_path), cwd=REPO, env={**os.environ}, capture_output=True,
                               text=True)
        if again.returncode == 0 or time.time() > deadline:
            break
        time.sleep(1)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == "3 ok"
