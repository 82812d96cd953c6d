"""Approach 1 of Hoffmann et al. 2022: the lower envelope of loss against compute.

With training curves (a `run` column: many rows per run, D = tokens seen so far), each
curve's loss is interpolated (linearly in log C, log loss) onto a log-spaced grid of
compute values; at every grid value the size with the lowest loss gives N_opt(C), and
D_opt(C) = C / (FLOPs per token at N_opt: 6 N under nominal accounting). The paper used 1500
grid values; a grid value no curve reaches is left out. With one row per run, the envelope is
the compute frontier: the runs that reach a lower loss than every run with less compute.

N_opt ∝ C^a and D_opt ∝ C^b are then least-squares lines in log space over the envelope.

On curves only bracketed optima count: grid values whose best size has both its ladder
neighbours reaching that compute, and doing worse. At the ladder's ends, and at compute that
only some sizes reach (each model's final losses span only the budgets it was run at), the
best of the sizes present is a bound, not the optimum; early in training the smallest model
always leads, so on curves most of the grid is such a bound. Keeping those points biased the
slope: noiseless curves of a known law (E 1.539, A 114.6, alpha 0.845, B 1.705e5, beta 1.06,
a = 0.556) at the cpu_tiny design, each run's curve from 1,024 tokens to its end, gave
a = 0.247 with 898 of 1500 grid values at the smallest or largest size
(tests/scaling/test_isoflop_envelope.py); on noiseless final losses at the sweep's 30 runs
(exact accounting: total N, its runs' own FLOPs, f = 18.6 N^0.902 per token) a = 0.432
against the law's 0.560 along f, 0.549 with the rule; on the sweep's own runs, exact: 0.384 ->
0.475. With noise the rule does not remove the design's own bias (noise_intervals.py).

`between_sizes=True` (the default) reads N_opt between the ladder's rungs: the vertex of the
parabola in (log N, log loss) through the best size and its two neighbours (by size). Why: a
ladder samples N discretely, so the best rung is a staircase, and the slope fitted through it
depends on where the rungs happen to fall. The curves above: best rung 0.521, between rungs
0.556. `between_sizes=False` keeps the best rung; with `bracketed=False` as well it is
the plain argmin at every grid value, the ladder's ends included (the staircase as it is,
for plots and comparison; its slope is biased as above).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.scaling.laws import PowerLaw
from research.scaling.run_table import RunTable, RunTableError

NUM_COMPUTE_VALUES = 1500  # Hoffmann et al.'s grid over FLOPs


@dataclasses.dataclass(frozen=True)
class Envelope:
    """The lowest loss reached at each compute value, and the run reaching it (arrays of length G)."""

    compute: np.ndarray
    loss: np.ndarray
    N: np.ndarray
    D: np.ndarray  # tokens at that compute: C / (the run's FLOPs per token)


@dataclasses.dataclass(frozen=True)
class Approach1Fit:
    envelope: Envelope
    N_opt: PowerLaw
    D_opt: PowerLaw
    from_curves: bool  # True: training curves; False: the frontier of final losses

    def as_dict(self) -> dict:
        return {"a": self.N_opt.exponent, "b": self.D_opt.exponent, "N_opt": self.N_opt.as_dict(),
                "D_opt": self.D_opt.as_dict(), "from_curves": self.from_curves,
                "envelope_points": int(self.envelope.compute.size),
                "distinct_sizes_on_envelope": int(np.unique(self.envelope.N).size)}


def compute_frontier(table: RunTable) -> np.ndarray:
    """Indices of rows whose loss is below that of every row with less compute, by compute."""
    order = np.lexsort((table.loss, table.compute))  # ties in compute: lowest loss first
    best_so_far = np.minimum.accumulate(table.loss[order])
    improves = np.concatenate([[True], table.loss[order][1:] < best_so_far[:-1]])
    return order[improves]


def lower_envelope(table: RunTable, num_compute: int = NUM_COMPUTE_VALUES, *, between_sizes: bool = True,
                   bracketed: bool = True) -> Envelope:
    """The envelope over training curves (table.run set) or the frontier of single runs.

    On curves only bracketed optima count (module docstring): the grid values whose best size
    has both ladder neighbours reaching that compute. between_sizes reads N_opt between rungs
    (the vertex of the parabola through the best size and its two neighbours); False keeps the
    best rung, a staircase. bracketed=False (only with between_sizes=False) is the plain argmin
    everywhere, the ladder's ends included: for plotting and comparison, not for fitting (its
    slope is biased)."""
    if not bracketed and between_sizes:
        raise ValueError("between_sizes=True reads N_opt from the best size and its two neighbours, so it "
                         "needs bracketed=True; pass between_sizes=False with bracketed=False for the plain argmin.")
    if table.run is None:
        rows = compute_frontier(table)
        return Envelope(table.compute[rows], table.loss[rows], table.N[rows], table.D[rows])
    runs = np.unique(table.run)
    grid = np.geomspace(table.compute.min(), table.compute.max(), num_compute)
    loss_UG = np.full((runs.size, grid.size), np.inf)
    sizes, per_token = np.empty(runs.size), np.empty(runs.size)
    for u, run in enumerate(runs):
        rows = np.flatnonzero(table.run == run)
        if np.unique(table.N[rows]).size != 1:
            sizes_seen = ", ".join(f"{n:g}" for n in np.unique(table.N[rows]))
            raise RunTableError(f"run {str(run)!r} has rows with different N ({sizes_seen}); rows of one "
                                "training curve must share N, so give each model its own run id.")
        order = rows[np.argsort(table.compute[rows])]
        log_c, log_loss = np.log(table.compute[order]), np.log(table.loss[order])
        inside = (grid >= table.compute[order[0]]) & (grid <= table.compute[order[-1]])
        loss_UG[u, inside] = np.exp(np.interp(np.log(grid[inside]), log_c, log_loss))
        sizes[u] = table.N[rows[0]]
        per_token[u] = np.exp(np.mean(np.log(table.flops_per_token[rows])))
    reached = np.isfinite(loss_UG).any(axis=0)
    if not bracketed:
        best_G = loss_UG.argmin(axis=0)[reached]
        return Envelope(grid[reached], loss_UG[best_G, np.flatnonzero(reached)], sizes[best_G],
                        grid[reached] / per_token[best_G])
    return _bracketed_curves(grid[reached], loss_UG[:, reached], sizes, per_token, between_sizes)


def _vertex(x0, x1, x2, y0, y1, y2):
    """log N at the vertex of the parabola through (x0, y0), (x1, y1), (x2, y2) (NaN/inf if none)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # Through three points whose middle one is lowest the parabola opens upward.
        num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
        den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
        return x1 - 0.5 * num / den


def _bracketed_curves(grid: np.ndarray, loss_UG: np.ndarray, sizes: np.ndarray, per_token: np.ndarray,
                      between_sizes: bool) -> Envelope:
    """At each grid value where the best size's neighbouring sizes both reach that compute: the
    best size, or with between_sizes the vertex of the parabola in (log N, log loss) through
    the three; other grid values are left out."""
    unique = np.unique(sizes)  # sorted; several curves of one size: their lowest loss
    loss_SG = np.stack([loss_UG[sizes == n].min(axis=0) for n in unique])
    log_n = np.log(unique)
    log_per_token = np.array([np.log(per_token[sizes == n]).mean() for n in unique])
    best = loss_SG.argmin(axis=0)
    columns = np.arange(grid.size)
    lo, hi = np.clip(best - 1, 0, None), np.clip(best + 1, None, unique.size - 1)
    x0, x1, x2 = log_n[lo], log_n[best], log_n[hi]
    with np.errstate(divide="ignore"):
        y0, y1, y2 = (np.log(loss_SG[i, columns]) for i in (lo, best, hi))
    # Only bracketed grid values: the best size's two ladder neighbours both reach this compute
    # and do worse. Elsewhere (the ladder's ends, or compute only some sizes reach) a size that
    # was not run there could be better, and keeping the best rung biased the slope.
    use = (best > 0) & (best < unique.size - 1) & np.isfinite(y0) & np.isfinite(y2)
    if not between_sizes:
        return Envelope(grid[use], np.exp(y1[use]), unique[best[use]], grid[use] / np.exp(log_per_token[best[use]]))
    vertex = _vertex(x0, x1, x2, y0, y1, y2)
    use &= np.isfinite(vertex)
    log_n_opt = np.clip(vertex[use], x0[use], x2[use])
    per_token_opt = np.exp(np.interp(log_n_opt, log_n, log_per_token))
    return Envelope(grid[use], np.exp(y1[use]), np.exp(log_n_opt), grid[use] / per_token_opt)


def fit_envelope(table: RunTable, num_compute: int = NUM_COMPUTE_VALUES, *, between_sizes: bool = True,
                 bracketed: bool = True) -> Approach1Fit:
    """Approach 1: power laws N_opt(C), D_opt(C) through the lower envelope (lower_envelope's
    options; the default reads N_opt between rungs at bracketed optima only, which recovers a
    law's exponent from its noiseless curves: module docstring)."""
    envelope = lower_envelope(table, num_compute, between_sizes=between_sizes, bracketed=bracketed)
    if np.unique(envelope.N).size < 2:
        raise RunTableError(f"Approach 1 needs >= 2 model sizes on the loss-compute envelope, found "
                            f"{np.unique(envelope.N).size}; add runs of other sizes that reach the frontier.")
    return Approach1Fit(envelope, PowerLaw.fit(envelope.compute, envelope.N),
                        PowerLaw.fit(envelope.compute, envelope.D), from_curves=table.run is not None)
