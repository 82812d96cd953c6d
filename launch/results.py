"""A sweep's results: each job's status, final loss and time, as one table.

Every backend records a job's start and end in <log_dir>/launch_status/<job name>.json
(local: this process; slurm: the array task's shell; tpu_vm: the script running the gcloud
commands), so the table reads the same whichever backend ran the sweep. The final loss is
the last record of the job's <workdir>/metrics.jsonl (research.training.metrics), read with
etils.epath (the CLI refuses gs:// workdirs, as every job would; a mounted bucket is a local path).

    python -m launch --config=... --module=... --workdir=DIR --results   # on demand
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import time
from typing import Any, Sequence

from etils import epath

from launch.sweep import Job

STATUS_DIR = "launch_status"
METRICS_FILE = "metrics.jsonl"  # research.training.metrics.METRICS_FILE (not imported: it pulls in jax)
# Exit codes of a job a Ctrl-C (130) or SIGTERM (143) stopped: it saved and resumes on a relaunch.
STOPPED_CODES = (130, 143)


def status_path(log_dir: str, name: str) -> str:
    return os.path.join(log_dir, STATUS_DIR, f"{name}.json")


def lock_path(log_dir: str, name: str) -> str:
    """The file a running job's flock is held on (launch.backends, local backend)."""
    return os.path.join(log_dir, STATUS_DIR, f"{name}.lock")


def _lock_free(path: str) -> bool:
    """True when the local backend's lock file of a job exists and nobody holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def record_start(log_dir: str, name: str, start: float | None = None) -> None:
    """The local backend's start record. "backend" tells collect() that this job holds the lock
    (launch.backends writes "slurm" / "tpu_vm" in its scripts' records, whose jobs hold none)."""
    _write_status(log_dir, name, {"name": name, "start": time.time() if start is None else start,
                                  "backend": "local"})


def record_end(log_dir: str, name: str, start: float, returncode: int, end: float | None = None) -> None:
    _write_status(log_dir, name, {"name": name, "start": start, "end": time.time() if end is None else end,
                                  "returncode": returncode})


def _write_status(log_dir: str, name: str, record: dict[str, Any]) -> None:
    path = status_path(log_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)  # a reader never sees half a record


def read_status(log_dir: str, name: str) -> dict[str, Any] | None:
    try:
        with open(status_path(log_dir, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def final_metrics(workdir: str) -> dict[str, Any]:
    """The last step and the last logged train loss / eval loss of a run ({} when it logged none)."""
    try:
        lines = epath.Path(workdir, METRICS_FILE).read_text().splitlines()
    except Exception:  # missing file, or a cloud file system this machine cannot read
        return {}
    final: dict[str, Any] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed job
        for key in ("step", "loss", "eval_loss"):
            if key in record:
                final[key] = record[key]
    return final


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)  # json reads NaN / Infinity as floats


@dataclasses.dataclass(frozen=True)
class JobResult:
    name: str
    status: str  # "ok", "failed (exit N)", "stopped (exit 130 / 143)", "diverged (exit N)", "running",
    # "killed (...)", "not started"
    seconds: float | None
    step: int | None
    loss: float | None
    eval_loss: float | None


def _unended_status(log_dir: str, name: str, record: dict[str, Any]) -> str:
    """"running" or "killed (no exit recorded)": the status of a job that recorded its start only."""
    # A record without "backend" predates it: only the local backend then checked the lock.
    if record.get("backend", "local") == "local" and _lock_free(lock_path(log_dir, name)):
        # Its launcher and the job are gone (a SIGKILL, a lost machine) without recording an end:
        # it showed "running" for ever. A slurm or tpu_vm job holds no such lock, so the free
        # .lock an earlier local run of the sweep left says nothing about it.
        return "killed (no exit recorded)"
    return "running"


def running(jobs: Sequence[Job], log_dir: str) -> list[str]:
    """The names of the jobs collect() calls "running" (without reading their metrics files):
    a local job holding its lock, or a slurm / tpu_vm job with a start and no end record."""
    records = [(job.name, read_status(log_dir, job.name)) for job in jobs]
    return [name for name, record in records
            if record is not None and "end" not in record and _unended_status(log_dir, name, record) == "running"]


def collect(jobs: Sequence[Job], log_dir: str, now: float | None = None) -> list[JobResult]:
    """Each job's result from its status record and its metrics file."""
    now = time.time() if now is None else now
    results = []
    for job in jobs:
        record = read_status(log_dir, job.name)
        final = final_metrics(job.workdir)
        if record is None:
            status, seconds = "not started", None
        elif "end" not in record:
            status, seconds = _unended_status(log_dir, job.name, record), now - record["start"]
        else:
            code = record["returncode"]
            status = "ok" if code == 0 else f"stopped (exit {code})" if code in STOPPED_CODES else f"failed (exit {code})"
            if any(_not_finite(final.get(key)) for key in ("loss", "eval_loss")):
                # Its last loss is NaN / Inf: whatever its exit code, it diverged (it read "ok").
                status = f"diverged (exit {code})"
            seconds = record["end"] - record["start"]
        results.append(JobResult(job.name, status, seconds, final.get("step"), final.get("loss"),
                                 final.get("eval_loss")))
    return results


def format_table(results: Sequence[JobResult]) -> str:
    """A fixed-width table, one row per job, and a count of statuses."""
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)  # nan / inf as such: "-" is "not logged"

    def duration(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        minutes, secs = divmod(int(round(seconds)), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}"

    header = ("job", "status", "time", "step", "loss", "eval_loss")
    rows = [(r.name, r.status, duration(r.seconds), "-" if r.step is None else str(r.step), number(r.loss, ".4f"),
             number(r.eval_loss, ".4f")) for r in results]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    counts: dict[str, int] = {}
    for r in results:
        key = r.status.split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(lines)
