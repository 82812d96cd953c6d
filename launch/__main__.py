"""Launch a config's sweep: `python -m launch --config=experiments/configs/pretrain.py:gpt_tiny
--module=experiments.pretrain --workdir=DIR --backend=local|slurm|tpu_vm`.

Expands the config file's get_sweep() into one job per override dict (launch/sweep.py) and
runs them here (local), or writes DIR/launch_slurm.sh (an sbatch array) or DIR/launch_tpu_vm.sh
(gcloud commands) and, with --submit, submits it. `--dry_run` prints the commands only.
Examples:
  python -m launch --config=experiments/configs/pretrain.py:gpt_tiny --module=experiments.pretrain \\
      --workdir=/tmp/lr_sweep --backend=local --max_parallel=1
  python -m launch --config=experiments/configs/scaling_laws.py:cpu_tiny --module=experiments.scaling_laws \\
      --workdir=/shared/sweep --backend=slurm --slurm_gpus_per_node=8 --submit
"""
from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags

from launch import backends
from launch.sweep import LaunchError, expand, load_sweep

_CONFIG = flags.DEFINE_string("config", None, "Config file and preset whose get_sweep() to launch, path.py:arg.")
_MODULE = flags.DEFINE_string("module", None, "Entry point each job runs with python -m, e.g. experiments.pretrain.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Base directory; each job gets its own below it (unless shared).")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "slurm", "tpu_vm"], "Where the jobs run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the jobs' commands; run and write nothing.")
_SUBMIT = flags.DEFINE_bool("submit", False, "slurm / tpu_vm: also run sbatch / bash on the written script.")
_MAX_PARALLEL = flags.DEFINE_integer("max_parallel", 1, "local: jobs running at once.")
_PYTHON = flags.DEFINE_string("python", "python", "slurm / tpu_vm: the remote Python (local uses this one's).")
_SLURM_NODES = flags.DEFINE_integer("slurm_nodes", 1, "slurm: nodes per job (one JAX process each).")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus_per_node", 0, "slurm: GPUs per node.")
_SLURM_TIME = flags.DEFINE_string("slurm_time", "24:00:00", "slurm: time limit per job.")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", "", "slurm: partition.")
_SLURM_ACCOUNT = flags.DEFINE_string("slurm_account", "", "slurm: account.")
_SETUP = flags.DEFINE_string("setup", "", "slurm / tpu_vm: shell run before each job, e.g. 'source venv/bin/activate'.")
_TPU_NAME = flags.DEFINE_string("tpu_name", "", "tpu_vm: the TPU VM's name.")
_TPU_ZONE = flags.DEFINE_string("tpu_zone", "", "tpu_vm: its zone.")
_TPU_PROJECT = flags.DEFINE_string("tpu_project", "", "tpu_vm: its project (default: gcloud's).")
_TPU_REPO = flags.DEFINE_string("tpu_repo_dir", "~/research", "tpu_vm: the repository's path on every worker.")
flags.mark_flags_as_required(["config", "module", "workdir"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    try:
        local = _BACKEND.value == "local"
        jobs = expand(load_sweep(_CONFIG.value), module=_MODULE.value, config=_CONFIG.value, workdir=_WORKDIR.value,
                      python=sys.executable if local else _PYTHON.value)
        if _DRY_RUN.value:
            print("\n".join(f"{job.name}: {job.command}" for job in jobs))
            return
        if local:
            results = backends.run_local(jobs, cwd=REPO, max_parallel=_MAX_PARALLEL.value)
            failed = [r.job.name for r in results if r.returncode]
            if failed:
                sys.exit(f"error: {len(failed)} of {len(jobs)} job(s) failed: {', '.join(failed)}")
            return
        if _BACKEND.value == "slurm":
            script = backends.slurm_script(jobs, backends.SlurmOptions(
                job_name=os.path.basename(os.path.normpath(_WORKDIR.value)) or "sweep", nodes=_SLURM_NODES.value,
                gpus_per_node=_SLURM_GPUS.value, time=_SLURM_TIME.value, partition=_SLURM_PARTITION.value,
                account=_SLURM_ACCOUNT.value, setup=_SETUP.value), cwd=REPO, log_dir=_WORKDIR.value)
            submit = ["sbatch"]
        else:
            script = backends.tpu_vm_script(jobs, backends.TpuVmOptions(
                tpu_name=_TPU_NAME.value, zone=_TPU_ZONE.value, project=_TPU_PROJECT.value,
                repo_dir=_TPU_REPO.value, setup=_SETUP.value))
            submit = ["bash"]
    except LaunchError as error:
        sys.exit(f"error: {error}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    path = os.path.join(_WORKDIR.value, f"launch_{_BACKEND.value}.sh")
    with open(path, "w") as f:
        f.write(script)
    print(f"wrote {path} ({len(jobs)} jobs)")
    if _SUBMIT.value:
        subprocess.run([*submit, path], check=True)


if __name__ == "__main__":
    app.run(main)
