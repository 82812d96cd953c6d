"""A sweep's run directories (workdir/runs/<run_id>): the config each run was made with
(run_config.json), its result once it has ended (result.json), and its checkpoints.

A run directory may only be reused by the same run (`_check_same_run`); which config sections
make two runs the same is `_fingerprint`'s list.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

import ml_collections

from research.atomic_files import write_text_atomically
from research.data.config import DataConfig
from research.models.config import GRADIENT_ONLY_FIELDS
from research.scaling.sweep_plan import SweepError

RESULT_FILE = "result.json"  # written once a run has ended (ok or failed)
RUN_CONFIG_FILE = "run_config.json"
# The config sections that decide what a run computes; a rerun must match them to reuse it.
_FINGERPRINT_SECTIONS = ("model", "objective", "objective_options", "opt")
_FINGERPRINT_TRAIN = ("num_steps", "batch_size", "seq_len", "microbatches", "seed", "z_loss",
                      "eval_batches")  # the loss the fit reads is measured on eval_batches batches


def _fingerprint(config: dict) -> dict:
    train = {k: config["train"].get(k) for k in _FINGERPRINT_TRAIN}
    # Every DataConfig field, defaults filled in: a config that spells out a default (the presets'
    # data sections gained tfds_name, splits, ... for --config.data overrides) is the same run.
    data = json.loads(json.dumps(dataclasses.asdict(DataConfig(**config["data"]))))
    # The tokenizer's settings, not where its model lies: the sweep sets model_path to its one shared
    # model (absent from the check made before that model exists). A changed setting trains another
    # tokenizer, whose ids the runs still to train would have mixed into the fit with the finished ones.
    data["tokenizer"].pop("model_path")
    fingerprint = {**{k: config.get(k) for k in _FINGERPRINT_SECTIONS}, "train": train, "data": data}
    # How gradients are computed changes rounding, not the run: an interrupted run may resume
    # under another form (research.training.workdir treats it the same way).
    model = {k: v for k, v in (fingerprint["model"] or {}).items() if k not in GRADIENT_ONLY_FIELDS}
    return {**fingerprint, "model": model}


def _check_same_run(run_dir: str, config: ml_collections.ConfigDict, *, write: bool) -> None:
    """A run directory may only be reused by the same run: fail on a changed config once the run
    has a checkpoint or a result; before that, its recorded config is (re)written."""
    path = os.path.join(run_dir, RUN_CONFIG_FILE)
    current = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored
    stored = _read_run_config(run_dir, path)
    if stored is not None and latest_checkpoint(run_dir) == 0 and read_result(run_dir) is None:
        # Never started (e.g. a config the training system rejected before its first step, after
        # this file was written): nothing to protect, so the corrected command replaces it.
        stored = None
    if stored is not None:
        old, new = _fingerprint(stored), _fingerprint(current)
        # A tokenizer file given in the config, swapped for another (same vocab_size, other ids), is
        # another run: compared by contents where both files can be read (the check before the sweep's
        # own model exists has none; a moved workdir's recorded path none either, and it is the same).
        digests = [_tokenizer_digest(c) for c in (stored, current)]
        if None not in digests:
            old["data"]["tokenizer_file_sha256"], new["data"]["tokenizer_file_sha256"] = digests
        if old != new:
            changed = sorted(k for k in new if old.get(k) != new.get(k))
            raise SweepError(f"{run_dir} was trained with a different config (sections {changed} differ); use a new "
                             "--workdir for a changed sweep, or restore the config it was made with.")
    elif write:
        os.makedirs(run_dir, exist_ok=True)
        # Atomically: a sweep killed mid-write once left an empty file that every rerun failed on.
        write_text_atomically(path, json.dumps(current, indent=1))


def _tokenizer_digest(config: dict) -> str | None:
    """sha256 of the tokenizer model file `config` names, None when it names none that can be read."""
    path = str(dict(dict(config.get("data") or {}).get("tokenizer") or {}).get("model_path") or "")
    if not path or "://" in path or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_run_config(run_dir: str, path: str) -> dict | None:
    """The stored config, or None when there is none. An unreadable one (written by a version that
    did not write atomically, killed mid-write) counts as none while the run has not started;
    once it has a checkpoint or a result, the file is what proves the run's config: stop."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        if latest_checkpoint(run_dir) == 0 and read_result(run_dir) is None:
            return None
        raise SweepError(f"{path} is unreadable ({error.__class__.__name__}) but the run has started; restore the "
                         "file, or delete the run's directory to train it again.") from None


def latest_checkpoint(run_dir: str) -> int:
    """The run's newest committed checkpoint step, 0 for none."""
    from research.training.checkpoint_loading import checkpoint_steps_in
    return max(checkpoint_steps_in(os.path.join(run_dir, "checkpoints")), default=0)


def read_result(run_dir: str) -> dict | None:
    """The run's result, or None while it has not ended. An unreadable result.json (cut short or
    edited outside the sweep: the sweep writes it atomically) also counts as not ended, with a
    warning on stderr: the run then resumes from its checkpoints (or trains again) and its result
    is written anew, so the rerun a killed sweep needs goes on instead of dying in a traceback.
    The result is derived from the run's metrics, so nothing is lost by that."""
    path = os.path.join(run_dir, RESULT_FILE)
    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        _warn_unreadable(path, type(error).__name__)
        return None
    if not isinstance(result, dict) or "status" not in result:
        _warn_unreadable(path, "no run record")
        return None
    return result


_WARNED: set[tuple[str, int]] = set()  # (path, mtime): read_result runs for every run after each run ends


def _warn_unreadable(path: str, why: str) -> None:
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _WARNED:
        _WARNED.add(key)
        print(f"warning: {path} is unreadable ({why}); the run counts as not finished and resumes from its "
              "checkpoints (or trains again), which rewrites it.", file=sys.stderr, flush=True)
