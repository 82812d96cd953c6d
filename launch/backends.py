"""Where jobs run: `local` (subprocesses here), `slurm` (an sbatch array script), `tpu_vm` (gcloud commands).

Every backend takes the Jobs of launch/sweep.py. `local` runs them now; `slurm` and `tpu_vm`
return a script that `python -m launch` writes into the log directory (and, with --submit,
hands to sbatch / bash), so what would run can be read first. Every backend records each
job's start and end under <log_dir>/launch_status (launch/results.py reads them).
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

from launch import results as results_lib
from launch.sweep import Job, LaunchError


@dataclasses.dataclass(frozen=True)
class LocalResult:
    job: Job
    returncode: int
    seconds: float
    log: str  # path of the job's stdout + stderr


# launch.multihost reads it: a job started by run_local gets SIGTERM (saves and stops) when the
# launcher dies, even by SIGKILL, instead of training on with nobody to record its end.
PARENT_ENV = "LAUNCH_PARENT_PID"


class Stopped(Exception):
    """run_local got Ctrl-C / SIGTERM: it passed the signal on to the running jobs (their training
    loops save a checkpoint and stop), waited for them and started no more."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(f"stopped by {signal_name}: the running jobs saved their checkpoints; rerun the same "
                         "command to continue (finished jobs are not retrained).")

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signal_name))


def _lock_jobs(jobs: Sequence[Job], log_dir: str) -> dict[str, int]:
    """An exclusive flock per job (<log_dir>/launch_status/<name>.lock), held by this process and
    then by the job's process, so a second launch of the sweep, while a job of the first still
    runs (its launcher killed, the job saving), cannot train the same workdir beside it."""
    locks: dict[str, int] = {}
    try:
        for job in jobs:
            path = results_lib.lock_path(log_dir, job.name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            locks[job.name] = fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LaunchError(f"job {job.name!r} is still running from an earlier launch (it holds {path}); "
                                  f"wait for it to end, or stop it, then launch again.") from None
    except BaseException:
        for fd in locks.values():
            os.close(fd)
        raise
    return locks


def run_local(jobs: Sequence[Job], *, cwd: str, log_dir: str, max_parallel: int = 1,
              out: TextIO = sys.stdout) -> list[LocalResult]:
    """Run the jobs as subprocesses of this machine, at most `max_parallel` at once; each
    job's output goes to <log_dir>/launch_<name>.log (appended; the job makes its own workdir).

    A Ctrl-C or SIGTERM of this process (main thread) is passed on to the running jobs, once
    (each job runs in a session of its own, so a terminal's Ctrl-C reaches it only this way;
    a second Ctrl-C is passed on again: the jobs then stop without saving); no further job
    starts, the running ones are waited for and recorded, and Stopped is raised. A job still
    running from an earlier launch is refused before anything starts (_lock_jobs)."""
    if max_parallel < 1:
        raise LaunchError(f"--max_parallel={max_parallel} must be >= 1.")
    os.makedirs(log_dir, exist_ok=True)
    locks = _lock_jobs(jobs, log_dir)
    pending, running, results = list(jobs), [], []
    received: list[int] = []
    signalled: set[int] = set()  # pids given the first signal

    def pass_on(process: subprocess.Popen) -> None:
        if process.poll() is None and (process.pid not in signalled or len(received) > 1):
            signalled.add(process.pid)
            process.send_signal(received[-1])

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        for entry in running:
            pass_on(entry[1])

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (pending and not received):
            while pending and not received and len(running) < max_parallel:
                job = pending.pop(0)
                log_path = os.path.join(log_dir, f"launch_{job.name}.log")
                log = open(log_path, "a")
                print(f"start {job.name}: {job.command}", file=out, flush=True)
                start = time.time()
                results_lib.record_start(log_dir, job.name, start)
                process = subprocess.Popen(job.argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, pass_fds=(locks[job.name],),
                                           env={**os.environ, PARENT_ENV: str(os.getpid())})
                running.append((job, process, log, log_path, start))
                if received:  # the signal came while it was starting
                    pass_on(process)
            for entry in list(running):
                job, process, log, log_path, start = entry
                if process.poll() is not None:
                    log.close()
                    running.remove(entry)
                    end = time.time()
                    # Killed by a signal before it could handle one (a stop in its first moments):
                    # the shell's 128 + N, so a SIGTERM / Ctrl-C reads as stopped, not as failed.
                    code = process.returncode if process.returncode >= 0 else 128 - process.returncode
                    results_lib.record_end(log_dir, job.name, start, code, end)
                    results.append(LocalResult(job, code, end - start, log_path))
                    print(f"done {job.name}: {_ending(code, log_path)}", file=out, flush=True)
            time.sleep(0.05)
    finally:
        for job, process, *_ in running:  # only when something went wrong here: leave no job behind
            process.terminate()
            process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for fd in locks.values():
            os.close(fd)
    if received:
        raise Stopped(signal.Signals(received[0]).name)
    order = {job.name: i for i, job in enumerate(jobs)}
    return sorted(results, key=lambda r: order[r.job.name])


def _ending(returncode: int, log_path: str) -> str:
    if returncode == 0:
        return "ok"
    if returncode in results_lib.STOPPED_CODES:
        return f"stopped (exit {returncode}; its last checkpoint is kept)"
    return f"FAILED (exit {returncode}; see {log_path})"


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


def check_slurm_options(options: SlurmOptions) -> None:
    """Counts and the time limit as sbatch would read them; one line per mistake, before any file."""
    if options.nodes < 1:
        raise LaunchError(f"--slurm_nodes={options.nodes} must be >= 1 (nodes per job, one JAX process each).")
    if options.gpus_per_node < 0:
        raise LaunchError(f"--slurm_gpus_per_node={options.gpus_per_node} must be >= 0 (0 = CPU-only nodes).")
    if options.cpus_per_task < 1:
        raise LaunchError(f"cpus_per_task={options.cpus_per_task} must be >= 1.")
    if options.max_concurrent < 0:
        raise LaunchError(f"max_concurrent={options.max_concurrent} must be >= 0 (0 = no limit).")
    # sbatch --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, and no limit (UNLIMITED / INFINITE).
    if not re.fullmatch(r"(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|UNLIMITED|INFINITE)", options.time):
        raise LaunchError(f"--slurm_time={options.time!r} is not a SLURM time; use e.g. 24:00:00, 90 (minutes) "
                          "or 2-00:00:00.")
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", options.job_name):
        raise LaunchError(f"slurm job name {options.job_name!r} (the workdir's last part) holds characters sbatch "
                          "may reject; use letters, digits and _.+-.")


def slurm_script(jobs: Sequence[Job], options: SlurmOptions, *, cwd: str, log_dir: str) -> str:
    """An sbatch script that runs job i as array task i, with srun starting one process per node.

    The task's shell records the job's start and exit status under <log_dir>/launch_status
    (the same records the local backend writes), so `--results` can tell how each job ended.
    """
    if not jobs:
        raise LaunchError("no jobs to launch; get_sweep() returned an empty list.")
    check_slurm_options(options)
    throttle = f"%{options.max_concurrent}" if options.max_concurrent else ""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={options.job_name}", f"#SBATCH --array=0-{len(jobs) - 1}{throttle}",
             f"#SBATCH --nodes={options.nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={options.cpus_per_task}", f"#SBATCH --time={options.time}",
             f"#SBATCH --output={_sbatch_quoted(os.path.join(log_dir, '%x_%A_%a.log'))}"]
    if options.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={options.gpus_per_node}")
    lines += [f"#SBATCH --{key}={value}" for key, value in (("partition", options.partition),
                                                            ("account", options.account)) if value]
    lines += ["set -euo pipefail", f"cd {shlex.quote(cwd)}"]
    if options.setup:
        lines.append(options.setup)
    lines.append("JOBS=(")
    lines += [f"  {shlex.quote(job.command)}  # {job.name}" for job in jobs]
    lines += [")", "NAMES=(" + " ".join(job.name for job in jobs) + ")",
              *_status_functions(log_dir, "slurm"),
              'NAME="${NAMES[$SLURM_ARRAY_TASK_ID]}"', 'START=$(date +%s)', 'record_start "$NAME" "$START"',
              "# launch.multihost joins jax.distributed on every node (SLURM_NTASKS > 1).",
              "# scancel, the time limit and preemption send SIGTERM to this shell too: the trap keeps it",
              "# alive until srun returns (the job saving), so the job's end is recorded.",
              _STOP_TRAP,
              "# Since Slurm 22.05 srun does not take --cpus-per-task from sbatch: without this each",
              "# job would be confined to one core of its allocation.",
              f'export SRUN_CPUS_PER_TASK="${{SLURM_CPUS_PER_TASK:-{options.cpus_per_task}}}"',
              'set +e', 'srun bash -c "${JOBS[$SLURM_ARRAY_TASK_ID]}"', 'CODE=$?', 'set -e',
              'record_end "$NAME" "$START" "$CODE"', 'exit "$CODE"', ""]
    return "\n".join(lines)


def _sbatch_quoted(path: str) -> str:
    """`path` for an #SBATCH line: sbatch splits a directive's value at unquoted whitespace and
    drops it from an unquoted #, so a launch dir "my sweeps" gave the option "/x/my" (its logs
    lost). Double quotes with \\" escapes read back intact; a backslash would also switch off
    the %x/%A/%a of the file name, and a newline ends the directive: refused."""
    if "\\" in path or "\n" in path:
        raise LaunchError(f"--launch_dir path {path!r} holds a backslash or newline, which an #SBATCH --output line "
                          "cannot carry; pick a launch dir without them.")
    return '"' + path.replace('"', '\\"') + '"'


# A handler, not `trap '' TERM`: an ignored signal stays ignored in the children, which then
# could not be stopped. Bash runs it once the foreground command (the job) has returned.
_STOP_TRAP = "trap 'STOPPED=1' TERM INT"


def _status_functions(log_dir: str, backend: str) -> list[str]:
    """Shell functions writing launch/results.py's status records (JSON; names are [A-Za-z0-9_.=,+-]).
    The start record names the backend: its job holds no lock, so results.collect must not read a
    free .lock an earlier local run of the sweep left as this job's death."""
    status = shlex.quote(os.path.join(log_dir, results_lib.STATUS_DIR))
    return [f"STATUS_DIR={status}", 'mkdir -p "$STATUS_DIR"',
            'record_start() { printf \'{"name": "%s", "start": %s, "backend": "' + backend + '"}\\n\' "$1" "$2" '
            '> "$STATUS_DIR/$1.json"; }',
            'record_end() { printf \'{"name": "%s", "start": %s, "end": %s, "returncode": %s}\\n\' '
            '"$1" "$2" "$(date +%s)" "$3" > "$STATUS_DIR/$1.json"; }']


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuVmOptions:
    """The TPU VM (a single host or a multi-host slice) that runs the jobs, one after another."""

    tpu_name: str
    zone: str
    project: str = ""
    repo_dir: str = "~/research"  # where the repository is checked out on every worker
    setup: str = ""  # run on every worker before each job, e.g. "source ~/venv/bin/activate"


def check_tpu_vm_options(options: TpuVmOptions) -> None:
    if not options.tpu_name or not options.zone:
        raise LaunchError("tpu_vm needs --tpu_name and --tpu_zone, e.g. --tpu_name=my-v4-32 --tpu_zone=us-central2-b.")
    if not options.repo_dir:
        raise LaunchError("--tpu_repo_dir is empty; give the repository's path on every worker, e.g. ~/research.")


def _remote_path(path: str) -> str:
    """`path` quoted for the worker's shell (a space would split it), with a leading ~, ~user
    or $HOME left unquoted so that the worker expands it to its own home."""
    match = re.fullmatch(r"(~[A-Za-z0-9._-]*|\$HOME|\$\{HOME\})(?:/(.*))?", path, flags=re.DOTALL)
    if not match:
        return shlex.quote(path)
    home, rest = match.groups()
    return home if rest is None else f"{home}/{shlex.quote(rest) if rest else ''}"


def tpu_vm_script(jobs: Sequence[Job], options: TpuVmOptions, *, log_dir: str) -> str:
    """A bash script of gcloud commands: each job runs on every worker of the slice at once
    (--worker=all), as multi-host JAX needs; the jobs run one after another, a failed job
    does not stop the rest, and the script exits non-zero if any failed."""
    check_tpu_vm_options(options)
    project = f" --project={shlex.quote(options.project)}" if options.project else ""
    # A Ctrl-C / SIGTERM: the running job's end is recorded, and no later job starts.
    lines = ["#!/bin/bash", "set -uo pipefail", *_status_functions(log_dir, "tpu_vm"), "FAILED=0", "STOPPED=",
             _STOP_TRAP,
             'run_job() { local name=$1 start code; shift; start=$(date +%s); record_start "$name" "$start"; '
             '"$@"; code=$?; record_end "$name" "$start" "$code"; [ "$code" = 0 ] || FAILED=1; '
             '[ -z "$STOPPED" ] || exit "$code"; }']
    for job in jobs:
        # Lines, not "setup && command": a # comment in --setup hid the command (nothing ran,
        # recorded "ok"). set -e stops the job where the cd or a setup line fails, as on slurm.
        remote = "\n".join(part for part in ("set -e", f"cd {_remote_path(options.repo_dir)}", options.setup,
                                              job.command) if part)
        lines += [f"# {job.name}", f"run_job {job.name} gcloud compute tpus tpu-vm ssh {shlex.quote(options.tpu_name)} "
                  f"--zone={shlex.quote(options.zone)}{project} --worker=all --command={shlex.quote(remote)}"]
    lines.append('exit "$FAILED"')
    return "\n".join(lines) + "\n"
