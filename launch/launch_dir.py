"""What a launch dir keeps beside the jobs' logs and status (launch/results.py): the names earlier
launches gave the sweep's jobs, and which sweep (base workdir) it belongs to.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from launch.sweep import Job, LaunchError, exact_overrides


LAUNCHED_FILE = "launch_jobs.json"  # in the launch dir: {exact overrides: default name} of every job launched


def read_launched(log_dir: str) -> dict[str, str]:
    """The default names earlier launches of the sweep gave its jobs ({} before the first)."""
    try:
        with open(os.path.join(log_dir, LAUNCHED_FILE)) as f:
            launched = json.load(f)
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in launched.items()} if isinstance(launched, dict) else {}


def record_launched(log_dir: str, sweep: Sequence[Mapping[str, Any]], jobs: Sequence[Job]) -> None:
    """Add this launch's default-named jobs to LAUNCHED_FILE (atomically: a reader never sees half)."""
    launched = read_launched(log_dir)
    for entry, job in zip(sweep, jobs):
        if "workdir" not in entry:
            launched[exact_overrides({k: v for k, v in entry.items() if k.startswith("config.")})] = \
                os.path.basename(job.workdir.rstrip("/"))
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, LAUNCHED_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(launched, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


OWNER_FILE = "launch_sweep.json"  # in the launch dir: {"workdir": the base workdir of the sweep it keeps}


def check_launch_dir(log_dir: str, workdir: str) -> None:
    """A LaunchError when `log_dir` keeps the records of a sweep in another workdir. Its status,
    logs, locks and names are keyed by job name alone: a second sweep with the same job names
    overwrote the first's records (its finished jobs then read 'failed')."""
    try:
        with open(os.path.join(log_dir, OWNER_FILE)) as f:
            owner = json.load(f).get("workdir")
    except (OSError, ValueError, AttributeError):
        return
    if owner and owner != workdir:
        raise LaunchError(f"--launch_dir={log_dir} keeps the jobs of the sweep in {owner}; give the sweep in "
                          f"{workdir} a --launch_dir of its own (or delete {os.path.join(log_dir, OWNER_FILE)} "
                          "if that sweep's records may go).")


def record_launch_dir(log_dir: str, workdir: str) -> None:
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, OWNER_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"workdir": workdir}, f)
    os.replace(path + ".tmp", path)
