"""Fit every law to a run table and write the report: fit.json and the plots.

One call behind `python -m experiments.scaling_laws.fit` (and any study that ends with a
run table): Approach 3 with bootstrap intervals, Approaches 1 and 2 where the table's
layout allows them (otherwise fit.json says why), Kaplan's L(N), L(D), L(C), and
predictions at a compute budget. Units as in research/scaling/laws.py. Runs repeated with
another seed are fitted as one design point at their geometric mean loss
(RunTable.merge_replicates): fit.json's num_runs counts the table's rows, design_points the
points every fit saw.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from research.atomic_files import unwritable_reason, write_text_atomically
from research.scaling import plots
from research.scaling.chinchilla_fit import BOOTSTRAP_SAMPLES, COARSE_GRID, PAPER_GRID, fit_chinchilla_law
from research.scaling.envelope import fit_envelope
from research.scaling.isoflop import fit_isoflop
from research.scaling.kaplan_fit import fit_kaplan_laws
from research.scaling.laws import BESIROGLU_2024, FLOPS_PER_PARAM_TOKEN, HOFFMANN_2022, PowerLaw
from research.scaling.run_table import RunTableError, read_runs_csv

GOPHER_BUDGET = 5.76e23  # FLOPs: Gopher's training budget, which Hoffmann et al. reallocate into Chinchilla


def fit_run_table(runs_csv: str, output_dir: str, *, compute_budget: float = GOPHER_BUDGET,
                  predict: tuple[float, float] | None = None, bootstrap_samples: int = BOOTSTRAP_SAMPLES,
                  confidence: float = 0.8, init_grid: str = "paper", seed: int = 0,
                  accounting: str = "nominal", write_json: bool = True) -> dict:
    """Fit every law to the runs in `runs_csv`; write fit.json (unless `write_json` is False: a
    caller that adds to the report writes it) and plots to `output_dir`; return the report.

    `accounting` (run_table.ACCOUNTINGS): "nominal" fits N and C = 6 N D from the N column;
    "exact" fits total N and sizing's exact FLOPs (columns N_total, C_exact).
    """
    if not (math.isfinite(compute_budget) and compute_budget > 0):
        raise RunTableError(f"--compute_budget={compute_budget:g} must be a positive number of FLOPs.")
    if predict is not None and not all(math.isfinite(v) and v > 0 for v in predict):
        raise RunTableError(f"--predict_N, --predict_D = {predict} must both be positive.")
    if bootstrap_samples < 0 or not 0 < confidence < 1:
        raise RunTableError(f"--bootstrap={bootstrap_samples} must be >= 0 and --confidence={confidence} "
                                    "in (0, 1).")
    # numpy's generators take seeds >= 0: -1 was a traceback after the whole grid fit. The sweep's
    # fit.seed has the same rule (experiments/scaling_laws/sweep.py _check_fit_settings).
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RunTableError(f"--seed={seed!r} (the bootstrap's seed) must be a whole number >= 0, e.g. --seed=0.")
    # Before reading the table: a file in output_dir's path was a NotADirectoryError traceback.
    reason = unwritable_reason(output_dir)
    if reason:
        raise RunTableError(f"--output_dir={output_dir} cannot be used: {reason}; choose another --output_dir.")
    runs = read_runs_csv(runs_csv, accounting)
    table = runs.merge_replicates()  # seeds of one (N, D) are one design point (run_table.py)
    table.require(5, "Approach 3 (5 parameters)")
    os.makedirs(output_dir, exist_ok=True)
    grid = PAPER_GRID if init_grid == "paper" else COARSE_GRID
    approach3 = fit_chinchilla_law(table, grid=grid, bootstrap_samples=bootstrap_samples,
                                           confidence=confidence, seed=seed)
    approach1, approach2 = _attempt(fit_envelope, table), _attempt(fit_isoflop, table)
    kaplan = fit_kaplan_laws(table)
    # Exact accounting: training costs f(N) FLOPs per token, not 6 N; the optimum of the fitted
    # law along C = f(N) D (f a power law through the runs, as isoflop and held_out read it).
    flops_per_token = None if accounting == "nominal" else PowerLaw.fit(table.N, table.flops_per_token)

    report = {
        "runs_csv": os.path.abspath(runs_csv), "num_runs": len(runs), "design_points": len(table),
        "accounting": accounting, "excluded": [{"line": row.line, "reason": row.reason} for row in table.excluded],
        "approach3": _approach3(approach3, flops_per_token),
        "approach1": _describe(approach1), "approach2": _describe(approach2),
        "kaplan": {k: _describe(v) for k, v in kaplan.items()},
        "prediction": _prediction(compute_budget, predict, approach3.law, approach1, approach2, flops_per_token,
                                  (float(table.N.min()), float(table.N.max()))),
        "reference": {"hoffmann_2022": HOFFMANN_2022.as_dict(),
                      "besiroglu_2024": BESIROGLU_2024.as_dict()},
    }
    report["plots"] = _plot(table, approach3.law, approach1, approach2, kaplan, compute_budget, output_dir,
                            flops_per_token)
    if write_json:  # a reader (or a kill) never finds half a fit.json
        write_text_atomically(os.path.join(output_dir, "fit.json"), json.dumps(_finite(report), indent=2))
    return report


def _attempt(fit, table):
    """A fit, or the reason this table does not allow it (e.g. no IsoFLOP structure)."""
    try:
        return fit(table)
    except RunTableError as error:
        return str(error)


def _describe(fit) -> dict:
    return {"skipped": fit} if isinstance(fit, str) else fit.as_dict()


def _allocation(N: float, D: float) -> dict:
    return {"N_opt": float(N), "D_opt": float(D), "tokens_per_parameter": float(D / N)}


def _approach3(approach3, flops_per_token: PowerLaw | None) -> dict:
    """Approach 3's fit, with a and b (and their intervals) only when the law has an optimum:
    for a law that does not fall with both N and D (optimum_problem) beta / (alpha + beta) is the
    exponent of nothing, under either accounting; "optimum_skipped" says why they are absent."""
    problem = approach3.law.optimum_problem()
    if not problem:
        return {**approach3.as_dict(), **_optimum_exponents(approach3, flops_per_token)}
    out = {**approach3.as_dict(), "a": None, "b": None, "optimum_skipped": problem}
    out["intervals"] = {k: v for k, v in out["intervals"].items() if k not in ("a", "b", "G")}
    return out


def _optimum_exponents(approach3, flops_per_token: PowerLaw | None) -> dict:
    """Under exact accounting, `optimum_exact_flops`: the law's a and b along C = f(N) D (its
    a, b above assume 6 N D) with bootstrap intervals, and f; nothing under nominal accounting."""
    if flops_per_token is None:
        return {}
    a, b = approach3.law.optimal_exponents(flops_per_token)
    out = {"flops_per_token": flops_per_token.as_dict(), "a": a, "b": b}
    if approach3.bootstrap_laws:
        tail = 50.0 * (1.0 - approach3.confidence)
        # Over the resamples with an optimum, as Approach3Fit.intervals' a and b.
        draws = np.array([law.optimal_exponents(flops_per_token) for law in approach3.bootstrap_with_optimum()])
        if len(draws):
            out["intervals"] = {name: [float(q) for q in np.percentile(draws[:, i], [tail, 100.0 - tail])]
                                for i, name in enumerate(("a", "b"))}
    return {"optimum_exact_flops": out}


def _prediction(compute_budget, predict, law, approach1, approach2, flops_per_token=None,
                N_range=(0.0, math.inf)) -> dict:
    out = {"compute_budget": compute_budget}
    problem = law.optimum_problem()
    if problem:
        out["approach3"] = {"skipped": problem}
    else:
        N3, D3 = law.compute_optimal(compute_budget, flops_per_token)
        out["approach3"] = {**_allocation(N3, D3), "loss": float(law.loss(N3, D3))}
    if not problem and flops_per_token is not None and not N_range[0] <= N3 <= N_range[1]:
        # f(N) = k N^s was fitted over the runs' sizes; s < 1 extrapolated far enough would cost
        # less than 6 N per token, which no transformer does.
        out["approach3"]["warning"] = (f"N_opt={N3:.3g} lies outside the runs' N [{N_range[0]:.3g}, "
                                       f"{N_range[1]:.3g}] over which FLOPs per token were fitted: an extrapolation")
    for name, fit in (("approach1", approach1), ("approach2", approach2)):
        if not isinstance(fit, str):
            out[name] = _allocation(fit.N_opt(compute_budget), fit.D_opt(compute_budget))
    if predict is not None:
        # C in the fit's own accounting: under exact accounting N is N_total and C is f(N) D (it was
        # 6 N D there, up to 1.53x off on cpu_tiny's ladder beside the fit's own C).
        per_token = FLOPS_PER_PARAM_TOKEN * predict[0] if flops_per_token is None else flops_per_token(predict[0])
        out["loss_at"] = {"N": predict[0], "D": predict[1], "loss": float(law.loss(*predict)),
                          "compute": float(per_token * predict[1])}
    return out


def _plot(table, law, approach1, approach2, kaplan, compute_budget, output_dir, flops_per_token) -> list[str]:
    path = lambda name: os.path.join(output_dir, name)
    written = [plots.plot_law_contours(law, table, path("law_contours.png"), compute_budget=compute_budget,
                                       flops_per_token=flops_per_token),
               plots.plot_loss_vs_compute(table, None if isinstance(approach1, str) else approach1.envelope,
                                          None if isinstance(kaplan["C"], str) else kaplan["C"],
                                          path("loss_vs_compute.png"))]
    if not isinstance(approach2, str):
        written.append(plots.plot_isoflop_profiles(approach2, path("isoflop.png")))
    elif os.path.exists(path("isoflop.png")):  # an earlier fit's profiles, which this fit does not have
        os.remove(path("isoflop.png"))
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
