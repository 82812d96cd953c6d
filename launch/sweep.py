"""Sweep expansion: a config module's `get_sweep()` override dicts -> one job (a command line) each.

A config file (experiments/configs/<study>.py) may define `get_sweep()` returning a list of
dicts (with a `preset` parameter it is given the config's preset, "path.py:preset", and may
refuse one it does not suit with a ValueError). Keys starting with "config." are config
overrides and become `--config.a.b=value` flags; two keys are launch options:
  "workdir"  the job's directory under the sweep's base workdir ("." = the base itself,
             for jobs that share one workdir, e.g. shards of a scaling sweep);
             default: a name made from the overrides, e.g. "learning_rate=0.001" (each
             key's last part; characters outside [A-Za-z0-9_.=,+-] become _; cut at 120),
             the same every launch, so a relaunched sweep resumes; where two jobs with
             different overrides would get one name, "-" and a short hash of the exact
             overrides keep them apart (a job launched before keeps its name: the launch
             dir's launch_jobs.json). Two jobs may share a workdir only if each sets it
             as "workdir"; otherwise expand() refuses.
  "name"     the job's name (default: its workdir name, or "job<i>").
Every job runs `python -m launch.multihost <module> --config=<file>:<arg> --workdir=... <flags>`,
so on several hosts each process joins jax.distributed before the entry point starts.

Workdirs are etils.epath paths, so a cloud base such as gs://bucket/sweep would stay a URL
(os.path folds it into gs:/bucket/sweep); the CLI refuses one, as every job would (runs write
with local file APIs: mount the bucket instead). Overrides given on the command line
(`--override=config.train.num_steps=100`) are added to every job; they and the sweep's
keys are checked against the config's fields before any job is written.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import math
import os
import re
import shlex
import sys
from typing import Any, Mapping, Sequence

from etils import epath

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


def is_url(path: str) -> bool:
    """True for cloud paths (gs://, s3://, ...), which must never pass through os.path."""
    return "://" in path


def job_workdir(base: str, subdir: str) -> str:
    """`base`/`subdir` ("." = base itself), keeping a URL base a URL."""
    if is_url(base):
        return str(epath.Path(base) / subdir) if subdir != "." else str(epath.Path(base))
    return os.path.normpath(os.path.join(base, subdir))


def job_paths(config: str, workdir: str, *, repo: str, remote: bool = False) -> tuple[str, str, str]:
    """(config to check here, config for the jobs, workdir for the jobs) from the command line's
    --config / --workdir, which are relative to the caller's directory while jobs run in the
    repository root. Here (local, slurm on a shared disk) both become absolute. On `remote`
    workers (tpu_vm: the repository checked out again under --tpu_repo_dir) a config inside
    this repository becomes repository-relative, so the workers' copy is loaded; one outside
    stays absolute and must exist at that path on every worker; a relative workdir is refused
    (it would land under the workers' repository while logs and status stay here)."""
    if not workdir.strip():  # os.path.abspath("") is the caller's directory: the sweep would land there
        raise LaunchError(f"--workdir={workdir!r} is empty (an unset shell variable?); give the sweep's base "
                          "directory, e.g. --workdir=/tmp/lr_sweep.")
    path, sep, arg = config.partition(":")
    local = os.path.abspath(path) + sep + arg
    job_config = local
    inside = os.path.relpath(os.path.abspath(path), os.path.abspath(repo))
    if remote and not inside.startswith(os.pardir + os.sep) and inside != os.pardir:
        job_config = inside + sep + arg
    if is_url(workdir) or os.path.isabs(workdir):
        return local, job_config, workdir
    if remote:
        raise LaunchError(f"--workdir={workdir} is relative; tpu_vm jobs write on the workers, so give an absolute "
                          "path on a file system every worker mounts (e.g. gcsfuse at /gcs/BUCKET).")
    return local, job_config, os.path.abspath(workdir)


def _config_module(config: str):
    path = config.split(":", 1)[0]
    if not os.path.isfile(path):
        raise LaunchError(f"--config={config!r}: {path!r} is not a file; give a config module path, "
                          "e.g. experiments/configs/pretrain.py:gpt_tiny.")
    spec = importlib.util.spec_from_file_location("_launched_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(config: str) -> list[dict[str, Any]]:
    """`get_sweep()` of the config file in `config` ("path/to/config.py[:arg]"), called with
    preset=arg when it takes a `preset` parameter (a sweep that suits only some presets)."""
    path = config.split(":", 1)[0]
    module = _config_module(config)
    if not hasattr(module, "get_sweep"):
        raise LaunchError(f"{path} defines no get_sweep(); add one returning a list of override dicts, "
                          "e.g. [{'config.opt.learning_rate': 1e-3}, ...].")
    takes_preset = "preset" in inspect.signature(module.get_sweep).parameters
    try:
        sweep = module.get_sweep(preset=config.split(":", 1)[1] if ":" in config else None) if takes_preset \
            else module.get_sweep()
    except ValueError as error:  # the config file's own one-line refusal
        raise LaunchError(f"--config={config!r}: {str(error).strip().splitlines()[-1]}") from None
    if not isinstance(sweep, list) or not sweep or not all(isinstance(d, dict) for d in sweep):
        raise LaunchError(f"{path}: get_sweep() returned {type(sweep).__name__}; it must return a non-empty list "
                          "of override dicts.")
    return sweep


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """["config.train.num_steps=100", "opt.learning_rate=1e-3"] -> {"config.train.num_steps": "100", ...}
    (the "config." prefix is optional)."""
    parsed = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.strip().removeprefix("--")
        # An empty value is one: --config.tokenizer= (fine-tuning: the checkpoint's own tokenizer).
        if not sep or not key:
            raise LaunchError(f"--override={override!r} is not KEY=VALUE; e.g. --override=config.train.num_steps=100.")
        key = key if key.startswith("config.") else f"config.{key}"
        if key in parsed:
            raise LaunchError(f"--override sets {key} twice ({parsed[key]!r} and {value!r}); keep one.")
        parsed[key] = value
    return parsed


def check_config_keys(config: str, keys: Sequence[str], values: Mapping[str, str] | None = None,
                      sweep: Sequence[Mapping[str, Any]] = ()) -> None:
    """Every "config.a.b" key names a field of get_config(arg) of the config file; else one line
    listing the fields that exist where the key went wrong. `values` (command-line strings) and
    the `sweep` entries' values of int / float / bool fields must parse as that type, as
    config_flags will parse them in the job; a sweep's None only where the field is None already
    (expand leaves its flag out: a flag would carry the text 'None')."""
    module = _config_module(config)
    if not hasattr(module, "get_config"):
        raise LaunchError(f"{config.split(':', 1)[0]} defines no get_config(arg); it is not a config file.")
    arg = config.split(":", 1)[1] if ":" in config else None
    try:
        root = module.get_config(arg) if arg is not None else module.get_config()
    except Exception as error:  # the config file's own one-line error (e.g. an unknown preset)
        raise LaunchError(f"--config={config!r}: {str(error).strip().splitlines()[-1]}") from None
    batched = root.get("batched") if hasattr(root, "get") else None
    batched = batched.get("field") if hasattr(batched, "get") else None
    # The batched field each job trains (an --override's, which expand puts last, else a sweep entry's,
    # else the preset's): each job's own value of it would be replaced by batched.values (three jobs
    # "learning_rate=..." trained the same models).
    if values and "config.batched.field" in values:
        named = [values["config.batched.field"]]
    else:
        named = [entry.get("config.batched.field", batched) for entry in sweep or [{}]]
    for field in dict.fromkeys(str(f) for f in named if f):
        if f"config.{field}" in keys:
            raise LaunchError(f"config.{field}: the jobs train several values of it each (config.batched.field="
                              f"{field!r}), so a job's own value would be replaced; sweep another field, or launch "
                              "without config.batched.")
    fields = {}
    for key in keys:
        node, parent, walked = root, None, []
        for part in key.removeprefix("config.").split("."):
            where = "config" + "".join(f".{w}" for w in walked)
            if not hasattr(node, "keys"):
                raise LaunchError(f"{key}: {where} is a value ({node!r}), not a group of fields; set {where} itself.")
            if part not in node.keys():
                raise LaunchError(f"{key}: {where} has no field {part!r}; its fields are {sorted(node.keys())}.")
            parent, node, walked = node, node[part], [*walked, part]
        # A placeholder field (None until set, e.g. model.num_layers) has a declared type that
        # config_flags enforces in the job; type(None) would let any value through here.
        declared = parent.get_type(walked[-1]) if node is None and hasattr(parent, "get_type") else type(node)
        fields[key] = (node, declared)
        if values and key in values:
            _check_value_type(key, values[key], node, declared)
    for index, entry in enumerate(sweep):
        for key, value in entry.items():
            if key not in fields:
                continue
            node, declared = fields[key]
            if value is None:
                if node is not None:
                    raise LaunchError(f"get_sweep()[{index}] sets {key} to None, which no flag can carry (the job "
                                      f"would get the text 'None'); its default is {node!r}: give a value, or leave "
                                      "the key out.")
            elif not isinstance(value, (tuple, list)):
                _check_value_type(key, str(value), node, declared, where=f"get_sweep()[{index}]: {key}={value!r}")


def _check_value_type(key: str, text: str, current: Any, kind: type, where: str | None = None) -> None:
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
        elif kind in (int, float):
            kind(text)
        elif kind in (tuple, list):
            _check_sequence_text(text, current)
    except ValueError:
        example = ""
        if kind in (tuple, list) and current:
            with contextlib.suppress(LaunchError):
                example = f", e.g. --override={key}='{_literal(key, current)}'"
        raise LaunchError(f"{where or f'--override={key}={text}'}: {key} is {kind.__name__} (now {current!r}); give "
                          f"a value of type {kind.__name__}{example}.") from None


def _check_sequence_text(text: str, current: Any) -> None:
    """A tuple field's flag text as config_flags reads it (a Python literal; one value is a tuple of
    one): a ValueError where the job would fail to parse it ('(1e11, 1e12' in every shard) or
    would get elements of another type than the default's ('abc' became ('abc',) of budgets)."""
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(text) from None
    parsed = parsed if isinstance(parsed, (tuple, list)) else (parsed,)
    kinds = {type(v) for v in current or ()}
    if kinds and not kinds <= {int, float, bool, str, type(None)}:
        return  # nested or unusual defaults: left to config_flags
    numbers = kinds and kinds <= {int, float}
    for value in parsed:
        if numbers and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(text)
        if kinds == {str} and not isinstance(value, str):
            raise ValueError(text)


def check_module(module: str, repo: str | None = None) -> None:
    """The entry point exists as a module the jobs can import (found, not imported: importing may
    be slow). Jobs run `python -m` in `repo`, the repository root, so it is looked for there and
    not in the caller's directory: --module=myexp run from a project folder passed the check and
    every job failed with "No module named myexp"."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", module or ""):
        raise LaunchError(f"--module={module!r} is not a dotted module name; e.g. --module=experiments.pretrain.")
    with _import_path_of_jobs(repo):
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.submodule_search_locations is not None:  # a package runs its __main__
            found = importlib.util.find_spec(f"{module}.__main__")
            kind = "a package without __main__.py"
        else:
            kind = "not found"
    if found is None and repo is not None:
        kind += f" from {repo}, where the jobs run (python -m there: put it in that repository or on PYTHONPATH)"
    if found is None:
        raise LaunchError(f"--module={module!r} is {kind}; give the entry point run with python -m, e.g. "
                          "experiments.pretrain or experiments.scaling_laws.")


@contextlib.contextmanager
def _import_path_of_jobs(repo: str | None):
    """sys.path with the caller's directory (python -m's first entry) replaced by `repo`."""
    if repo is None:
        yield
        return
    saved, cwd = list(sys.path), os.getcwd()
    sys.path[:] = [repo] + [p for p in sys.path if p not in ("", cwd)]
    try:
        yield
    finally:
        sys.path[:] = saved


def _flag_value(key: str, value: Any) -> str:
    """A Python value as ml_collections config_flags parse it: a tuple (or list) as a Python
    literal, which config_flags reads back with ast.literal_eval, others by str() (the field's
    own parser reads them: str(0.1) keeps every digit, str(True) is a bool flag value)."""
    if isinstance(value, (tuple, list)):
        return _literal(key, value)
    return str(value)


def _literal(key: str, value: Any) -> str:
    """`value` as Python source that ast.literal_eval turns back into it. Strings are repr()'d:
    unquoted, ('query', 'value') would arrive as the one string '(query,value)'."""
    if isinstance(value, (tuple, list)):
        items = [_literal(key, item) for item in value]
        return "(" + ",".join(items) + ("," if len(items) == 1 else "") + ")"
    value = _python_scalar(value)  # a NumPy scalar's repr (np.float64(0.1)) is not a literal
    if isinstance(value, float) and not math.isfinite(value):
        raise LaunchError(f"{key}={value!r}: inf / nan inside a tuple cannot pass through the flag "
                          "(ast.literal_eval has no literal for them); use a large finite value.")
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return repr(value)
    raise LaunchError(f"{key}: tuple element {value!r} is a {type(value).__name__}; a tuple flag holds only "
                      "str, int, float, bool, None or tuples of them.")


def _python_scalar(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds; any other value as it is."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def _same_flag(value: Any) -> Any:
    """`value` with what does not change its flag made alike: NumPy scalars as Python values,
    lists as tuples (both are the same literal)."""
    if isinstance(value, (tuple, list)):
        return tuple(_same_flag(item) for item in value)
    return _python_scalar(value)


def _display_value(value: Any) -> str:
    """A value as it reads in a default job name: tuples as '(a,b)', without quotes."""
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_display_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


_NAME_LENGTH = 120


def _default_name(overrides: dict[str, Any]) -> str:
    """"leaf=value,..." as a file name (other characters become _, cut at 120): the name every
    launch has given a job, so a relaunched sweep resumes in the same workdirs."""
    text = ",".join(f"{key.rsplit('.', 1)[-1]}={_display_value(value)}" for key, value in overrides.items())
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", text)[:_NAME_LENGTH] or "job"


def exact_overrides(entry: Mapping[str, Any], *, as_given: bool = False) -> str:
    """A job's overrides exactly (its identity in launch_jobs.json and its name's hash). Values
    giving the same flag give the same text: a sweep relaunched with np.float64(1e-3) for 1e-3
    moved its job to a new workdir. `as_given`: the text of launches before that (plain repr)."""
    return ",".join(f"{key}={(value if as_given else _same_flag(value))!r}" for key, value in entry.items())


def _apart(names: list[str | None], overrides: list[dict[str, Any]]) -> list[str | None]:
    """Default names (None: the entry sets its workdir) that two jobs with different overrides
    share ("a b" and "a/b" both become a_b; opt.lr and sched.lr both lr; a cut at 120 characters)
    get a hash of the exact overrides; every other name stays as it was."""
    exact = [exact_overrides(entry) for entry in overrides]
    variants: dict[str, set[str]] = {}
    for name, text in zip(names, exact):
        if name is not None:
            variants.setdefault(name, set()).add(text)
    apart = []
    for name, text in zip(names, exact):
        if name is not None and len(variants[name]) > 1:  # equal overrides stay equal: _check_workdirs says so
            name = _with_digest(name, text)
        apart.append(name)
    return apart


def _with_digest(name: str, exact: str) -> str:
    digest = hashlib.sha1(exact.encode()).hexdigest()[:8]  # sha1, not hash(): the same every launch
    return f"{name[:_NAME_LENGTH - len(digest) - 1]}-{digest}"


def _unless_taken(name: str, exact: str, taken: set[str]) -> str:
    """A new job's default name, or with its overrides' hash when an earlier launch gave that name
    to a job with other overrides (names cut at 120 characters: a sweep edited from seed 1 to seed 2
    reused seed 1's workdir, refused there as another run, its table showing seed 1's loss)."""
    return _with_digest(name, exact) if name in taken else name


def expand(sweep: Sequence[dict[str, Any]], *, module: str, config: str, workdir: str,
           overrides: Mapping[str, Any] | None = None, python: str = "python",
           launched: Mapping[str, str] | None = None) -> list[Job]:
    """One Job per override dict, each also given `overrides` (the same for every job); names
    are unique, and so are workdirs unless every job in one sets it as "workdir" (to share).
    `launched` ({exact_overrides: default name}, the sweep's earlier launches: launch_dir.read_launched)
    keeps a job's name when the sweep grows: an added entry whose default name collides with
    it would otherwise rename both (with a hash), and the launched one would start again in a
    new workdir."""
    overrides = dict(overrides or {})
    swept = sorted({key for entry in sweep for key in entry if key in overrides})
    if swept:
        raise LaunchError(f"--override sets {swept}, which the sweep varies; drop it or change get_sweep().")
    for index, entry in enumerate(sweep):
        bad = [k for k in entry if not k.startswith("config.") and k not in LAUNCH_KEYS]
        if bad:
            raise LaunchError(f"get_sweep()[{index}] has key(s) {bad}; keys are 'config.<field>' overrides or one "
                              f"of {LAUNCH_KEYS}.")
    all_overrides = [{k: v for k, v in entry.items() if k.startswith("config.")} for entry in sweep]
    defaults = _apart([None if "workdir" in entry else _default_name(entry_overrides)
                       for entry, entry_overrides in zip(sweep, all_overrides)], all_overrides)
    launched = launched or {}
    taken = set(launched.values())  # names (and workdirs) of jobs an earlier launch ran with other overrides
    defaults = [None if default is None else launched.get(exact_overrides(entry_overrides))
                or launched.get(exact_overrides(entry_overrides, as_given=True))
                or _unless_taken(default, exact_overrides(entry_overrides), taken)
                for entry_overrides, default in zip(all_overrides, defaults)]
    jobs, chosen = [], []
    for index, (entry, entry_overrides, default) in enumerate(zip(sweep, all_overrides, defaults)):
        subdir = entry["workdir"] if default is None else default
        chosen.append("workdir" in entry)
        job_dir = job_workdir(workdir, subdir)
        name = entry.get("name") or (f"job{index}" if subdir == "." else subdir.rstrip("/").rsplit("/", 1)[-1])
        flags = [f"--{key}={_flag_value(key, value)}" for key, value in {**entry_overrides, **overrides}.items()
                 if value is not None]  # None: the field's default, None (check_config_keys)
        argv = (python, "-m", "launch.multihost", module, f"--config={config}", f"--workdir={job_dir}", *flags)
        jobs.append(Job(name, job_dir, argv))
    names = [job.name for job in jobs]
    odd = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.=,+-]+", n)]
    if odd:
        raise LaunchError(f"get_sweep() job name(s) {odd} hold characters other than letters, digits and _.=,+-; "
                          "they name log and status files, so rename them.")
    if len(set(names)) != len(names):
        raise LaunchError(f"get_sweep() gives duplicate job names {sorted({n for n in names if names.count(n) > 1})}; "
                          "add a distinct 'name' to those entries.")
    _check_workdirs(jobs, chosen)
    return jobs


def _check_workdirs(jobs: Sequence[Job], chosen: Sequence[bool]) -> None:
    """Two jobs in one workdir write into each other's checkpoints and metrics; allowed only
    where each of them set that "workdir" itself (e.g. shards of one scaling sweep)."""
    first: dict[str, int] = {}
    for index, job in enumerate(jobs):
        other = first.setdefault(job.workdir, index)
        if other != index and not (chosen[other] and chosen[index]):
            raise LaunchError(f"get_sweep() jobs {jobs[other].name!r} and {job.name!r} would share the workdir "
                              f"{job.workdir} and overwrite each other's checkpoints; give one a distinct 'workdir' "
                              "(or set the same 'workdir' in both to share it on purpose).")
