"""Fit scaling laws to a run table: `python -m experiments.scaling_laws.fit --runs_csv=PATH --output_dir=DIR`.

The CSV needs columns N (parameters), D (tokens), loss (nats/token); optional `status`
(rows != "ok" are left out and reported), `run` (training-curve id, for Approach 1) and
`C` (nominal FLOP budget, to group IsoFLOP profiles). Writes DIR/fit.json with
  approach3: E, A, B, alpha, beta, a, b, G and bootstrap intervals (Hoffmann et al. 2022);
  approach1 / approach2: N_opt ∝ C^a, D_opt ∝ C^b (or why the table does not allow them);
  kaplan: L(N), L(D), L(C) = E + (X_c/X)^alpha;
  prediction: N_opt, D_opt, tokens per parameter at --compute_budget (C = 6ND) from each
  approach, and the predicted loss at (--predict_N, --predict_D) if given;
and isoflop.png, loss_vs_compute.png, law_contours.png. Example, with a quick coarse grid:
  python -m experiments.scaling_laws.fit --runs_csv=runs.csv --output_dir=/tmp/fit --init_grid=coarse
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
from absl import app, flags

from research import scaling
from research.scaling import plots

_RUNS_CSV = flags.DEFINE_string("runs_csv", None, "CSV of runs with columns N, D, loss (and optional status, run, C).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for fit.json and the PNG plots.")
_COMPUTE_BUDGET = flags.DEFINE_float("compute_budget", 5.76e23,
                                     "FLOPs to plan for (default: Gopher's budget, Hoffmann et al. Table 3).")
_PREDICT_N = flags.DEFINE_float("predict_N", None, "Parameters of a model whose loss to predict (with --predict_D).")
_PREDICT_D = flags.DEFINE_float("predict_D", None, "Tokens of a model whose loss to predict (with --predict_N).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 100, "Bootstrap resamples for Approach 3's intervals (0 = none).")
_CONFIDENCE = flags.DEFINE_float("confidence", 0.8, "Interval coverage: 0.8 = 10th-90th percentiles.")
_INIT_GRID = flags.DEFINE_enum("init_grid", "paper", ["paper", "coarse"],
                               "Approach 3 starts: the paper's 4500-point grid, or a 72-point one for quick looks.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the bootstrap resampling.")
flags.mark_flags_as_required(["runs_csv", "output_dir"])


def fit_run_table(runs_csv: str, output_dir: str, *, compute_budget: float = 5.76e23,
                  predict: tuple[float, float] | None = None, bootstrap_samples: int = 100,
                  confidence: float = 0.8, init_grid: str = "paper", seed: int = 0) -> dict:
    """Fit every law to the runs in `runs_csv`; write fit.json and plots to `output_dir`; return the report."""
    if not (math.isfinite(compute_budget) and compute_budget > 0):
        raise scaling.RunTableError(f"--compute_budget={compute_budget:g} must be a positive number of FLOPs.")
    if predict is not None and not all(math.isfinite(v) and v > 0 for v in predict):
        raise scaling.RunTableError(f"--predict_N, --predict_D = {predict} must both be positive.")
    if bootstrap_samples < 0 or not 0 < confidence < 1:
        raise scaling.RunTableError(f"--bootstrap={bootstrap_samples} must be >= 0 and --confidence={confidence} "
                                    "in (0, 1).")
    table = scaling.read_runs_csv(runs_csv)
    table.require(5, "Approach 3 (5 parameters)")
    os.makedirs(output_dir, exist_ok=True)
    grid = scaling.PAPER_GRID if init_grid == "paper" else scaling.COARSE_GRID
    approach3 = scaling.fit_chinchilla_law(table, grid=grid, bootstrap_samples=bootstrap_samples,
                                           confidence=confidence, seed=seed)
    approach1, approach2 = _attempt(scaling.fit_envelope, table), _attempt(scaling.fit_isoflop, table)
    kaplan = scaling.fit_kaplan_laws(table)

    report = {
        "runs_csv": os.path.abspath(runs_csv), "num_runs": len(table),
        "excluded": [{"line": row.line, "reason": row.reason} for row in table.excluded],
        "approach3": approach3.as_dict(),
        "approach1": _describe(approach1), "approach2": _describe(approach2),
        "kaplan": {k: _describe(v) for k, v in kaplan.items()},
        "prediction": _prediction(compute_budget, predict, approach3.law, approach1, approach2),
        "reference": {"hoffmann_2022": scaling.HOFFMANN_2022.as_dict(),
                      "besiroglu_2024": scaling.BESIROGLU_2024.as_dict()},
    }
    report["plots"] = _plot(table, approach3.law, approach1, approach2, kaplan, compute_budget, output_dir)
    with open(os.path.join(output_dir, "fit.json"), "w") as f:
        json.dump(_finite(report), f, indent=2)
    return report


def _attempt(fit, table):
    """A fit, or the reason this table does not allow it (e.g. no IsoFLOP structure)."""
    try:
        return fit(table)
    except scaling.RunTableError as error:
        return str(error)


def _describe(fit) -> dict:
    return {"skipped": fit} if isinstance(fit, str) else fit.as_dict()


def _allocation(N: float, D: float) -> dict:
    return {"N_opt": float(N), "D_opt": float(D), "tokens_per_parameter": float(D / N)}


def _prediction(compute_budget, predict, law, approach1, approach2) -> dict:
    N3, D3 = law.compute_optimal(compute_budget)
    out = {"compute_budget": compute_budget,
           "approach3": {**_allocation(N3, D3), "loss": float(law.loss(N3, D3))}}
    for name, fit in (("approach1", approach1), ("approach2", approach2)):
        if not isinstance(fit, str):
            out[name] = _allocation(fit.N_opt(compute_budget), fit.D_opt(compute_budget))
    if predict is not None:
        out["loss_at"] = {"N": predict[0], "D": predict[1], "loss": float(law.loss(*predict)),
                          "compute": scaling.FLOPS_PER_PARAM_TOKEN * predict[0] * predict[1]}
    return out


def _plot(table, law, approach1, approach2, kaplan, compute_budget, output_dir) -> list[str]:
    path = lambda name: os.path.join(output_dir, name)
    written = [plots.plot_law_contours(law, table, path("law_contours.png"), compute_budget=compute_budget),
               plots.plot_loss_vs_compute(table, None if isinstance(approach1, str) else approach1.envelope,
                                          None if isinstance(kaplan["C"], str) else kaplan["C"],
                                          path("loss_vs_compute.png"))]
    if not isinstance(approach2, str):
        written.append(plots.plot_isoflop_profiles(approach2, path("isoflop.png")))
    return [os.path.basename(p) for p in written]


def _finite(value):
    """JSON-safe: numpy scalars to Python, inf/NaN (e.g. a degenerate X_c) to null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    if (_PREDICT_N.value is None) != (_PREDICT_D.value is None):
        sys.exit("error: pass --predict_N and --predict_D together (the loss of N parameters on D tokens).")
    predict = None if _PREDICT_N.value is None else (_PREDICT_N.value, _PREDICT_D.value)
    try:
        report = fit_run_table(_RUNS_CSV.value, _OUTPUT_DIR.value, compute_budget=_COMPUTE_BUDGET.value,
                               predict=predict, bootstrap_samples=_BOOTSTRAP.value, confidence=_CONFIDENCE.value,
                               init_grid=_INIT_GRID.value, seed=_SEED.value)
    except scaling.RunTableError as error:
        sys.exit(f"error: {error}")
    for row in report["excluded"]:
        print(f"left out line {row['line']}: {row['reason']}")
    fit3, plan = report["approach3"], report["prediction"]["approach3"]
    print(f"approach3: E={fit3['E']:.4g} A={fit3['A']:.4g} B={fit3['B']:.4g} alpha={fit3['alpha']:.4g} "
          f"beta={fit3['beta']:.4g} a={fit3['a']:.4g} b={fit3['b']:.4g} ({fit3['seconds']:.1f} s)")
    print(f"at C={report['prediction']['compute_budget']:.3g}: N_opt={plan['N_opt']:.4g} D_opt={plan['D_opt']:.4g} "
          f"tokens/param={plan['tokens_per_parameter']:.3g} loss={plan['loss']:.4g}")
    print(f"wrote {os.path.join(_OUTPUT_DIR.value, 'fit.json')} and {', '.join(report['plots'])}")


if __name__ == "__main__":
    app.run(main)
