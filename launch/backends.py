"""Where jobs run: `local` (subprocesses here), `slurm` (an sbatch array script), `tpu_vm` (gcloud commands).

Every backend takes the Jobs of launch/sweep.py. `local` runs them now; `slurm` and `tpu_vm`
write a script into the sweep's workdir and return its path (`python -m launch --submit`
also hands it to sbatch / bash), so what would run can be read first.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from typing import Sequence, TextIO

from launch.sweep import Job, LaunchError


@dataclasses.dataclass(frozen=True)
class LocalResult:
    job: Job
    returncode: int
    seconds: float
    log: str  # path of the job's stdout + stderr


def run_local(jobs: Sequence[Job], *, cwd: str, max_parallel: int = 1, out: TextIO = sys.stdout) -> list[LocalResult]:
    """Run the jobs as subprocesses of this machine, at most `max_parallel` at once; each
    job's output goes to <its workdir>/launch.log (one file per job, appended)."""
    if max_parallel < 1:
        raise LaunchError(f"--max_parallel={max_parallel} must be >= 1.")
    pending, running, results = list(jobs), [], []
    while pending or running:
        while pending and len(running) < max_parallel:
            job = pending.pop(0)
            os.makedirs(job.workdir, exist_ok=True)
            log_path = os.path.join(job.workdir, f"launch_{job.name}.log")
            log = open(log_path, "a")
            print(f"start {job.name}: {job.command}", file=out, flush=True)
            process = subprocess.Popen(job.argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
            running.append((job, process, log, log_path, time.perf_counter()))
        for entry in list(running):
            job, process, log, log_path, start = entry
            if process.poll() is not None:
                log.close()
                running.remove(entry)
                results.append(LocalResult(job, process.returncode, time.perf_counter() - start, log_path))
                status = "ok" if process.returncode == 0 else f"FAILED (exit {process.returncode}; see {log_path})"
                print(f"done {job.name}: {status}", file=out, flush=True)
        time.sleep(0.05)
    order = {job.name: i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r.job.name])


@dataclasses.dataclass(frozen=True, kw_only=True)
class SlurmOptions:
    """Resources of each array task (one task per node: one JAX process per host)."""

    job_name: str = "sweep"
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 8
    time: str = "24:00:00"
    partition: str = ""
    account: str = ""
    max_concurrent: int = 0  # array throttle (%N); 0 = no limit
    setup: str = ""  # shell lines run first in every task, e.g. "source .venv/bin/activate"


def slurm_script(jobs: Sequence[Job], options: SlurmOptions, *, cwd: str, log_dir: str) -> str:
    """An sbatch script that runs job i as array task i, with srun starting one process per node."""
    if not jobs:
        raise LaunchError("no jobs to launch; get_sweep() returned an empty list.")
    throttle = f"%{options.max_concurrent}" if options.max_concurrent else ""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={options.job_name}", f"#SBATCH --array=0-{len(jobs) - 1}{throttle}",
             f"#SBATCH --nodes={options.nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={options.cpus_per_task}", f"#SBATCH --time={options.time}",
             f"#SBATCH --output={os.path.join(log_dir, '%x_%A_%a.log')}"]
    if options.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={options.gpus_per_node}")
    lines += [f"#SBATCH --{key}={value}" for key, value in (("partition", options.partition),
                                                            ("account", options.account)) if value]
    lines += ["set -euo pipefail", f"cd {shlex.quote(cwd)}"]
    if options.setup:
        lines.append(options.setup)
    lines.append("JOBS=(")
    lines += [f"  {shlex.quote(job.command)}  # {job.name}" for job in jobs]
    lines += [")", "# launch.multihost joins jax.distributed on every node (SLURM_NTASKS > 1).",
              'srun bash -c "${JOBS[$SLURM_ARRAY_TASK_ID]}"', ""]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuVmOptions:
    """The TPU VM (a single host or a multi-host slice) that runs the jobs, one after another."""

    tpu_name: str
    zone: str
    project: str = ""
    repo_dir: str = "~/research"  # where the repository is checked out on every worker
    setup: str = ""  # run on every worker before each job, e.g. "source ~/venv/bin/activate"


def tpu_vm_script(jobs: Sequence[Job], options: TpuVmOptions) -> str:
    """A bash script of gcloud commands: each job runs on every worker of the slice at once
    (--worker=all), as multi-host JAX needs; the jobs run one after another."""
    if not options.tpu_name or not options.zone:
        raise LaunchError("tpu_vm needs --tpu_name and --tpu_zone, e.g. --tpu_name=my-v4-32 --tpu_zone=us-central2-b.")
    project = f" --project={shlex.quote(options.project)}" if options.project else ""
    lines = ["#!/bin/bash", "set -euo pipefail"]
    for job in jobs:
        remote = " && ".join(part for part in (f"cd {options.repo_dir}", options.setup, job.command) if part)
        lines += [f"# {job.name}", f"gcloud compute tpus tpu-vm ssh {shlex.quote(options.tpu_name)} "
                  f"--zone={shlex.quote(options.zone)}{project} --worker=all --command={shlex.quote(remote)}"]
    return "\n".join(lines) + "\n"
