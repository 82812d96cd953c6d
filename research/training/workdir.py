"""A run's workdir: checked before anything is written, and bound to one run.

`claim(workdir, config)` is called once the config has been validated and before the
run writes anything. It refuses, in one line, a workdir that cannot be written, and one
that holds another run: the run's fingerprint (what makes two runs the same run: model
architecture, objective, data identity (a given tokenizer file's contents too), sequence
length, seed, optimizer, and whether it clips gradients, which changes the optimizer state's
structure) is written to <workdir>/run.json at the first start and compared on every later
start. Fields that may legitimately change on resume (num_steps, the learning-rate schedule, batch size and
microbatches, the optimizer's numbers b1, b2, eps, weight_decay and clip_norm's value while
clipping stays on or off, logging, mesh, compute dtype, dropout, remat, the attention kernel)
are not in it. Resuming with a changed schedule, batch size, z_loss, eval_batches, dropout, compute dtype or
optimizer number is reported in one line (research/training/resume_changes.py): the rest of
such a run is neither the saved run continued nor a fresh run of the new config.

`removed_if_failed(workdir)` is the command line's guarantee that a run which fails
before its first checkpoint leaves no workdir behind that it created itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from research.atomic_files import unwritable_reason
from research.models.config import GRADIENT_ONLY_FIELDS, ConfigError
from research.training import workdir_lock

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
# Fields that do not change what a checkpoint means: compute precision, recomputation, dropout,
# how gradients are computed, which attention kernel computes the same attention (xla, cuDNN,
# splash: a run may move to a host where another one works).
MODEL_FIELDS_FREE_ON_RESUME = ("dtype", "remat", "dropout_rate", "attention_kernel") + GRADIENT_ONLY_FIELDS
# Moving a dataset does not make it another dataset.
_DATA_FIELDS_FREE_ON_RESUME = ("data_dir",)
TRAIN_FIELDS_IN_FINGERPRINT = ("seq_len", "seed")
# Fingerprint fields added after run.json was introduced: a run.json recorded before lacks them,
# and they are then taken from the newest checkpoint's saved config (none saved: nothing to compare).
# Fine-tuning's base and reference steps (2026-12-06) are recomputed from those runs as they are now,
# so for such an old run.json they always match: it is not checked for a base that moved.
# Fine-tuning's data file and 'hf:' reference digests (2026-12-07) likewise: an old run's files are whatever they are now.
# A given tokenizer file's digest (2026-12-07) likewise: the runs recorded before are not checked for a swapped file.
ADDED_LATER = ("opt.clip_norm>0", "init_checkpoint_step", "preference.reference_checkpoint_step",
                "grpo.reward_checkpoint_step", "data.train_file_sha256", "data.eval_file_sha256", "data.folder_sha256",
                "preference.reference_files_sha256", "data.tokenizer.model_file_sha256")
_FREED_LATER = ("model.attention_kernel",)


# config (a plain dict) -> the flat dict of fields that identify the run (run.json's "fingerprint").
Fingerprint = Callable[[Mapping[str, Any]], dict[str, Any]]


class WorkdirError(ConfigError):
    """The workdir cannot be used for this run (unwritable, or holding another run)."""


def flatten_config(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} from nested mappings {"a": {"b": value}}; tuples become lists, as JSON reads them back."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def run_fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a run config (a plain dict, as saved in checkpoints) that identify the run,
    flattened to dotted keys. The model is resolved from its preset, so a changed preset shows
    as the architecture fields it changes."""
    from research.data.config import DataConfig
    from research.models import get_config

    model_fields = {k: v for k, v in dict(config["model"]).items() if v is not None}
    model = get_config(model_fields.pop("preset"), **model_fields).to_dict()
    data = dataclasses.asdict(DataConfig(**dict(config.get("data", {}))))
    # The given tokenizer's contents too: another model at the same path (same vocab_size, other ids)
    # resumed silently on the old one's checkpoints. A URL or missing file is left to its loader.
    model_path = data["tokenizer"]["model_path"]
    if model_path and "://" not in model_path and os.path.isfile(model_path):
        from research.finetune.run_identity import data_files_digest  # it imports this module
        data["tokenizer"]["model_file_sha256"] = data_files_digest(model_path)
    from research.training.optimizers import OptimizerConfig

    train, opt = dict(config.get("train", {})), dict(config.get("opt", {}))
    return flatten_config({
        "model": {k: v for k, v in model.items() if k not in MODEL_FIELDS_FREE_ON_RESUME},
        "objective": config.get("objective", "causal_lm"),
        "objective_options": dict(config.get("objective_options", {}) or {}),
        "data": {k: v for k, v in data.items() if k not in _DATA_FIELDS_FREE_ON_RESUME},
        "train": {k: train[k] for k in TRAIN_FIELDS_IN_FINGERPRINT if k in train},
        # The optimizer's state has its own structure: another optimizer cannot resume this one, nor
        # can the same one with clipping turned on or off (a chain of two transformations, or of one).
        "opt": {"name": opt.get("name", "adamw"), "clip_norm>0": bool(opt.get("clip_norm", OptimizerConfig.clip_norm))},
    })


def _is_url(path: str) -> bool:
    return "://" in path


def check_writable(workdir: str) -> None:
    """WorkdirError unless `workdir` is (or can be created as) a writable local directory (a cloud
    URL is refused: atomic_files.unwritable_reason)."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory; choose another --workdir.")
    reason = unwritable_reason(workdir)
    if reason:
        raise WorkdirError(f"cannot use --workdir={workdir}: {reason}; choose another --workdir.")


def describe_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def fingerprint_differences(recorded: Mapping[str, Any], current: Mapping[str, Any], limit: int = 4) -> str:
    """`field: X there, Y now; ...` for the fields that differ ('' when none)."""
    keys = [k for k in dict.fromkeys([*recorded, *current]) if recorded.get(k) != current.get(k)]
    keys.sort(key=lambda k: k != "model.name")  # a changed preset shows first
    parts = [f"{k}: {describe_value(recorded.get(k))} there, {describe_value(current.get(k))} now"
             for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return "; ".join(parts)


def absolute_workdir(workdir: str) -> str:
    """`workdir` as recorded in run.json's trained_with (cloud paths unchanged)."""
    return workdir if _is_url(workdir) else os.path.abspath(workdir)


def _has_checkpoint(workdir: str) -> bool:
    checkpoints = os.path.join(workdir, "checkpoints")
    return os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))


def claimed_with(workdir: str) -> list[str]:
    """The workdirs (absolute) that `workdir` was last claimed together with, itself included;
    [] when it records no run, or was claimed alone."""
    try:
        with open(os.path.join(workdir, RUN_FILE), encoding="utf-8") as f:
            return list(json.load(f).get("trained_with", []))
    except (OSError, ValueError, AttributeError):
        return []


def _follow_move(recorded: dict[str, Any], current: Mapping[str, Any], old: Any, workdir: str) -> dict[str, Any]:
    """`recorded` with its paths under a folder that moved with `workdir` since run.json recorded
    it there read as where they are now: the same files, moved together. A sweep's runs (runs/<id>)
    and their tokenizer (tokenizers/...) moved to another folder were refused as another run on
    the tokenizer's path. The folder that moved is one of the workdir's own or its ancestors whose
    names the old and new paths share (only the part above them was renamed). old: where run.json
    says the workdir was (None in one recorded before it said so)."""
    new = absolute_workdir(workdir)
    if not isinstance(old, str) or old == new or _is_url(old) or _is_url(new):
        return recorded
    old_parts, new_parts = old.rstrip(os.sep).split(os.sep), new.rstrip(os.sep).split(os.sep)
    shared = 0  # trailing names in common: the folders that may have moved together
    while shared < min(len(old_parts), len(new_parts)) - 1 and old_parts[-1 - shared] == new_parts[-1 - shared]:
        shared += 1
    moves = [(os.sep.join(old_parts[:len(old_parts) - i]) + os.sep, os.sep.join(new_parts[:len(new_parts) - i]) + os.sep)
             for i in range(shared + 1)]

    def moved(before: Any, now: Any) -> bool:
        if isinstance(before, list) and isinstance(now, list) and len(before) == len(now):
            return all(b == n or moved(b, n) for b, n in zip(before, now))
        return isinstance(before, str) and isinstance(now, str) and any(
            a in before and before.replace(a, b, 1) == now for a, b in moves if a != os.sep)
    return {k: current[k] if k in current and v != current[k] and moved(v, current[k]) else v
            for k, v in recorded.items()}


def _read_recorded(workdir: str, fingerprint: Fingerprint, current: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fingerprint of the run already in `workdir`: its run.json (with the paths of a workdir
    moved since read as moved, _follow_move, against `current`), else (a workdir written before
    run.json existed) the config saved with its newest checkpoint; None if neither."""
    run_file = os.path.join(workdir, RUN_FILE)
    if os.path.isfile(run_file):
        try:
            with open(run_file, encoding="utf-8") as f:
                content = json.load(f)
            recorded = dict(content["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError):
            raise WorkdirError(f"{run_file} is unreadable; if the workdir holds this run, delete that file "
                               "and rerun, else choose another --workdir.") from None
        missing = [k for k in ADDED_LATER if k not in recorded]
        saved = newest_saved_config(os.path.join(workdir, "checkpoints")) if missing else None
        try:
            from_checkpoint = fingerprint(saved[1]) if saved is not None else {}
        except Exception:  # a config today's code cannot read: the fields run.json has decide alone
            from_checkpoint = {}
        recorded.update({k: from_checkpoint[k] for k in missing if k in from_checkpoint})
        # Fields made free on resume after a run.json recorded them (model.attention_kernel, 2026-12-06).
        kept = {k: v for k, v in recorded.items() if k not in _FREED_LATER}
        return _follow_move(kept, current, content.get("workdir"), workdir)
    saved = newest_saved_config(os.path.join(workdir, "checkpoints"))
    return None if saved is None else fingerprint(saved[1])


def newest_saved_config(checkpoints: str) -> tuple[int, dict[str, Any]] | None:
    """(step, run config) of the newest checkpoint step in `checkpoints` whose saved config
    reads (a damaged step: the one before); None if none does."""
    steps = sorted((int(n) for n in os.listdir(checkpoints) if n.isdigit()), reverse=True) \
        if os.path.isdir(checkpoints) else []
    for step in steps:
        try:
            with open(os.path.join(checkpoints, str(step), "config", "metadata"), encoding="utf-8") as f:
                return step, dict(json.load(f))
        except Exception:  # a damaged or foreign step: try the one before
            continue
    return None


def claim(workdir: str, config: Mapping[str, Any], *, record: bool = True,
          fingerprint: Fingerprint | None = None) -> None:
    """Check `workdir` for this run (a plain-dict config), then create it and record the run.

    Raises WorkdirError, in one line, for an unwritable workdir or one holding another run
    (naming the fields that differ). `record=False` (processes other than 0) does not write run.json.
    """
    claim_all([(workdir, config)], record=record, fingerprint=fingerprint)


def check_same_on_every_process(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """On several processes (hosts), all must train the same runs: one line on every process
    when their workdirs or configs differ (data.data_dir aside: each host may keep its copy of
    the data elsewhere). Another learning rate on one process trained silently while run.json
    recorded process 0's; another workdir hung in orbax's barriers until a timeout."""
    import jax

    from research.training.partitioning import processes_differing
    if jax.process_count() < 2:
        return
    text = json.dumps([(workdir, {k: v for k, v in flatten_config(config).items() if k != "data.data_dir"})
                       for workdir, config in runs], sort_keys=True, default=str)
    differing = processes_differing([text.encode()])
    if differing:
        raise WorkdirError(f"process(es) {differing} were given another --workdir or config than process 0 (this is "
                           f"process {jax.process_index()} of {jax.process_count()}); start every process with the "
                           "same command.")


def claim_all(runs: Sequence[tuple[str, Mapping[str, Any]]], *, record: bool = True,
              fingerprint: Fingerprint | None = None) -> list[str]:
    """`claim` for several (workdir, config) runs trained together: every workdir is checked
    before any is created, so a refusal leaves nothing behind. Returns the workdirs this call
    claimed first (no run recorded there before), for `unclaim` when a later check fails.
    `fingerprint` (default run_fingerprint) identifies runs of another kind (fine-tuning)."""
    fingerprint = fingerprint or run_fingerprint
    check_same_on_every_process(runs)
    for workdir, _ in runs:
        check_writable(workdir)
    workdirs = [workdir for workdir, _ in runs]
    locked: list[str] = []  # the locks this call takes (given up again if it refuses)
    try:
        # Before anything is compared or written: refuse a workdir another live process trains in,
        # and learn whether a recorded run with no checkpoint is dead (it may then be replaced).
        free = _lock_existing(workdirs, record, locked)
        return _claim_locked(runs, record, fingerprint, free, locked)
    except BaseException:
        workdir_lock.release(locked)
        raise


def _lock_existing(workdirs: Sequence[str], record: bool, locked: list[str]) -> bool:
    """Lock the existing local workdirs on the recording process (process 0), appending those
    it locks to `locked`; every process agrees on its verdict. Raises WorkdirError for a workdir
    another live process holds. Returns whether every existing one was free and is now locked
    (False: some file system takes no locks, or a run of this process holds one: a run recorded
    there may be alive)."""
    import jax

    code = -1  # -1: all were free; -2: some may be in use; i >= 0: workdirs[i] is busy
    if record:
        for i, workdir in enumerate(workdirs):
            if _is_url(workdir) or not os.path.isdir(workdir):
                continue
            if workdir_lock.holds(workdir):
                code = -2
                continue
            held = workdir_lock.hold(workdir)
            if held is False:
                code = i
                break
            if held:
                locked.append(workdir)
            else:
                code = -2
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
    if code >= 0:
        raise WorkdirError(_busy_line(workdirs[code]))
    return code == -1


def _new_model_default(key: str, value: Any) -> bool:
    """Whether `key` is a ModelConfig field at its default (model.sliding_window: None, added
    2026-12-06): a run.json recorded before the field existed lacks it, and that run had the
    default; without this every earlier run was refused as 'another run ()' on resume."""
    from research.models.config import ModelConfig

    if not key.startswith("model."):
        return False
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    field = fields.get(key[len("model."):])
    return field is not None and field.default is not dataclasses.MISSING and value == field.default


def _busy_line(workdir: str) -> str:
    return (f"--workdir={workdir} is in use: {workdir_lock.holder(workdir)} is training there now; wait for it "
            "to end (or stop it), or use another --workdir.")


def _claim_locked(runs: Sequence[tuple[str, Mapping[str, Any]]], record: bool, fingerprint: Fingerprint,
                  free: bool, locked: list[str]) -> list[str]:
    fingerprints, first = [], []
    for workdir, config in runs:
        current = fingerprint(config)
        if not _is_url(workdir) and os.path.isdir(workdir):
            recorded = _read_recorded(workdir, fingerprint, current)
            # A field an older run.json lacks, with no checkpoint to take it from, constrains nothing;
            # nor does a model field added since, at the value every run had before it existed.
            compared = {k: v for k, v in current.items()
                        if k in (recorded or {}) or (k not in ADDED_LATER and not _new_model_default(k, v))}
            if recorded is not None and recorded != compared and free and not _has_checkpoint(workdir):
                # Its process is gone (the lock was free) and it saved nothing: a run killed (kill -9,
                # out of memory) before its first checkpoint. Its records are redone from step 0.
                log.warning("--workdir=%s recorded a run that stopped before its first checkpoint (%s): this run "
                            "replaces it", workdir, fingerprint_differences(recorded, compared))
                recorded = None
            if recorded is not None and recorded != compared:
                advice = ("; turning clipping off changes the optimizer state: a large opt.clip_norm (e.g. 1e9) "
                          "in place of 0 keeps it" if recorded.get("opt.clip_norm>0") and
                          not current.get("opt.clip_norm>0") else "")
                digest = "data.tokenizer.model_file_sha256"
                if recorded.get(digest) not in (None, current.get(digest)) and current.get(digest):
                    advice += (f"; the tokenizer file {current['data.tokenizer.model_path']} holds another model than "
                               "the run trained with: restore that file to resume")
                raise WorkdirError(
                    f"--workdir={workdir} holds another run ({fingerprint_differences(recorded, compared)}); "
                    f"use a new --workdir, or delete {workdir} to start over{advice}.")
            if recorded is None:
                first.append(workdir)
        elif not _is_url(workdir):
            first.append(workdir)
        fingerprints.append(current)
    from etils import epath  # knows local and cloud (gs://) paths alike
    # Models trained together: each workdir records its siblings, so a rerun can tell a model
    # killed before its first save (claimed with the others) from one added since (members.py).
    together = sorted(absolute_workdir(w) for w, _ in runs) if len(runs) > 1 else None
    for (workdir, _), current in zip(runs, fingerprints):
        path = epath.Path(workdir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # e.g. a read-only or virtual file system, a missing mount
            raise WorkdirError(f"cannot create --workdir={workdir} ({error.strerror or error}); "
                               "choose a directory you can write.") from None
        if record and not _is_url(workdir) and not workdir_lock.holds(workdir):
            held = workdir_lock.hold(workdir)
            if held is False:  # created at the same moment by another command
                raise WorkdirError(_busy_line(workdir))
            if held:
                locked.append(workdir)
        if record:  # written aside, then renamed: other processes checking the workdir never read half a file
            partial = path / f"{RUN_FILE}.{os.getpid()}.tmp"
            # Where it was: a workdir moved (a study folder copied to or from a Colab Drive) with the files
            # around it (the study's tokenizer, its data) resumes (_follow_move).
            content = {"fingerprint": current, "workdir": absolute_workdir(workdir),
                       **({"trained_with": together} if together else {})}
            partial.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
            partial.replace(path / RUN_FILE)
    return first


def unclaim(workdirs: Sequence[str]) -> list[str]:
    """Withdraw the claims `claim_all` made first on `workdirs` (a bad input found after the
    claim, before any training): the corrected command must not be refused as another run.
    Returns the workdirs withdrawn (those with no checkpoint), whose records the caller discards."""
    withdrawn = [workdir for workdir in workdirs if not _has_checkpoint(workdir)]
    for workdir in withdrawn:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(workdir, RUN_FILE))
    workdir_lock.release(withdrawn, remove=True)
    return withdrawn


def already_finished(workdirs: Sequence[str], step: int) -> str:
    """The line for a rerun of a run that had finished (restored at its train.num_steps): it trains
    nothing, and without this line the command printed only the restored model's evaluation,
    as if it had just trained."""
    if len(workdirs) == 1:
        where = (f"its results are in {os.path.join(workdirs[0], 'metrics.jsonl')}, its checkpoints in "
                 f"{os.path.join(workdirs[0], 'checkpoints')}")
        runs = f"the run in --workdir={workdirs[0]}"
    else:  # models trained together: each workdir holds one model's results, as if trained alone
        where = "their results are in each one's metrics.jsonl, their checkpoints in each one's checkpoints/"
        runs = f"the {len(workdirs)} runs in {', '.join(workdirs)}"
    return (f"{runs} had already finished at step {step} (train.num_steps={step}): nothing was trained; {where}; "
            "the metrics reported evaluate the last checkpoint. Raise train.num_steps to train on.")


@contextlib.contextmanager
def removed_if_failed(workdir: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Remove `workdir` if the body raises one of `errors` (the user-input errors) and the
    workdir did not exist before and holds no checkpoint: a run that stops at a bad input
    leaves nothing behind. Other failures keep it (e.g. a tokenizer that took long to train)."""
    existed = _is_url(workdir) or os.path.exists(workdir)
    try:
        yield
    except errors:
        # (another command that created it in the same moment and trains there keeps it)
        if not existed and os.path.isdir(workdir) and not _has_checkpoint(workdir) and \
                not workdir_lock.held_elsewhere(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
        raise
