"""Launch a config's sweep: `python -m launch --config=experiments/configs/pretrain.py:gpt_tiny
--module=experiments.pretrain --workdir=DIR --backend=local|slurm|tpu_vm`.

Expands the config file's get_sweep() into one job per override dict (launch/sweep.py), adds
every --override=KEY=VALUE to each job, and runs them here (local, then prints the results
table), or writes LAUNCH_DIR/launch_slurm.sh (an sbatch array) or LAUNCH_DIR/launch_tpu_vm.sh
(gcloud commands) and, with --submit, submits it. LAUNCH_DIR (--launch_dir) defaults to the
workdir. A cloud workdir (gs://...) is refused: jobs write with local file APIs, so mount the
bucket on every host (gcsfuse: /gcs/BUCKET/...) and give that path. Relative --config, --workdir and --launch_dir
are taken from the caller's directory (jobs run in the repository root, so they get absolute
paths; on tpu_vm a config inside this repository is given to the workers relative to
--tpu_repo_dir, and the workdir must be absolute). The module, the override keys,
node and GPU counts are checked before anything is written. `--dry_run` prints the commands
and the script and writes nothing; `--results` prints each job's status, final loss and time.
Jobs that --results shows running are not started again (`--force` does, for jobs gone unrecorded).
Examples:
  python -m launch --config=experiments/configs/pretrain.py:gpt_tiny --module=experiments.pretrain \\
      --workdir=/tmp/lr_sweep --backend=local --max_parallel=1 --override=config.train.num_steps=100
  python -m launch --config=experiments/configs/scaling_laws.py:cpu_tiny --module=experiments.scaling_laws \\
      --workdir=/shared/sweep --backend=slurm --slurm_gpus_per_node=8 --submit
  python -m launch --config=experiments/configs/pretrain.py:gpt_tiny --module=experiments.pretrain \\
      --workdir=/tmp/lr_sweep --results
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Sequence

from absl import app, flags

from launch import backends, results as results_lib
from launch.launch_dir import check_launch_dir, read_launched, record_launch_dir, record_launched
from launch.sweep import (Job, LaunchError, check_config_keys, check_module, expand, is_url, job_paths, load_sweep,
                          parse_overrides)

_CONFIG = flags.DEFINE_string("config", None, "Config file and preset whose get_sweep() to launch, path.py:arg.")
_MODULE = flags.DEFINE_string("module", None, "Entry point each job runs with python -m, e.g. experiments.pretrain.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Base directory; each job gets its own below it (unless shared).")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "slurm", "tpu_vm"], "Where the jobs run.")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "KEY=VALUE added to every job, e.g. "
                                      "config.train.num_steps=100 (repeat the flag for several).")
_LAUNCH_DIR = flags.DEFINE_string("launch_dir", None, "Where scripts, job logs and job status go (default: --workdir).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the jobs' commands and the script; run and write nothing.")
_RESULTS = flags.DEFINE_bool("results", False, "Print each job's status, final loss and time; run nothing.")
_SUBMIT = flags.DEFINE_bool("submit", False, "slurm / tpu_vm: also run sbatch / bash on the written script.")
_FORCE = flags.DEFINE_bool("force", False, "Run / submit although a job of this launch dir reads 'running' in "
                           "--results (a start and no exit record): for jobs the scheduler killed before they "
                           "could record their end.")
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
_TPU_REPO = flags.DEFINE_string("tpu_repo_dir", "~/research",
                                "tpu_vm: the repository's path on every worker (a leading ~ or $HOME is its home).")
flags.mark_flags_as_required(["config", "module", "workdir"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    try:
        _launch()
    except LaunchError as error:
        sys.exit(f"error: {error}")


def _launch() -> None:
    """Everything is checked and every script made before the first file is written."""
    backend, workdir = _BACKEND.value, _WORKDIR.value
    if is_url(workdir):  # every job would refuse it at its start (atomic_files.unwritable_reason)
        raise LaunchError(f"--workdir={workdir} is a cloud path, and the jobs write their runs with local file APIs; "
                          "mount the bucket on every host (e.g. gcsfuse at /gcs/BUCKET) and give that path.")
    if _LAUNCH_DIR.value is not None and not _LAUNCH_DIR.value.strip():  # else quietly the workdir
        raise LaunchError(f"--launch_dir={_LAUNCH_DIR.value!r} is empty (an unset shell variable?); give a "
                          "directory, or leave the flag out to keep scripts and logs in the workdir.")
    log_dir = _LAUNCH_DIR.value or workdir
    if is_url(log_dir):
        raise LaunchError(f"--launch_dir={log_dir} must be a local or shared-disk path (sbatch and bash read it).")
    # Paths are given relative to here, but jobs run in REPO (or on TPU workers): resolve them now.
    config, job_config, workdir = job_paths(_CONFIG.value, workdir, repo=REPO, remote=backend == "tpu_vm")
    log_dir = os.path.abspath(log_dir)
    if _MAX_PARALLEL.value < 1:
        raise LaunchError(f"--max_parallel={_MAX_PARALLEL.value} must be >= 1.")
    slurm_options = backends.SlurmOptions(
        job_name=workdir.rstrip("/").rsplit("/", 1)[-1] or "sweep", nodes=_SLURM_NODES.value,
        gpus_per_node=_SLURM_GPUS.value, time=_SLURM_TIME.value, partition=_SLURM_PARTITION.value,
        account=_SLURM_ACCOUNT.value, setup=_SETUP.value)
    tpu_vm_options = backends.TpuVmOptions(tpu_name=_TPU_NAME.value, zone=_TPU_ZONE.value, project=_TPU_PROJECT.value,
                                           repo_dir=_TPU_REPO.value, setup=_SETUP.value)
    if backend == "slurm":
        backends.check_slurm_options(slurm_options)
    elif backend == "tpu_vm":
        backends.check_tpu_vm_options(tpu_vm_options)
    check_module(_MODULE.value, REPO)
    check_launch_dir(log_dir, workdir)
    sweep = load_sweep(config)  # imports the config file: the first slow step
    overrides = parse_overrides(_OVERRIDE.value)
    check_config_keys(config, sorted({key for entry in sweep for key in entry if key.startswith("config.")}
                                     | set(overrides)), overrides, sweep)
    local = backend == "local"
    jobs = expand(sweep, module=_MODULE.value, config=job_config, workdir=workdir, overrides=overrides,
                  python=sys.executable if local else _PYTHON.value, launched=read_launched(log_dir))
    if _RESULTS.value:
        print(results_lib.format_table(results_lib.collect(jobs, log_dir)))
        return
    if not _DRY_RUN.value and (local or _SUBMIT.value):  # about to start jobs
        _check_none_running(jobs, log_dir)
    if local:
        if _DRY_RUN.value:
            print("\n".join(f"{job.name}: {job.command}" for job in jobs))
            print(f"(logs would go to {os.path.join(log_dir, 'launch_<job>.log')})")
            return
        record_launch_dir(log_dir, workdir)
        record_launched(log_dir, sweep, jobs)
        try:
            backends.run_local(jobs, cwd=REPO, log_dir=log_dir, max_parallel=_MAX_PARALLEL.value)
        except backends.Stopped as stop:
            print(results_lib.format_table(results_lib.collect(jobs, log_dir)))
            print(f"error: {stop}", file=sys.stderr)
            sys.exit(stop.exit_code)
        table = results_lib.collect(jobs, log_dir)
        print(results_lib.format_table(table))
        unfinished = [f"{r.name} ({r.status})" for r in table if r.status != "ok"]  # failed, or stopped on its own
        if unfinished:
            sys.exit(f"error: {len(unfinished)} of {len(jobs)} job(s) did not finish: {', '.join(unfinished)} "
                     f"(logs in {log_dir})")
        return
    if backend == "slurm":
        script = backends.slurm_script(jobs, slurm_options, cwd=REPO, log_dir=log_dir)
        submit = ["sbatch"]
    else:
        script = backends.tpu_vm_script(jobs, tpu_vm_options, log_dir=log_dir)
        submit = ["bash"]
    path = os.path.join(log_dir, f"launch_{backend}.sh")
    if _DRY_RUN.value:
        print(f"# {path} ({len(jobs)} jobs; not written: --dry_run)\n{script}", end="")
        return
    try:
        os.makedirs(log_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write(script)
    except OSError as error:
        raise LaunchError(f"cannot write {path}: {error.strerror}; pick a writable --launch_dir.") from None
    record_launch_dir(log_dir, workdir)
    record_launched(log_dir, sweep, jobs)
    print(f"wrote {path} ({len(jobs)} jobs)")
    if _SUBMIT.value:
        try:
            code = _run_passing_on_signals([*submit, path])
        except FileNotFoundError:
            raise LaunchError(f"--submit: {submit[0]} is not installed here; submit {path} where it is "
                              f"({submit[0]} {path}).") from None
        if code in results_lib.STOPPED_CODES:
            print(f"error: stopped (exit {code}): the running job's end is recorded and no later job started; "
                  "rerun the same command to continue.", file=sys.stderr)
            sys.exit(code)
        if code:
            what = "sbatch refused the script" if backend == "slurm" else "a job failed (see launch_status)"
            raise LaunchError(f"--submit: {submit[0]} {path} exited {code}: {what}; the script stays written.")


def _check_none_running(jobs: Sequence[Job], log_dir: str) -> None:
    """A LaunchError when a job of the sweep still runs from an earlier launch (what --results shows
    as running): a second submission of a slurm / tpu_vm sweep started a second set of job steps on
    the same workdirs (the local backend's lock covers local jobs only). A sweep whose jobs all
    ended is run again (each job resumes from its checkpoint). A job killed before it could record
    its end (SIGKILL past slurm's KillWait, a lost node) reads running for ever: --force skips this."""
    if _FORCE.value:
        return
    names = results_lib.running(jobs, log_dir)
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        status = os.path.join(log_dir, results_lib.STATUS_DIR)
        # "is still running from an earlier launch": the words of the local backend's lock refusal.
        raise LaunchError(f"{len(names)} job(s) of this sweep ({shown}): each is still running from an earlier "
                          f"launch (a start and no exit record in {status}); running it again would train its "
                          "workdir twice at once. Wait for it to end (--results; squeue for slurm), or add --force if "
                          "it is gone (killed without recording its end).")


def _run_passing_on_signals(argv: list[str]) -> int:
    """Run `argv` to its end. A Ctrl-C or SIGTERM is passed on to it, not raised here: raised,
    subprocess.run killed the tpu_vm script before its trap recorded the running job's end (a
    KeyboardInterrupt traceback, and the job 'running' in --results for ever). It runs in a
    session of its own and the signal goes to its whole group (the script and the gcloud command
    it waits on), once, as a terminal's Ctrl-C would reach them; sent to the script alone, bash
    would wait for gcloud's job to end before its trap ran."""
    process = subprocess.Popen(argv, start_new_session=True)

    def pass_on(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    app.run(main)
