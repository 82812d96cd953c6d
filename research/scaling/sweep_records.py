"""What a sweep records for each run, and the tables it writes: runs.csv, runs.jsonl, curves.csv.

One record per planned run, whatever became of it (status "ok", "failed" or "pending"):

  run, status, model, num_layers, d_model
  N                 parameters as the sweep's param_count says (the N of the fit)
  N_total, N_non_embedding
  D                 token positions consumed: steps x batch_size x seq_len (padding included)
  D_loss_tokens     target tokens that carried loss (non-padding), summed from every step's
                    metrics; empty when a step's record is missing
  steps, batch_size, seq_len
  C                 the IsoFLOP budget the run belongs to (empty for token-budget runs)
  C_6ND, C_exact    6 N D, and sizing's exact train FLOPs per token x D
  loss              final validation loss (nats/token), the value the fit uses
  eval_loss, train_loss   final validation loss and last step's training loss
  seconds, resumed_from_step
  seed, learning_rate_scale   train.seed, and the run's learning rate / config.opt.learning_rate
  error

runs.csv is what research/scaling/run_table.py reads (N, D, loss, status, run, C): a failed
or pending run keeps its row but has no loss, so every fit reports and leaves it out.
runs.jsonl adds the loss curves; curves.csv holds them as (run, N, D, loss) rows for
Approach 1, each loss the mean training loss over the trailing 10% of steps.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Mapping, Sequence

from research.atomic_files import write_text_atomically
from research.scaling.sweep_plan import PlannedRun

CSV_COLUMNS = ("run", "status", "model", "num_layers", "d_model", "N", "N_total", "N_non_embedding", "D",
               "D_loss_tokens", "steps", "batch_size", "seq_len", "C", "C_6ND", "C_exact", "loss", "eval_loss",
               "train_loss", "seconds", "resumed_from_step", "seed", "learning_rate_scale", "error")
CURVE_POINTS = 16  # log-spaced points per run in curves.csv
Record = dict[str, Any]


def planned_record(run: PlannedRun) -> Record:
    """The record of a run before (or without) training: everything the plan knows."""
    return {"run": run.run_id, "status": "pending", "model": run.model.name,
            "num_layers": run.model.config.num_layers, "d_model": run.model.config.d_model, "N": run.N,
            "N_total": run.model.params_total, "N_non_embedding": run.model.params_non_embedding,
            "D": run.tokens, "D_loss_tokens": None, "steps": run.num_steps, "batch_size": run.batch_size,
            "seq_len": run.seq_len, "C": run.budget, "C_6ND": run.compute_6nd, "C_exact": run.compute_exact,
            "loss": None, "eval_loss": None, "train_loss": None, "seconds": None, "resumed_from_step": None,
            "seed": run.seed, "learning_rate_scale": run.learning_rate_scale, "error": None, "curve": None}


def finished_record(run: PlannedRun, metrics: Sequence[Mapping[str, Any]], *, seconds: float,
                    resumed_from_step: int, error: str | None = None) -> Record:
    """The record of a run that ended, from its metrics.jsonl records; `error` marks it failed.

    A run that ended without error but with a non-finite or missing final validation loss is
    failed too: a fit must never see it as a number.
    """
    record = planned_record(run)
    steps = {int(m["step"]): m for m in metrics if "loss" in m and m.get("step", 0) >= 1}
    evals = sorted((int(m["step"]), float(m["eval_loss"])) for m in metrics if "eval_loss" in m)
    final_eval = evals[-1][1] if evals and evals[-1][0] == run.num_steps else None
    if error is None and not (final_eval is not None and math.isfinite(final_eval)):
        error = f"no finite validation loss at step {run.num_steps} (last evaluation: {evals[-1] if evals else None})"
    order = sorted(steps)
    record.update(
        status="failed" if error else "ok", error=error, seconds=round(seconds, 3), resumed_from_step=resumed_from_step,
        loss=None if error else final_eval, eval_loss=final_eval,
        train_loss=float(steps[order[-1]]["loss"]) if order else None,
        D_loss_tokens=int(sum(float(steps[s]["num_tokens"]) for s in order))
        if order == list(range(1, run.num_steps + 1)) else None,
        curve={"step": order, "train_loss": [float(steps[s]["loss"]) for s in order],
               "eval_step": [s for s, _ in evals], "eval_loss": [v for _, v in evals]})
    return record


def curve_rows(record: Record, num_points: int = CURVE_POINTS) -> list[Record]:
    """(run, N, D, loss) at log-spaced steps of an ok run; loss = mean train loss of the
    trailing 10% of steps (at least one), which smooths batch noise without lagging far."""
    if record["status"] != "ok" or not record["curve"] or not record["curve"]["step"]:
        return []
    steps, losses = record["curve"]["step"], record["curve"]["train_loss"]
    tokens_per_step = record["batch_size"] * record["seq_len"]
    marks = sorted({max(1, round(len(steps) ** (i / (num_points - 1)))) for i in range(num_points)})
    rows = []
    for mark in marks:  # mark = how many steps have been taken
        window = losses[max(0, mark - max(1, round(0.1 * mark))):mark]
        rows.append({"run": record["run"], "status": "ok", "N": record["N"], "D": steps[mark - 1] * tokens_per_step,
                     "loss": sum(window) / len(window)})
    return rows


def _csv_text(rows: Sequence[Record], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return out.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def write_tables(records: Sequence[Record], directory: str) -> dict[str, str]:
    """Write runs.csv, runs.jsonl and curves.csv for `records` into `directory`; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {name: os.path.join(directory, name) for name in ("runs.csv", "runs.jsonl", "curves.csv")}
    write_text_atomically(paths["runs.csv"], _csv_text(records, CSV_COLUMNS))
    write_text_atomically(paths["runs.jsonl"], "".join(json.dumps(json_safe(r), allow_nan=False) + "\n"
                                                   for r in records))
    curves = [row for r in records for row in curve_rows(r)]
    write_text_atomically(paths["curves.csv"], _csv_text(curves, ("run", "status", "N", "D", "loss")))
    return paths


def json_safe(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python numbers, NaN / infinity (a diverging curve) to null."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value
