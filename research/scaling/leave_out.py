"""How much does Approach 3's fit lean on the edges of the design? Refit without each edge.

A fitted E (or exponent) that moves when one edge of the sweep is left out is carried by
those runs: a size too small to follow the power law in N, or a budget whose short runs are
still mid-transition, pulls the irreducible term toward them. Each entry refits Approach 3
(chinchilla_fit, the same initialisation grid, no bootstrap) on the runs that remain after
leaving out one edge:
  smallest_size / largest_size      every run of the smallest / largest N
  smallest_budget / largest_budget  every run of the smallest / largest FLOP budget
                                    (isoflop.group_by_budget; IsoFLOP sweeps only)
and reports E, alpha, beta and the N_opt exponent a = beta / (alpha + beta); runs_left_out and
runs count runs, while the refit sees the seeds of one (N, D) as one point
(RunTable.merge_replicates), as the full fit does. An edge whose removal leaves fewer than 5
design points (Approach 3 has five parameters) or fewer than 2 sizes or budgets is skipped
with the reason.
"""
from __future__ import annotations

import numpy as np

from research.scaling.chinchilla_fit import PAPER_GRID, InitGrid, fit_chinchilla_law
from research.scaling.isoflop import group_by_budget
from research.scaling.run_table import RunTable, RunTableError

MIN_RUNS = 5


def leave_out_fits(table: RunTable, *, grid: InitGrid = PAPER_GRID) -> dict[str, dict]:
    """{edge: {"runs_left_out", "runs", "E", "alpha", "beta", "a"} or {"skipped": why}} (module docstring)."""
    sizes = np.unique(table.N)
    edges: dict[str, np.ndarray | str] = {}
    if sizes.size >= 3:
        edges["smallest_size"] = table.N == sizes[0]
        edges["largest_size"] = table.N == sizes[-1]
    else:
        edges["smallest_size"] = edges["largest_size"] = f"only {sizes.size} size(s)"
    if table.budget is not None:
        groups = group_by_budget(table)
        if len(groups) >= 3:
            for name, rows in (("smallest_budget", groups[0]), ("largest_budget", groups[-1])):
                drop = np.zeros(len(table), bool)
                drop[rows] = True
                edges[name] = drop
        else:
            edges["smallest_budget"] = edges["largest_budget"] = f"only {len(groups)} budget(s)"
    out: dict[str, dict] = {}
    for name, drop in edges.items():
        if isinstance(drop, str):
            out[name] = {"skipped": drop}
            continue
        kept = table.select(~drop).merge_replicates()  # seeds of one (N, D): one point (run_table.py)
        if len(kept) < MIN_RUNS:
            out[name] = {"skipped": f"{len(kept)} design points would remain; Approach 3 needs {MIN_RUNS}"}
            continue
        try:
            law = fit_chinchilla_law(kept, grid=grid).law
        except RunTableError as error:  # e.g. too few distinct sizes left to determine alpha
            out[name] = {"skipped": str(error)}
            continue
        # As for the full fit: no N_opt exponent for a law without an optimum (a refit on fewer
        # runs is the likeliest to give beta <= 0).
        problem = law.optimum_problem()
        out[name] = {"runs_left_out": int(drop.sum()), "runs": len(table) - int(drop.sum()), "E": law.E,
                     "alpha": law.alpha, "beta": law.beta,
                     "a": None if problem else law.beta / (law.alpha + law.beta),
                     **({"optimum_skipped": problem} if problem else {})}
    return out
