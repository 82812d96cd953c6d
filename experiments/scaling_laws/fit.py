"""Fit scaling laws to a run table: `python -m experiments.scaling_laws.fit --runs_csv=PATH --output_dir=DIR`.

The CSV needs columns N (parameters), D (tokens), loss (nats/token); optional `status`
(rows != "ok" are left out and reported), `run` (training-curve id, for Approach 1: rows of
one id are one model's curve; ids that each name one row are final losses) and
`C` (nominal FLOP budget, to group IsoFLOP profiles) and `seed` (rows at one N, D and C with
different seeds are one design point, fitted at their geometric mean loss; without the
column no rows are merged). Writes DIR/fit.json with
  approach3: E, A, B, alpha, beta, a, b, G and bootstrap intervals (Hoffmann et al. 2022);
  approach1 / approach2: N_opt ∝ C^a, D_opt ∝ C^b (or why the table does not allow them),
    Approach 2's budgets left out of N_opt(C) with the reason (e.g. an extrapolated vertex),
    all printed too;
  kaplan: L(N), L(D), L(C) = E + (X_c/X)^alpha;
  prediction: N_opt, D_opt, tokens per parameter at --compute_budget (C = 6ND) from each
  approach, and the predicted loss at (--predict_N, --predict_D) if given;
and isoflop.png, loss_vs_compute.png, law_contours.png. A thin absl main around
research.scaling.report.fit_run_table. Example, with a quick coarse grid:
  python -m experiments.scaling_laws.fit --runs_csv=runs.csv --output_dir=/tmp/fit --init_grid=coarse
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from research.scaling.chinchilla_fit import MIN_BOOTSTRAP
from research.scaling.report import GOPHER_BUDGET, fit_run_table
from research.scaling.run_table import RunTableError


def _define_flags() -> None:
    # Defined only when run as a program (as experiments.evaluate does): importing this module
    # (tests, notebooks, another entry point in the same process) adds no global flags, whose
    # names (output_dir, seed) collide with the other entry points'.
    flags.DEFINE_string("runs_csv", None, "CSV of runs with columns N, D, loss (and optional status, run, C).")
    flags.DEFINE_string("output_dir", None, "Directory for fit.json and the PNG plots.")
    flags.DEFINE_float("compute_budget", GOPHER_BUDGET, "FLOPs to plan for (default: Gopher's training budget).")
    flags.DEFINE_float("predict_N", None, "Parameters of a model whose loss to predict (with --predict_D).")
    flags.DEFINE_float("predict_D", None, "Tokens of a model whose loss to predict (with --predict_N).")
    flags.DEFINE_integer("bootstrap", 4000, f"Bootstrap resamples for Approach 3's intervals (0 = none; else at "
                         f"least {MIN_BOOTSTRAP}).")
    flags.DEFINE_float("confidence", 0.8, "Interval coverage: 0.8 = 10th-90th percentiles.")
    flags.DEFINE_enum("init_grid", "paper", ["paper", "coarse"],
                      "Approach 3 starts: the paper's 4500-point grid, or a 72-point one for quick looks.")
    flags.DEFINE_integer("seed", 0, "Seed of the bootstrap resampling, a whole number >= 0.")
    flags.mark_flags_as_required(["runs_csv", "output_dir"])


def bootstrap_error(count: int) -> str | None:
    """Why `count` resamples cannot give Approach 3's intervals, in one line, or None."""
    if count == 0 or count >= MIN_BOOTSTRAP:
        return None
    # The sweep's fit.bootstrap has the same rule (experiments/scaling_laws/sweep.py).
    return (f"--bootstrap={count} must be 0 (no intervals) or at least {MIN_BOOTSTRAP} resamples (fewer give "
            "percentile intervals that move with the resampling); pass --bootstrap=4000, or --bootstrap=0 for none.")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    f = flags.FLAGS
    problem = bootstrap_error(f.bootstrap)  # before the fit, whose L-BFGS starts alone take a while
    if problem:
        sys.exit(f"error: {problem}")
    if (f.predict_N is None) != (f.predict_D is None):
        sys.exit("error: pass --predict_N and --predict_D together (the loss of N parameters on D tokens).")
    predict = None if f.predict_N is None else (f.predict_N, f.predict_D)
    try:
        report = fit_run_table(f.runs_csv, f.output_dir, compute_budget=f.compute_budget, predict=predict,
                               bootstrap_samples=f.bootstrap, confidence=f.confidence, init_grid=f.init_grid,
                               seed=f.seed)
    except RunTableError as error:
        sys.exit(f"error: {error}")
    for row in report["excluded"]:
        print(f"left out line {row['line']}: {row['reason']}")
    fit3, plan = report["approach3"], report["prediction"]["approach3"]
    print(f"approach3: E={fit3['E']:.4g} A={fit3['A']:.4g} B={fit3['B']:.4g} alpha={fit3['alpha']:.4g} "
          f"beta={fit3['beta']:.4g} " + (f"a={fit3['a']:.4g} b={fit3['b']:.4g}" if fit3["a"] is not None
                                          else "a, b: none (no compute-optimal allocation)")
          + f" ({fit3['seconds']:.1f} s)")
    if "skipped" in plan:
        print(f"at C={report['prediction']['compute_budget']:.3g}: no compute-optimal allocation: {plan['skipped']}")
    else:
        print(f"at C={report['prediction']['compute_budget']:.3g}: N_opt={plan['N_opt']:.4g} "
              f"D_opt={plan['D_opt']:.4g} tokens/param={plan['tokens_per_parameter']:.3g} loss={plan['loss']:.4g}")
    for line in approach_lines(report):
        print(line)
    print(f"wrote {os.path.join(f.output_dir, 'fit.json')} and {', '.join(report['plots'])}")


def approach_lines(report: dict) -> list[str]:
    """Approaches 1 and 2's exponent, or why the table does not allow them, and each budget
    Approach 2 left out of N_opt(C) (an extrapolated IsoFLOP vertex among them) with the reason."""
    lines = []
    for name in ("approach1", "approach2"):
        fit = report[name]
        if isinstance(fit.get("skipped"), str):  # the whole approach: report._describe
            lines.append(f"{name}: skipped: {fit['skipped']}")
            continue
        lines.append(f"{name}: N_opt ∝ C^{fit['a']:.4g}, D_opt ∝ C^{fit['b']:.4g}")
        lines.extend(f"{name}: left out {reason}" for reason in fit.get("skipped", []))
    return lines


if __name__ == "__main__":
    _define_flags()
    app.run(main)
