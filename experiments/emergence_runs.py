"""What a study's finished sizes were trained with: the identity a rerun of the study is checked
against before any work (check_trained_runs), and what experiments.emergence_seeds compares across
the workdirs of several seeds (recorded_study). The data is checked by
experiments.emergence_plan.prepare_data."""
from __future__ import annotations

import os
from typing import Any

import ml_collections

from experiments.emergence_plan import read_json
from research.models.config import ConfigError


def check_trained_runs(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Before any work: a size already trained in `workdir` was trained as this config asks
    (model, optimizer and every learning rate, seed, batch and sequence sizes, num_steps, z_loss,
    dropout, compute dtype, checkpoint grid), else
    a finished run would be reported under the new settings without being retrained.
    The data is checked by prepare_data."""
    from experiments.emergence import train_config
    from research.training import workdir as workdir_lib

    for size in config.sizes:
        run_dir = os.path.join(workdir, "runs", size)
        saved = workdir_lib.newest_saved_config(os.path.join(run_dir, "checkpoints"))
        if saved is None:
            continue
        _, saved = saved
        wanted = train_config(config, size, {}).to_dict()
        differences = workdir_lib.fingerprint_differences(_training_identity(saved), _training_identity(wanted))
        if differences:
            raise ConfigError(f"{run_dir} was trained with other settings ({differences}); use a new --workdir, or "
                              f"delete {run_dir} to train that size again.")


# Study config fields that runs of one study may differ in: none changes the trained weights or
# the evaluations (the measured peak FLOP/s, a session's stop, logging, the time estimate, the
# device mesh), nor what experiments.emergence_seeds reads (its --sizes replace mirage_sizes).
FREE_STUDY_FIELDS = ("train.peak_flops", "train.stop_after_steps", "train.progress_bar", "train.log_every_steps",
                     "estimate", "mesh", "report.metrics", "report.plot_metrics", "report.mirage_sizes")


# The names recorded_study gives the digests the study checks a rerun by.
STUDY_DIGESTS = ("mixture.* or tokenizer.* (data/manifest.json's fingerprint)",
                 "eval.* (the fingerprint of runs/*/evals)")


def recorded_study(workdir: str, sizes: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(study, {size: run}) that the finished study in `workdir` ran with, as flattened fields.
    study: the digests the study checks a rerun by (STUDY_DIGESTS: the mixture's in
    data/manifest.json, the evaluations' in every runs/<size>/evals file), and the config its
    report records (report/results.json's metadata, less FREE_STUDY_FIELDS; a report written
    before 2026-12-06 records none). run: each size's training identity (what check_trained_runs
    compares, from its newest checkpoint)."""
    import glob

    from research.training import workdir as workdir_lib

    evals = sorted({read_json(path).get("metadata", {}).get("fingerprint") or "" for size in sizes
                    for path in glob.glob(os.path.join(glob.escape(workdir), "runs", size, "evals", "*.json"))})
    study = dict(zip(STUDY_DIGESTS, (read_json(os.path.join(workdir, "data", "manifest.json")).get("fingerprint"),
                                     evals)))
    config = read_json(os.path.join(workdir, "report", "results.json")).get("metadata", {}).get("config") or {}
    study.update({k: v for k, v in workdir_lib.flatten_config(config).items()
                  if not any(k == f or k.startswith(f + ".") for f in FREE_STUDY_FIELDS)})
    runs = {}
    for size in sizes:
        saved = workdir_lib.newest_saved_config(os.path.join(workdir, "runs", size, "checkpoints"))
        runs[size] = _training_identity(saved[1]) if saved else {}
    return study, runs


def _training_identity(run: dict[str, Any]) -> dict[str, Any]:
    """What decides a size's trained weights and its evaluations, flattened: the workdir fingerprint
    (model, seed, sequence length) without the data (prepare_data checks it), every optimizer number,
    the batch size, num_steps, z_loss, dropout, the compute dtype and the checkpoint grid."""
    from research.training import workdir as workdir_lib

    identity = {k: v for k, v in workdir_lib.run_fingerprint({**run, "data": {}}).items()
                if not k.startswith("data.")}
    identity.update({f"opt.{k}": list(v) if isinstance(v, tuple) else v for k, v in dict(run.get("opt", {})).items()})
    identity["train.batch_size"] = dict(run.get("train", {})).get("batch_size")
    # The schedule's length: a finished size continued to a larger num_steps would follow a
    # stretched schedule (its learning rate rising again), a run no fresh one equals.
    identity["train.num_steps"] = dict(run.get("train", {})).get("num_steps")
    # Free on a pretraining resume (warned there), not in a study: they change the trained weights
    # (z_loss, dropout) or the evaluations (the compute dtype), and a finished size rerun with
    # another value was reported under it without being retrained.
    identity["train.z_loss"] = dict(run.get("train", {})).get("z_loss")
    identity.update({f"model.{k}": dict(run.get("model", {})).get(k) for k in ("dropout_rate", "dtype")})
    # The curve's grid: evaluate_run reads the checkpoints on it, and a finished size rerun with another
    # value lost the points off the new grid from every table, without a word.
    identity["checkpoint.every_steps"] = dict(run.get("checkpoint", {})).get("every_steps")
    return identity
