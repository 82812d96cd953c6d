"""Approach 1 of Hoffmann et al. 2022: the lower envelope of loss against compute.

With training curves (a `run` column with several rows per run, D = tokens seen so far), each
curve's loss is interpolated (linearly in log C, log loss) onto a log-spaced grid of
compute values; at every grid value the size with the lowest loss gives N_opt(C), and
D_opt(C) = C / (FLOPs per token at N_opt: 6 N under nominal accounting). The paper used 1500
grid values; a grid value no curve reaches is left out. With one row per run (final losses),
the envelope is the compute frontier: each budget's best run, where it beats every budget
with less compute (compute_frontier; the runs of one budget count once, at the budget's
compute).

N_opt ∝ C^a and D_opt ∝ C^b are then least-squares lines in log space over the envelope.

Only bracketed optima count: grid values (or budgets) whose best size has both its ladder
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
0.556; their final losses (the frontier, one point per budget): best rung 0.668, between
rungs 0.556. `between_sizes=False` keeps the best rung; with `bracketed=False` as well it is
the plain argmin at every grid value, the ladder's ends included (the staircase as it is,
for plots and comparison; its slope is biased as above).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.scaling.isoflop import MIN_SIZES_PER_PROFILE, budget_compute, group_by_budget
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


def has_curves(table: RunTable) -> bool:
    """Whether the table holds training curves: a run column with some run id on several rows.
    A sweep's runs.csv names every run, one row each: those are final losses, and read as curves
    of one point each, the envelope had found 2 grid values (a = 0.076 nominal, -0.18 exact, on
    synthetic losses at the cpu_tiny runs)."""
    return table.run is not None and np.unique(table.run).size < len(table)


def budget_groups(table: RunTable, rel_tol: float = 0.1) -> list[np.ndarray]:
    """Row indices of each budget, by isoflop.group_by_budget. Without a C column a group
    whose runs' FLOPs span more than rel_tol is not one budget (group_by_budget chains runs
    whose consecutive FLOPs differ by less, which in a dense non-IsoFLOP design can span
    decades): each of its runs is then a group of its own."""
    groups = []
    for rows in group_by_budget(table, rel_tol):
        compute = table.compute[rows]
        one_budget = table.budget is not None or compute.max() <= compute.min() * (1.0 + rel_tol)
        groups.extend([rows] if one_budget else [rows[i:i + 1] for i in range(rows.size)])
    return groups


def compute_frontier(table: RunTable, rel_tol: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(rows, compute) of the compute frontier, by compute: each budget's best run (budget_groups)
    at the budget's compute (isoflop.budget_compute: the C label under nominal accounting),
    where its loss is below that of every budget with less compute.

    Why each budget counts once: its runs spend the same compute by design, and rounding to
    whole steps moves their 6 N D by < 0.2%. Taken as different compute, every run of a budget
    that beat the one rounded just below it entered the frontier: all four sizes of cpu_tiny's
    smallest budget, 0.17 nats apart (11 points from 4 budgets on noiseless losses of a known
    law, a = 0.498 against its 0.556)."""
    rows, compute, _ = _frontier_budgets(table, rel_tol)
    return rows, compute


def _frontier_budgets(table: RunTable, rel_tol: float) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """compute_frontier's (rows, compute) and the row indices of each of those rows' budget."""
    groups = budget_groups(table, rel_tol)
    rows = np.array([g[np.argmin(table.loss[g])] for g in groups], dtype=int)
    compute = np.array([budget_compute(table, g) for g in groups], dtype=np.float64)
    order = np.lexsort((table.loss[rows], compute))  # ties in compute: lowest loss first
    loss = table.loss[rows[order]]
    best_so_far = np.minimum.accumulate(loss)
    on_frontier = order[np.concatenate([[True], loss[1:] < best_so_far[:-1]])]
    return rows[on_frontier], compute[on_frontier], [groups[i] for i in on_frontier]


def lower_envelope(table: RunTable, num_compute: int = NUM_COMPUTE_VALUES, *, between_sizes: bool = True,
                   bracketed: bool = True, rel_tol: float = 0.1) -> Envelope:
    """The envelope over training curves (has_curves) or the frontier of final losses.

    Only bracketed optima count (module docstring): on curves the grid values whose best size
    has both ladder neighbours reaching that compute; on the frontier the budgets whose best
    run has a smaller and a larger size beside it (a budget of fewer than 3 sizes, e.g. a
    single run, cannot be checked and is kept). between_sizes reads N_opt between rungs (the
    vertex of the parabola through the best size and its two neighbours); False keeps the best
    rung, a staircase. bracketed=False (only with between_sizes=False) is the plain argmin
    everywhere, the ladder's ends included: for plotting and comparison, not for fitting (its
    slope is biased). rel_tol: how far apart in FLOPs runs without a C column may be and still
    be one budget (isoflop.group_by_budget)."""
    if not bracketed and between_sizes:
        raise ValueError("between_sizes=True reads N_opt from the best size and its two neighbours, so it "
                         "needs bracketed=True; pass between_sizes=False with bracketed=False for the plain argmin.")
    if not has_curves(table):
        return _frontier_envelope(table, rel_tol, between_sizes, bracketed)
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


def _frontier_envelope(table: RunTable, rel_tol: float, between_sizes: bool, bracketed: bool) -> Envelope:
    """The compute frontier of final losses, each budget's N_opt read as lower_envelope says."""
    rows, compute, groups = _frontier_budgets(table, rel_tol)
    keep, N_opt, per_token = np.ones(rows.size, bool), table.N[rows].copy(), table.flops_per_token[rows].copy()
    for k, (row, group) in enumerate(zip(rows, groups)):
        unique = np.unique(table.N[group])
        if not bracketed or unique.size < MIN_SIZES_PER_PROFILE:
            continue
        i = int(np.searchsorted(unique, table.N[row]))
        if i == 0 or i == unique.size - 1:  # the budget's smallest or largest size: a bound, not an optimum
            keep[k] = False
        elif between_sizes:
            at = [table.N[group] == n for n in unique[i - 1:i + 2]]
            log_n = np.log(unique[i - 1:i + 2])
            log_loss = [np.log(table.loss[group][m].min()) for m in at]
            log_per_token = [np.log(table.flops_per_token[group][m]).mean() for m in at]
            x = float(np.clip(_vertex(*log_n, *log_loss), log_n[0], log_n[2]))
            N_opt[k], per_token[k] = np.exp(x), np.exp(np.interp(x, log_n, log_per_token))
    return Envelope(compute[keep], table.loss[rows[keep]], N_opt[keep], compute[keep] / per_token[keep])


def fit_envelope(table: RunTable, num_compute: int = NUM_COMPUTE_VALUES, *, between_sizes: bool = True,
                 bracketed: bool = True, rel_tol: float = 0.1) -> Approach1Fit:
    """Approach 1: power laws N_opt(C), D_opt(C) through the lower envelope (lower_envelope's
    options; the default reads N_opt between rungs at bracketed optima only, which recovers a
    law's exponent from its noiseless curves: module docstring)."""
    envelope = lower_envelope(table, num_compute, between_sizes=between_sizes, bracketed=bracketed,
                              rel_tol=rel_tol)
    if np.unique(envelope.N).size < 2:
        raise RunTableError(f"Approach 1 needs >= 2 model sizes on the loss-compute envelope, found "
                            f"{np.unique(envelope.N).size}; add runs of other sizes that reach the frontier.")
    return Approach1Fit(envelope, PowerLaw.fit(envelope.compute, envelope.N),
                        PowerLaw.fit(envelope.compute, envelope.D), from_curves=has_curves(table))
