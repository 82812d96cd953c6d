"""launch/: sweep expansion, the local backend, slurm and tpu_vm scripts, multi-host start-up."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from launch import backends, multihost
from launch.sweep import LaunchError, expand, load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = "experiments/configs/pretrain.py:gpt_tiny"


def test_get_sweep_expands_to_one_command_per_override_dict(tmp_path):
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir=str(tmp_path))
    assert [job.name for job in jobs] == ["learning_rate=0.001", "learning_rate=0.003", "learning_rate=0.01"]
    assert jobs[0].argv == ("python", "-m", "launch.multihost", "experiments.pretrain", f"--config={PRETRAIN}",
                            f"--workdir={tmp_path}/learning_rate=0.001", "--config.opt.learning_rate=0.001")
    assert len({job.workdir for job in jobs}) == 3
    # Shards of a scaling sweep share the base workdir and say so.
    scaling = "experiments/configs/scaling_laws.py:cpu_tiny"
    shards = expand(load_sweep(scaling), module="experiments.scaling_laws", config=scaling, workdir=str(tmp_path))
    assert [(job.name, job.workdir) for job in shards] == [(f"shard{i}", str(tmp_path)) for i in range(3)]
    assert shards[2].argv[-2:] == ("--config.shard.index=2", "--config.shard.count=3")
    # Tuples become config_flags tuples.
    (job,) = expand([{"config.sweep.budgets": (1e10, 3e10), "config.sweep.presets": ("gpt2-tiny",)}],
                    module="m", config="c.py", workdir="/w")
    assert job.argv[-2:] == ("--config.sweep.budgets=(10000000000.0,30000000000.0)",
                             "--config.sweep.presets=(gpt2-tiny,)")


def test_bad_sweeps_are_one_line_errors(tmp_path):
    (tmp_path / "no_sweep.py").write_text("def get_config(arg=None):\n    return None\n")
    (tmp_path / "empty.py").write_text("def get_sweep():\n    return []\n")
    with pytest.raises(LaunchError, match="defines no get_sweep"):
        load_sweep(str(tmp_path / "no_sweep.py") + ":x")
    with pytest.raises(LaunchError, match="non-empty list"):
        load_sweep(str(tmp_path / "empty.py"))
    with pytest.raises(LaunchError, match="'missing.py' is not a file"):
        load_sweep("missing.py:x")
    with pytest.raises(LaunchError, match=r"has key\(s\) \['opt.lr'\]"):
        expand([{"opt.lr": 1}], module="m", config="c", workdir="/w")
    with pytest.raises(LaunchError, match="duplicate job names"):
        expand([{"workdir": ".", "name": "a"}, {"workdir": ".", "name": "a"}], module="m", config="c", workdir="/w")


def test_local_backend_runs_every_job_and_reports_failures(tmp_path):
    sweep = [{"config.opt.learning_rate": 0.1}, {"config.fail": True}, {"config.opt.learning_rate": 0.3}]
    jobs = expand(sweep, module="tests.launch.echo_job", config="c.py:x", workdir=str(tmp_path), python=sys.executable)
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        results = backends.run_local(jobs, cwd=REPO, max_parallel=2, out=out)
    assert [(r.job.name, r.returncode) for r in results] == [
        ("learning_rate=0.1", 0), ("fail=True", 3), ("learning_rate=0.3", 0)]
    recorded = json.loads((tmp_path / "learning_rate=0.3" / "argv.json").read_text())["argv"]
    assert recorded[1:] == ["--config=c.py:x", f"--workdir={tmp_path}/learning_rate=0.3",
                            "--config.opt.learning_rate=0.3"]  # launch.multihost ran the module as __main__
    assert "done fail=True: FAILED (exit 3" in log.read_text()
    with pytest.raises(LaunchError, match="max_parallel=0"):
        backends.run_local(jobs, cwd=REPO, max_parallel=0)


def test_slurm_script_is_an_array_of_the_jobs():
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir="/shared/lr")
    script = backends.slurm_script(jobs, backends.SlurmOptions(job_name="lr", nodes=2, gpus_per_node=8,
                                                               partition="gpu", setup="source venv/bin/activate"),
                                   cwd="/repo", log_dir="/shared/lr")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --array=0-2" in lines and "#SBATCH --nodes=2" in lines
    assert "#SBATCH --ntasks-per-node=1" in lines and "#SBATCH --gpus-per-node=8" in lines
    assert "#SBATCH --partition=gpu" in lines and not any("--account" in line for line in lines)
    assert lines.index("source venv/bin/activate") < lines.index("JOBS=(")
    assert lines[-1] == 'srun bash -c "${JOBS[$SLURM_ARRAY_TASK_ID]}"'
    # The array is valid bash holding each job's exact command: run task 1 with echo for srun.
    fake = script.replace("srun bash -c", "echo").replace("set -euo pipefail", "SLURM_ARRAY_TASK_ID=1")
    fake = "\n".join(line for line in fake.splitlines() if not line.startswith(("cd ", "source ")))
    out = subprocess.run(["bash", "-c", fake], capture_output=True, text=True, check=True).stdout.strip()
    assert shlex.split(out) == list(jobs[1].argv)


def test_tpu_vm_script_runs_each_job_on_every_worker(tmp_path):
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir="/w")
    script = backends.tpu_vm_script(jobs, backends.TpuVmOptions(tpu_name="v4-32", zone="us-central2-b",
                                                                 setup="source ~/venv/bin/activate"))
    commands = [line for line in script.splitlines() if line.startswith("gcloud")]
    assert len(commands) == 3
    argv = shlex.split(commands[0])
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32"]
    assert "--worker=all" in argv and "--zone=us-central2-b" in argv
    remote = next(a for a in argv if a.startswith("--command=")).split("=", 1)[1]
    assert remote == "cd ~/research && source ~/venv/bin/activate && " + jobs[0].command
    with pytest.raises(LaunchError, match="--tpu_name"):
        backends.tpu_vm_script(jobs, backends.TpuVmOptions(tpu_name="", zone=""))


def test_multihost_joins_jax_distributed_only_on_several_hosts(monkeypatch):
    import jax
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    assert multihost.initialize({}) is None and multihost.initialize({"SLURM_NTASKS": "1"}) is None
    assert multihost.initialize({"TPU_WORKER_HOSTNAMES": "10.0.0.1"}) is None
    assert multihost.initialize({"SLURM_NTASKS": "4"}) == "slurm"  # jax reads SLURM's variables itself
    assert multihost.initialize({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == "tpu"
    assert multihost.initialize({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2",
                                 "JAX_PROCESS_ID": "1"}) == "explicit"
    assert calls == [{}, {}, {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}]
    with pytest.raises(SystemExit, match="JAX_NUM_PROCESSES"):
        multihost.initialize({"JAX_COORDINATOR_ADDRESS": "h:1234"})


def test_cli_dry_run_and_script(tmp_path):
    base = [sys.executable, "-m", "launch", f"--config={PRETRAIN}", "--module=experiments.pretrain",
            f"--workdir={tmp_path}"]
    result = subprocess.run(base + ["--dry_run"], cwd=REPO, capture_output=True, text=True, check=True)
    assert len(result.stdout.splitlines()) == 3 and "--config.opt.learning_rate=0.01" in result.stdout
    result = subprocess.run(base + ["--backend=slurm"], cwd=REPO, capture_output=True, text=True, check=True)
    assert (tmp_path / "launch_slurm.sh").read_text().count("launch.multihost experiments.pretrain") == 3
    result = subprocess.run(base + ["--backend=tpu_vm"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip() == (
        "error: tpu_vm needs --tpu_name and --tpu_zone, e.g. --tpu_name=my-v4-32 --tpu_zone=us-central2-b.")
