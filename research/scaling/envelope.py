"""Approach 1 of Hoffmann et al. 2022: the lower envelope of loss against compute.

With training curves (a `run` column: many rows per run, D = tokens seen so far), each
curve's loss is interpolated (linearly in log C, log loss) onto a log-spaced grid of
compute values; at every grid value the run with the lowest loss gives N_opt(C), and
D_opt(C) = C / (that run's FLOPs per token: 6 N under nominal accounting). The paper used 1500 grid values; a grid value no curve reaches
is left out. With one row per run, the envelope is the compute frontier: the runs that
reach a lower loss than every run with less compute.

N_opt ∝ C^a and D_opt ∝ C^b are then least-squares lines in log space over the envelope.

`between_sizes=True` reads N_opt between the ladder's rungs: at each grid value, the vertex of
the parabola in (log N, log loss) through the best size and its two neighbours (by size).
Why: a ladder samples N discretely, so the plain argmin is a staircase, and the slope fitted
through it depends on where the rungs happen to fall. Noiseless final losses of the cpu_tiny
sweep's IsoFLOP design on its own (unevenly spaced) ladder, from a law it fitted (E 1.539,
A 114.6, alpha 0.845, B 1.705e5, beta 1.06): argmin a 0.518, between rungs 0.554, the law's
0.556 (tests/scaling/test_isoflop_envelope.py).

Only grid values where the best size is bracketed count: both its neighbours on the ladder
reach that compute and do worse. At the ladder's ends, and at compute that only some sizes
reach (each model's final losses span only the budgets it was run at), the best of the sizes
present is not the optimum. Keeping those points biased the slope: noiseless final losses at
the cpu_tiny sweep's 30 runs from the laws it fitted (exact accounting: total N, its runs' own
FLOPs, f = 18.6 N^0.902 per token) gave a = 0.432 against the law's 0.560 along f, 0.549 with the
rule; nominal 0.526 / 0.538 against 0.540. On the sweep's own runs, exact: 0.384 -> 0.475. With
noise the rule does not remove the design's own bias (research/scaling/noise_intervals.py).
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


def lower_envelope(table: RunTable, num_compute: int = NUM_COMPUTE_VALUES, *, between_sizes: bool = False
                   ) -> Envelope:
    """The envelope over training curves (table.run set) or the frontier of single runs;
    between_sizes (curves only): N_opt read between rungs (see the module docstring)."""
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
    if between_sizes:
        return _between_sizes(grid[reached], loss_UG[:, reached], sizes, per_token)
    best_G = loss_UG.argmin(axis=0)[reached]
    return Envelope(grid[reached], loss_UG[best_G, np.flatnonzero(reached)], sizes[best_G],
                    grid[reached] / per_token[best_G])


def _between_sizes(grid: np.ndarray, loss_UG: np.ndarray, sizes: np.ndarray, per_token: np.ndarray) -> Envelope:
    """At each grid value where the best size's neighbouring sizes both reach that compute: the
    vertex of the parabola in (log N, log loss) through the three; other grid values are left out."""
    unique = np.unique(sizes)  # sorted; several curves of one size: their lowest loss
    loss_SG = np.stack([loss_UG[sizes == n].min(axis=0) for n in unique])
    log_n = np.log(unique)
    log_per_token = np.array([np.log(per_token[sizes == n]).mean() for n in unique])
    best = loss_SG.argmin(axis=0)
    columns = np.arange(grid.size)
    lo, hi = np.clip(best - 1, 0, None), np.clip(best + 1, None, unique.size - 1)
    x0, x1, x2 = log_n[lo], log_n[best], log_n[hi]
    with np.errstate(divide="ignore", invalid="ignore"):
        y0, y1, y2 = (np.log(loss_SG[i, columns]) for i in (lo, best, hi))
        # The parabola through three points whose middle one is lowest opens upward.
        num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
        den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
        vertex = x1 - 0.5 * num / den
    use = (best > 0) & (best < unique.size - 1) & np.isfinite(y0) & np.isfinite(y2) & np.isfinite(vertex)
    # Only bracketed grid values: the best size's two ladder neighbours both reach this compute
    # and do worse. Elsewhere (the ladder's ends, or compute only some sizes reach) a size that
    # was not run there could be better, and keeping the best rung biased the slope.
    log_n_opt = np.clip(vertex[use], x0[use], x2[use])
    per_token_opt = np.exp(np.interp(log_n_opt, log_n, log_per_token))
    return Envelope(grid[use], np.exp(y1[use]), np.exp(log_n_opt), grid[use] / per_token_opt)


def fit_envelope(table: RunTable, num_compute: int = NUM_COMPUTE_VALUES, *,
                 between_sizes: bool = False) -> Approach1Fit:
    """Approach 1: power laws N_opt(C), D_opt(C) through the lower envelope."""
    envelope = lower_envelope(table, num_compute, between_sizes=between_sizes)
    if np.unique(envelope.N).size < 2:
        raise RunTableError(f"Approach 1 needs >= 2 model sizes on the loss-compute envelope, found "
                            f"{np.unique(envelope.N).size}; add runs of other sizes that reach the frontier.")
    return Approach1Fit(envelope, PowerLaw.fit(envelope.compute, envelope.N),
                        PowerLaw.fit(envelope.compute, envelope.D), from_curves=table.run is not None)
