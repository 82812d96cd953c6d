"""launch's local backend when the launcher is stopped: its jobs stop with it and are recorded,
a killed launcher takes its jobs down, and a relaunch never trains a job that still runs."""
import os
import shlex
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


# A job that saves for a moment on SIGTERM, then exits 143, as a training loop does.
_SAVING_JOB = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(143))); "
               "open(sys.argv[1], 'w').close(); time.sleep(120)")


def _stop_script_group(argv: list[str], started, env=None) -> subprocess.Popen:
    """Run a launch script in a session of its own and SIGTERM all of it, as SLURM's scancel,
    time limit and preemption do (the batch shell included)."""
    script = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    _wait_for(started.exists)
    os.killpg(script.pid, signal.SIGTERM)
    script.communicate(timeout=60)
    return script


def test_slurm_task_stopped_by_sigterm_records_that_its_job_stopped(tmp_path):
    from launch import backends, results
    from launch.sweep import expand, load_sweep
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir="/shared/lr")
    script = backends.slurm_script(jobs, backends.SlurmOptions(job_name="lr"), cwd="/repo", log_dir=str(tmp_path))
    started = tmp_path / "started"
    srun = f"{shlex.quote(sys.executable)} -c {shlex.quote(_SAVING_JOB)} {started} #"  # the rest: a comment
    fake = script.replace("set -euo pipefail", "set -euo pipefail; SLURM_ARRAY_TASK_ID=1").replace("srun ", srun + " ")
    fake = "\n".join(line for line in fake.splitlines() if not line.startswith("cd "))
    task = _stop_script_group(["bash", "-c", fake], started)
    assert task.returncode == 143
    assert [r.status for r in results.collect(jobs, str(tmp_path))] == ["not started", "stopped (exit 143)",
                                                                        "not started"]


def test_tpu_vm_script_stopped_records_the_running_job_and_starts_no_other(tmp_path):
    from launch import backends, results
    from launch.sweep import expand, load_sweep
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir="/w")
    script = backends.tpu_vm_script(jobs, backends.TpuVmOptions(tpu_name="v4-8", zone="z"), log_dir=str(tmp_path))
    started = tmp_path / "started"
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.parent.mkdir()
    gcloud.write_text(f"#!/bin/bash\nexec {shlex.quote(sys.executable)} -c {shlex.quote(_SAVING_JOB)} {started}\n")
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{gcloud.parent}:{os.environ['PATH']}"}
    run = _stop_script_group(["bash", "-c", script], started, env)
    assert run.returncode == 143
    assert [r.status for r in results.collect(jobs, str(tmp_path))] == ["stopped (exit 143)", "not started",
                                                                        "not started"]


@pytest.mark.parametrize("to_group", [True, False])  # a terminal's Ctrl-C (the whole group), or a SIGINT to the launcher
def test_a_ctrl_c_during_a_submitted_tpu_vm_script_lets_it_record_the_running_jobs_end(tmp_path, to_group):
    """subprocess.run killed the script on the KeyboardInterrupt before its trap recorded the job's end:
    a traceback, and the job 'running' in --results for ever."""
    bin_dir, workdir = tmp_path / "bin", tmp_path / "w"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(  # a job on the workers: saves on a stop and exits 128 + N
        "#!/bin/bash\nexec " + shlex.quote(sys.executable) + " -c " + shlex.quote(
            "import signal, sys, time\n"
            "def stop(signum, frame):\n    time.sleep(1); sys.exit(128 + signum)\n"
            "signal.signal(signal.SIGINT, stop); signal.signal(signal.SIGTERM, stop)\n"
            f"open({str(tmp_path / 'started')!r}, 'w').close(); time.sleep(120)\n") + "\n")
    (bin_dir / "gcloud").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "launch", f"--config={PRETRAIN}", "--module=experiments.pretrain",
            f"--workdir={workdir}", "--backend=tpu_vm", "--tpu_name=v4-32", "--tpu_zone=z"]
    launcher = subprocess.Popen(argv + ["--submit"], cwd=REPO, env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (tmp_path / "started").exists())
    if to_group:
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: stopped (exit 130): the running job's end is recorded")
    table = subprocess.run(argv + ["--results"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    rows = [line.split()[:2] for line in table.stdout.splitlines() if line.startswith(NAMES)]
    assert rows == [[NAMES[0], "stopped"], [NAMES[1], "not"], [NAMES[2], "not"]]
