"""Runs of a study trained by several worker processes at once, each on its own CPU cores.

A small model's step does not fill a CPU: XLA:CPU spreads its few small ops over the cores
with little gain (a scaling-ladder run of the cpu_tiny sweep took 34.2 s alone on two cores
and 44.8 s on one core while a second run used the other: two runs side by side finish in
1.39x less time than one after the other). A study of many small runs therefore trains
faster as N processes, each pinned to its share of the cores, taking runs from one list.

Which process trains which run is decided by claims: `claim(run_dir)` holds an exclusive
`flock` on a file in the run's directory for as long as the run trains. The kernel drops the
lock when its process dies, so a killed study rerun with the same command takes every
unfinished run up again and resumes it from its checkpoints. Workers die with their parent
(PR_SET_PDEATHSIG), so a killed study leaves no orphans training.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

CLAIM_FILE = ".claim"
_ABSL_LOG_LINE = re.compile(r"[IWE]\d{4} \d\d:\d\d:\d\d")  # library logging: in the log file, not echoed
MAX_AUTO_WORKERS = 8
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def claim(run_dir: str) -> Iterator[bool]:
    """Yields True while this process holds the run (nobody else trains it), False when another
    live process holds it. The claim ends with the block, or with the process."""
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(os.path.join(run_dir, CLAIM_FILE), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def auto_workers(platform: str, num_processes: int = 1) -> int:
    """Workers when the flag says 0: one per core (at most MAX_AUTO_WORKERS) on a single-process
    CPU host; one on accelerators (a run fills the device) and across hosts (one program)."""
    if platform != "cpu" or num_processes > 1:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


def worker_count(requested: int) -> int:
    """The --workers flag's value made real: 0 -> auto_workers for this host; a count the host
    cannot give is a ConfigError (one line)."""
    import jax

    from research.models.config import ConfigError

    if requested < 0:
        raise ConfigError(f"--workers={requested}: give the number of processes (>= 1), or 0 for one per core.")
    if requested == 0:
        return auto_workers(jax.default_backend(), jax.process_count())
    if requested > 1 and jax.process_count() > 1:
        raise ConfigError(f"--workers={requested} with {jax.process_count()} processes: a multi-host study trains "
                          "each run as one program over the hosts; use --workers=1.")
    cores = len(os.sched_getaffinity(0))
    if requested > cores:
        raise ConfigError(f"--workers={requested} is more than the {cores} cores this process may use; give at "
                          f"most {cores}.")
    return requested


def split_cores(cores: Sequence[int], workers: int) -> list[list[int]]:
    """`workers` disjoint, contiguous, near-equal slices of `cores` (sorted)."""
    cores = sorted(cores)
    if not 1 <= workers <= len(cores):
        raise ValueError(f"workers={workers}: this process may use {len(cores)} cores; give 1 to {len(cores)} "
                         "workers (or 0 for one per core).")
    bounds = [round(i * len(cores) / workers) for i in range(workers + 1)]
    return [cores[bounds[i]:bounds[i + 1]] for i in range(workers)]


def peak_shares(peak_flops: float, workers: int) -> list[float]:
    """Each worker's peak FLOP/s: `peak_flops` (measured on all of this process's cores) times the
    share of the cores run_workers pins it to. A worker told the whole host's peak logged its MFU
    against cores it never had (about 1/workers of the truth) and sized its blocks from it."""
    slices = split_cores(list(os.sched_getaffinity(0)), workers)
    total = sum(map(len, slices))
    return [peak_flops * len(cores) / total for cores in slices]


_CORES_ENV = "RESEARCH_WORKER_CORES"
_PARENT_ENV = "RESEARCH_WORKER_PARENT"


def become_worker() -> None:
    """In a process started by run_workers, before JAX starts (XLA sizes its thread pools from
    the cores it may use): pin to the cores given, and die with the parent. Set here rather
    than between fork and exec, which is unsafe in a multithreaded parent such as JAX's."""
    cores, parent = os.environ.pop(_CORES_ENV, ""), os.environ.pop(_PARENT_ENV, "")
    if cores:
        os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
    if parent:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != int(parent):  # the parent died before the signal was set
            os._exit(1)


class Stopped(Exception):
    """run_workers(forward_signals=True) got Ctrl-C / SIGTERM and its workers have exited."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(f"stopped by {signal_name}: the workers saved their runs' checkpoints; rerun the same "
                         "command to continue.")

    @property
    def exit_code(self) -> int:
        from research.early_interrupts import signal_exit_code  # free of JAX, unlike preemption
        return signal_exit_code(self.signal_name)


def run_workers(argvs: Sequence[Sequence[str]], *, log_dir: str, poll: Callable[[], None] = lambda: None,
                poll_seconds: float = 2.0, forward_signals: bool = False) -> list[int]:
    """Start one process per argv (each pinned to its slice of this process's cores once it calls
    become_worker(); output in log_dir/worker-<i>.log), call poll() every poll_seconds until all have exited, and return
    their exit codes. When one fails, the others are stopped (a config mistake fails them all
    alike; a run's own failure is recorded by the run, not by the exit code).

    forward_signals=True (main thread only): a first Ctrl-C / SIGTERM of this process is passed on
    to the workers as SIGTERM (their training loops save a checkpoint and stop; SIGTERM, not the
    signal itself: a terminal's Ctrl-C already reached them, and a second SIGINT would make them
    stop without saving), this process waits for them and raises Stopped; a second Ctrl-C kills them."""
    os.makedirs(log_dir, exist_ok=True)
    slices = split_cores(list(os.sched_getaffinity(0)), len(argvs))
    processes = []
    codes = ExitCodes()
    received: list[str] = []

    def forward(signum: int, frame: object) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the finally below kills the workers
        if not received:
            received.append(signal.Signals(signum).name)
            for p, _ in processes:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)

    previous = {}
    if forward_signals and threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index, (argv, cores) in enumerate(zip(argvs, slices)):
            log = open(os.path.join(log_dir, f"worker-{index}.log"), "w")
            env = {**os.environ, _CORES_ENV: ",".join(map(str, cores)), _PARENT_ENV: str(os.getpid())}
            processes.append((subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env), log))
            if received:  # a signal came while the workers were being started: this one stops too
                processes[-1][0].send_signal(signal.SIGTERM)
        # Every worker polled each round: any() stopped at the first live one, so a later worker's
        # failure went unseen while worker 0 trained on (for the rest of the study).
        while None in [p.poll() for p, _ in processes]:
            failed = [i for i, (p, _) in enumerate(processes) if p.returncode not in (None, 0)]
            if failed and codes.first_failed is None:
                codes.first_failed = failed[0]
                for p, _ in processes:
                    if p.poll() is None:
                        p.terminate()
            time.sleep(poll_seconds)
            poll()
    finally:
        for p, log in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
            log.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    poll()
    if received:
        raise Stopped(received[0])
    codes.extend(p.returncode for p, _ in processes)
    return codes


class ExitCodes(list):
    """run_workers' exit codes, one per worker; first_failed: the worker whose failure stopped the
    others (they then exit -15), None when none failed while others ran."""
    first_failed: int | None = None


def failure_line(codes: Sequence[int], log_dir: str) -> str | None:
    """'worker i exited with code c' (or 'was killed by SIGKILL'), the end of its log and the log's
    path, for the worker that failed first (ExitCodes.first_failed, else the first non-zero code);
    None when every worker exited 0."""
    index = getattr(codes, "first_failed", None)
    if index is None:
        index = next((i for i, code in enumerate(codes) if code), None)
    if index is None:
        return None
    code, log = codes[index], os.path.join(log_dir, f"worker-{index}.log")
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else \
        f"exited with code {code}"
    return f"worker {index} {how}; its log ends: {last_lines(log, 1) or '(empty log)'} (whole log: {log})"


def log_echo(log_dir: str, count: int, out: Callable[[str], None] = print) -> Callable[[], None]:
    """A poll() for run_workers that prints each worker's new complete log lines, prefixed with
    its index, as they come (progress bars' carriage-return updates and absl's logging lines
    are left out: they stay in the log files)."""
    offsets = [0] * count

    def echo() -> None:
        for index in range(count):
            path = os.path.join(log_dir, f"worker-{index}.log")
            if not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                f.seek(offsets[index])
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            offsets[index] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                line = line.rsplit("\r", 1)[-1].strip()
                if line and not _ABSL_LOG_LINE.match(line):
                    out(f"[worker {index}] {line}")
    return echo


def last_lines(path: str, count: int = 5) -> str:
    """The last non-empty lines of a worker's log (its error, when it failed), leaving out
    libraries' info and warning lines (a killed worker's last line is often one of those) and
    progress bars (a bar drawn after the error line once hid it). With count=1, the worker's
    last 'error: ...' line when it printed one, also one printed (on stderr) onto the end of a
    bar's line on stdout, with no newline between them."""
    with open(path, errors="replace") as f:
        text = f.read().replace("\r", "\n")
    if count == 1:
        # "error: " where a line starts or right after a bar's last character ("]"): not the
        # word inside some other message
        errors = list(re.finditer(r"(?:^|(?<=\]))error: [^\n]*", text, re.MULTILINE))
        if errors:
            return errors[-1].group(0).rstrip()
    lines = [line.rstrip() for line in text.splitlines()
             if line.strip() and not re.match(r"[IW]\d{4} \d\d:\d\d:\d\d", line)
             and not re.search(r"\d+%\|", line)]
    return "\n".join(lines[-count:])


def worker_argv(module: str, args: Sequence[str], *extra: str) -> list[str]:
    """`python -m module *args *extra`: the user's command again, with flags for one worker
    (absl reads flags in order, so a later --config.x=... overrides an earlier one)."""
    return [sys.executable, "-m", module, *args, *extra]
