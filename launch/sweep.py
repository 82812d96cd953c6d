"""Sweep expansion: a config module's `get_sweep()` override dicts -> one job (a command line) each.

A config file (experiments/configs/<study>.py) may define `get_sweep()` returning a list of
dicts. Keys starting with "config." are config overrides and become `--config.a.b=value`
flags; two keys are launch options:
  "workdir"  the job's directory under the sweep's base workdir ("." = the base itself,
             for jobs that share one workdir, e.g. shards of a scaling sweep);
             default: a name made from the overrides, e.g. "learning_rate=0.001".
  "name"     the job's name (default: its workdir name, or "job<i>").
Every job runs `python -m launch.multihost <module> --config=<file>:<arg> --workdir=... <flags>`,
so on several hosts each process joins jax.distributed before the entry point starts.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
from typing import Any, Sequence

LAUNCH_KEYS = ("workdir", "name")


class LaunchError(ValueError):
    """A user-facing launch mistake; one line naming the value and the fix."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One command of a sweep: `argv` runs it from the repository root."""

    name: str
    workdir: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command line, shell-quoted."""
        return shlex.join(self.argv)


def load_sweep(config: str) -> list[dict[str, Any]]:
    """`get_sweep()` of the config file in `config` ("path/to/config.py[:arg]")."""
    path = config.split(":", 1)[0]
    if not os.path.isfile(path):
        raise LaunchError(f"--config={config!r}: {path!r} is not a file; give a config module path, "
                          "e.g. experiments/configs/pretrain.py:gpt_tiny.")
    spec = importlib.util.spec_from_file_location("_launched_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise LaunchError(f"{path} defines no get_sweep(); add one returning a list of override dicts, "
                          "e.g. [{'config.opt.learning_rate': 1e-3}, ...].")
    sweep = module.get_sweep()
    if not isinstance(sweep, list) or not sweep or not all(isinstance(d, dict) for d in sweep):
        raise LaunchError(f"{path}: get_sweep() returned {type(sweep).__name__}; it must return a non-empty list "
                          "of override dicts.")
    return sweep


def _flag_value(value: Any) -> str:
    """A Python value as ml_collections config_flags parse it: tuples as '(a,b)', others by str()."""
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _default_name(overrides: dict[str, Any]) -> str:
    parts = [f"{key.rsplit('.', 1)[-1]}={_flag_value(value)}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))[:120] or "job"


def expand(sweep: Sequence[dict[str, Any]], *, module: str, config: str, workdir: str,
           extra_flags: Sequence[str] = (), python: str = "python") -> list[Job]:
    """One Job per override dict; names and workdirs are unique unless a job asks to share."""
    jobs = []
    for index, entry in enumerate(sweep):
        bad = [k for k in entry if not k.startswith("config.") and k not in LAUNCH_KEYS]
        if bad:
            raise LaunchError(f"get_sweep()[{index}] has key(s) {bad}; keys are 'config.<field>' overrides or one "
                              f"of {LAUNCH_KEYS}.")
        overrides = {k: v for k, v in entry.items() if k.startswith("config.")}
        subdir = entry.get("workdir", _default_name(overrides))
        job_dir = os.path.normpath(os.path.join(workdir, subdir))
        name = entry.get("name") or (f"job{index}" if subdir == "." else os.path.basename(job_dir))
        flags = [f"--{key}={_flag_value(value)}" for key, value in overrides.items()]
        argv = (python, "-m", "launch.multihost", module, f"--config={config}", f"--workdir={job_dir}",
                *flags, *extra_flags)
        jobs.append(Job(name, job_dir, argv))
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise LaunchError(f"get_sweep() gives duplicate job names {sorted({n for n in names if names.count(n) > 1})}; "
                          "add a distinct 'name' to those entries.")
    return jobs
