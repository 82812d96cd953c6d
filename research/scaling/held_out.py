"""Does the law predict what it did not see? Fit Approach 3 without the largest budget and
predict that budget's best loss.

The runs are grouped by FLOP budget (isoflop.group_by_budget); every run of the largest
budget is held out, Approach 3 is fitted to the rest, and two predictions are set beside
the best loss observed at the held-out budget:
  at_best_run   L_hat(N, D) at the (N, D) of the held-out budget's best run: the law's error
                where the truth is known;
  optimum       min over N of L_hat(N, C / (FLOPs per token at N)) along the held-out
                budget: what a planner who trusted the law would expect to reach there.
Relative errors are (predicted - observed) / observed. The fit sees the seeds of one (N, D)
as one point (RunTable.merge_replicates), as the full fit does; num_fit_runs and num_held_out
count runs, and the observed best loss is the best run's (the minimum over seeds, as the
sweep's loss_by_budget reads it).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.scaling.chinchilla_fit import PAPER_GRID, InitGrid, fit_chinchilla_law
from research.scaling.isoflop import group_by_budget
from research.scaling.run_table import RunTable, RunTableError

_SIZES_ALONG_BUDGET = 400  # log-spaced N over which the predicted optimum is searched


@dataclasses.dataclass(frozen=True)
class HeldOutPrediction:
    compute: float  # the held-out budget's FLOPs (geometric mean of its runs' compute)
    num_fit_runs: int
    num_held_out: int
    observed_best_loss: float
    best_run_N: float
    best_run_D: float
    predicted_at_best_run: float
    predicted_optimum: float
    predicted_optimum_N: float

    def as_dict(self) -> dict:
        rel = lambda predicted: (predicted - self.observed_best_loss) / self.observed_best_loss
        return {**dataclasses.asdict(self), "relative_error_at_best_run": rel(self.predicted_at_best_run),
                "relative_error_optimum": rel(self.predicted_optimum)}


def predict_held_out_budget(table: RunTable, *, grid: InitGrid = PAPER_GRID) -> HeldOutPrediction:
    """Fit every budget but the largest; predict the largest's best loss (module docstring)."""
    groups = group_by_budget(table)
    if len(groups) < 3:
        raise RunTableError(f"a held-out prediction needs >= 3 FLOP budgets (fit on >= 2, predict 1), found "
                            f"{len(groups)}.")
    held = groups[-1]
    fit_rows = np.concatenate(groups[:-1])
    law = fit_chinchilla_law(table.select(fit_rows).merge_replicates(), grid=grid).law  # seeds: one point
    best = held[np.argmin(table.loss[held])]
    compute = float(np.exp(np.mean(np.log(table.compute[held]))))
    # FLOPs per token as a line in log N through the held-out runs (exactly 6 N when nominal),
    # or through every run when the held-out budget has one size: a line fitted to one point is
    # any line through it (polyfit's minimum-norm one put the optimum at the grid's edge).
    known = held if len(np.unique(table.N[held])) > 1 else np.arange(len(table))
    line = np.polyfit(np.log(table.N[known]), np.log(table.flops_per_token[known]), 1)
    N_grid = np.geomspace(table.N.min() / 10, table.N.max() * 10, _SIZES_ALONG_BUDGET)
    along = law.loss(N_grid, compute / np.exp(np.polyval(line, np.log(N_grid))))
    return HeldOutPrediction(compute=compute, num_fit_runs=int(fit_rows.size), num_held_out=int(held.size),
                             observed_best_loss=float(table.loss[best]), best_run_N=float(table.N[best]),
                             best_run_D=float(table.D[best]),
                             predicted_at_best_run=float(law.loss(table.N[best], table.D[best])),
                             predicted_optimum=float(along.min()), predicted_optimum_N=float(N_grid[along.argmin()]))
