"""Kaplan-style single-variable laws, each with an irreducible term: L(X) = E + (X_c / X)^alpha.

Kaplan et al. 2020 fit L(N) on models trained near convergence, L(D) on the largest model
with early stopping, L(C) on the compute frontier. From a run table of any origin we use:
  L(N): for each model size, its lowest loss (its best-trained run);
  L(D): data-limited runs only (`data_limited_rows`), the lowest loss at each D;
  L(C): the compute frontier (envelope.compute_frontier: each budget once, at its best run).

Which runs are data-limited. Kaplan et al. fit L(D) to their largest model, early-stopped,
so that D and not N limits the loss. A sweep gives every run its own D, so "lowest loss per
D" would fit every run, size-limited ones included. The rule here: runs are grouped by FLOP
budget (isoflop.group_by_budget); within a budget with >= 3 sizes, a run is data-limited
when its N is at least that of the budget's lowest-loss run: a larger model on fewer tokens
did no better, so tokens, not parameters, bound it (the right arm of the IsoFLOP valley).
In budgets with fewer than 3 sizes (a token-budget design) only runs of the table's largest
N count, Kaplan's own choice.
Each is fitted with Approach 3's objective (Huber on log residuals, LSE form, float64
L-BFGS from a grid), as L = exp(e) + exp(a - alpha log X), i.e. X_c = exp(a / alpha).
"""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from research.scaling.envelope import compute_frontier
from research.scaling.huber_lse import HUBER_GTOL, huber_lse_value_and_grad
from research.scaling.isoflop import MIN_SIZES_PER_PROFILE, group_by_budget
from research.scaling.laws import SaturatingPowerLaw
from research.scaling.lbfgs import minimize_batched
from research.scaling.run_table import RunTable, RunTableError

NUM_PARAMETERS = 3  # E, X_c, alpha
# More points than parameters, as Approach 3 (chinchilla_fit.MIN_DESIGN_POINTS): on 3 points the
# law interpolates them exactly (objective ~1e-25), so its parameters carry all the noise and
# nothing measures the misfit. A 3-budget sweep's L(C) was reported as a fit.
MIN_POINTS = NUM_PARAMETERS + 1
# Starts that have not converged by then drift along a degenerate valley (alpha -> 0 with
# X_c -> inf, where the power law merges into E) and never hold the best objective.
MAX_EVALUATIONS = 1000
# Starts (a, e, alpha): a spans alpha * ln X_c for X_c from ~1 to ~1e20 at alpha up to ~1.
KAPLAN_GRID = (np.arange(0.0, 25.1, 2.5), np.arange(-1.0, 1.01, 0.5), np.arange(0.0, 2.01, 0.25))


@dataclasses.dataclass(frozen=True)
class KaplanFit:
    """A single-variable law and the points it was fitted to."""

    variable: str  # "N", "D" or "C"
    law: SaturatingPowerLaw
    X: np.ndarray
    loss: np.ndarray
    objective: float

    def problem(self) -> str | None:
        """Why the fitted law is not a scaling law, or None: with alpha <= 0 its loss does not fall
        as X grows (seen on one IsoFLOP budget's runs, where a larger N trained on fewer tokens)."""
        if self.law.alpha > 0:
            return None
        return (f"alpha={self.law.alpha:.3g} <= 0: the fitted loss does not fall as {self.variable} grows over these "
                f"{self.X.size} points, so this is no scaling law in {self.variable}; fit more runs (more budgets, "
                "sizes trained closer to convergence)")

    def as_dict(self) -> dict:
        problem = self.problem()
        return {**self.law.as_dict(), "num_points": int(self.X.size), "objective": self.objective,
                **({"problem": problem} if problem else {})}


def fit_saturating_power_law(X, loss, *, variable: str = "X", grid=KAPLAN_GRID,
                             max_evaluations: int = MAX_EVALUATIONS) -> KaplanFit:
    """Fit L(X) = E + (X_c / X)^alpha to points (X, loss) by Huber-LSE L-BFGS from `grid`."""
    return _fit_laws({variable: (X, loss)}, grid, max_evaluations)[variable]


def _fit_laws(points: dict[str, tuple], grid, max_evaluations: int) -> dict[str, KaplanFit]:
    """Fit one law per entry of `points` in a single batched solve (one compilation for all).

    The point sets are concatenated along R, padded to a multiple of 64 with dummy points
    (X = loss = 1), and each problem weights only its own points.
    """
    sets = {variable: _check(variable, X, loss) for variable, (X, loss) in points.items()}
    starts_IK = np.array(list(itertools.product(*grid)), np.float64)  # (a, e, alpha): huber_lse's J = 1 order
    total = sum(X.size for X, _ in sets.values())
    padded = 64 * -(-total // 64)
    log_X, log_loss, weight_LR = np.zeros(padded), np.zeros(padded), np.zeros((len(sets), padded))
    offset = 0
    for law, (X, loss) in enumerate(sets.values()):
        span = slice(offset, offset + X.size)
        log_X[span], log_loss[span], weight_LR[law, span] = np.log(X), np.log(loss), 1.0
        offset += X.size
    I = len(starts_IK)
    with jax.enable_x64(True):
        result = minimize_batched(huber_lse_value_and_grad, jnp.asarray(np.tile(starts_IK, (len(sets), 1))),
                                  jnp.asarray(np.repeat(weight_LR, I, axis=0)),
                                  (jnp.asarray(log_X)[None], jnp.asarray(log_loss)), max_evaluations=max_evaluations,
                                  gtol=HUBER_GTOL)
    fits = {}
    for law, (variable, (X, loss)) in enumerate(sets.items()):
        value_I = result.value_P[law * I:(law + 1) * I]
        best = law * I + int(np.argmin(np.where(np.isfinite(value_I), value_I, np.inf)))
        a, e, alpha = (float(v) for v in result.x_PK[best])
        # X_c = exp(a / alpha); alpha -> 0 would make it overflow, which only a degenerate fit does.
        X_c = float(np.exp(a / alpha)) if alpha else float("inf")
        fits[variable] = KaplanFit(variable, SaturatingPowerLaw(E=float(np.exp(e)), X_c=X_c, alpha=alpha), X, loss,
                                   float(result.value_P[best]))
    return fits


def _check(variable: str, X, loss) -> tuple[np.ndarray, np.ndarray]:
    X, loss = np.asarray(X, np.float64), np.asarray(loss, np.float64)
    if X.size < MIN_POINTS:
        raise RunTableError(f"L({variable}) has {NUM_PARAMETERS} parameters but only {X.size} point(s) (on "
                            f"{NUM_PARAMETERS} it interpolates them exactly); runs need >= {MIN_POINTS} distinct "
                            f"values of {variable}.")
    if np.any(X <= 0) or np.any(loss <= 0):
        raise RunTableError(f"L({variable}) needs positive {variable} and loss; got min {variable}={X.min():g}, "
                            f"min loss={loss.min():g}.")
    return X, loss


def _lowest_loss_per_value(values: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(values, return_inverse=True)
    best = np.full(unique.size, np.inf)
    np.minimum.at(best, inverse, loss)
    return unique, best


def data_limited_rows(table: RunTable) -> np.ndarray:
    """Row indices of the runs whose loss D limits (module docstring), in row order."""
    keep = np.zeros(len(table), bool)
    for rows in group_by_budget(table):
        if np.unique(table.N[rows]).size >= MIN_SIZES_PER_PROFILE:
            best = rows[np.argmin(table.loss[rows])]
            keep[rows[table.N[rows] >= table.N[best]]] = True
        else:
            keep[rows[table.N[rows] == table.N.max()]] = True
    return np.flatnonzero(keep)


def fit_kaplan_laws(table: RunTable) -> dict[str, KaplanFit | str]:
    """L(N), L(D), L(C) from a run table; a law that cannot be fitted maps to the reason."""
    limited = data_limited_rows(table)
    points = {"N": _lowest_loss_per_value(table.N, table.loss),
              "D": _lowest_loss_per_value(table.D[limited], table.loss[limited])}
    frontier, compute = compute_frontier(table)  # each budget once, at its best run
    points["C"] = (compute, table.loss[frontier])
    fits: dict[str, KaplanFit | str] = {}
    fittable = {}
    for variable, (X, loss) in points.items():
        try:  # validate each law alone, so one impossible law does not stop the others
            _check(variable, X, loss)
            fittable[variable] = (X, loss)
        except RunTableError as error:
            fits[variable] = str(error)
    if fittable:
        fits.update(_fit_laws(fittable, KAPLAN_GRID, max_evaluations=MAX_EVALUATIONS))
    return {variable: fits[variable] for variable in points}
