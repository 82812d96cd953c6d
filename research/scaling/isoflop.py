"""Approach 2 of Hoffmann et al. 2022: IsoFLOP profiles.

Runs that share a FLOP budget C form one profile; a parabola in log N fitted to its final
losses gives that budget's optimal size N_opt(C) at the vertex, and D_opt = C / (FLOPs per
token at N_opt): 6 N_opt under nominal accounting; under exact accounting the profile's own
log(C/D) against log N, fitted by a line and read at N_opt.
Power laws N_opt ∝ C^a and D_opt ∝ C^b are then fitted across budgets by least squares in
log space, over the profiles whose vertex lies within the sizes they ran (fit_isoflop says
why). `isoflop_runs` lays out such a sweep.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.scaling.laws import FLOPS_PER_PARAM_TOKEN, PowerLaw
from research.scaling.run_table import RunTable, RunTableError

MIN_SIZES_PER_PROFILE = 3  # a parabola has three coefficients


@dataclasses.dataclass(frozen=True)
class IsoFlopProfile:
    """One budget's runs and the parabola loss = c2 x^2 + c1 x + c0 in x = ln N."""

    compute: float  # FLOPs: the runs' nominal budget, or the geometric mean of their 6 N D
    N: np.ndarray
    loss: np.ndarray
    parabola: tuple[float, float, float]  # (c2, c1, c0), numpy.polyfit order
    # log(FLOPs per token) = k1 log N + k0 over the profile's runs: (1, log 6) for C = 6ND
    flops_per_token_line: tuple[float, float] = (1.0, float(np.log(FLOPS_PER_PARAM_TOKEN)))

    @property
    def N_opt(self) -> float:
        c2, c1, _ = self.parabola
        return float(np.exp(-c1 / (2.0 * c2)))

    @property
    def D_opt(self) -> float:
        return self.compute / float(np.exp(np.polyval(self.flops_per_token_line, np.log(self.N_opt))))

    @property
    def loss_opt(self) -> float:
        return float(np.polyval(self.parabola, np.log(self.N_opt)))

    @property
    def extrapolated(self) -> bool:
        """The vertex lies outside the sizes that were run: N_opt is an extrapolation."""
        return not (self.N.min() <= self.N_opt <= self.N.max())

    def as_dict(self) -> dict:
        return {"compute": self.compute, "num_runs": int(self.N.size), "N_opt": self.N_opt,
                "D_opt": self.D_opt, "loss_opt": self.loss_opt, "extrapolated": self.extrapolated,
                "parabola": list(self.parabola)}


@dataclasses.dataclass(frozen=True)
class Approach2Fit:
    profiles: tuple[IsoFlopProfile, ...]  # every budget with a parabola, extrapolated ones included
    N_opt: PowerLaw  # N_opt(C) = k C^a, over the profiles in_fit
    D_opt: PowerLaw  # D_opt(C) = k C^b
    skipped: tuple[str, ...] = ()  # budgets left out of N_opt(C), with the reason
    include_extrapolated: bool = False

    def in_fit(self, profile: IsoFlopProfile) -> bool:
        return self.include_extrapolated or not profile.extrapolated

    def as_dict(self) -> dict:
        return {"a": self.N_opt.exponent, "b": self.D_opt.exponent, "N_opt": self.N_opt.as_dict(),
                "D_opt": self.D_opt.as_dict(),
                "profiles": [{**p.as_dict(), "in_fit": self.in_fit(p)} for p in self.profiles],
                "skipped": list(self.skipped)}


def group_by_budget(table: RunTable, rel_tol: float = 0.1) -> list[np.ndarray]:
    """Row indices of each IsoFLOP group, smallest budget first.

    With a `C` column, rows with equal C form a group. Otherwise runs are sorted by their
    compute and a new group starts wherever consecutive runs differ by more than `rel_tol`
    (under 6 N D the runs of one budget differ only by rounding of N and D to whole layers and
    steps; under exact accounting by up to 39%, see budget_compute, so give such a table its C
    column).
    """
    if table.budget is not None:
        budgets = np.unique(table.budget)
        return [np.flatnonzero(table.budget == c) for c in budgets]
    order = np.argsort(table.compute)
    log_c = np.log(table.compute[order])
    breaks = np.flatnonzero(np.diff(log_c) > np.log1p(rel_tol)) + 1
    return np.split(order, breaks)


def budget_compute(table: RunTable, rows: np.ndarray) -> float:
    """The compute of one budget's runs (`rows`, a group of group_by_budget)."""
    # Nominal tables carry their budget label. Under exact accounting the runs of one nominal
    # budget do not spend the same FLOPs: sizing's attention and unembedding FLOPs weigh most at
    # small N, so in cpu_tiny's smallest budget they spend 1.21x (largest size) to 1.69x (smallest)
    # the budget, 39% apart. Such a profile is not iso-FLOP (Porian et al. 2024, "Resolving
    # Discrepancies in Compute-Optimal Scaling of Language Models"); it sits at their geometric mean.
    if table.budget is not None and table.flops is None:
        return float(table.budget[rows[0]])
    return float(np.exp(np.mean(np.log(table.compute[rows]))))


def fit_isoflop(table: RunTable, *, rel_tol: float = 0.1, include_extrapolated: bool = False) -> Approach2Fit:
    """Approach 2: one parabola per budget with >= 3 sizes, then N_opt(C), D_opt(C).

    A profile whose vertex lies outside the sizes it ran (`extrapolated`) is left out of
    N_opt(C) and listed in `skipped`, unless include_extrapolated. Why: its N_opt only says
    "beyond the window", read off the parabola's arm, yet it weighed as much as a measured
    minimum; Hoffmann et al. read N_opt at the minimum of the sampled profile. One budget whose
    six sizes all lay below its optimum (noiseless losses of a known law, a = 0.556) gave
    a = 0.512; left out, 0.556."""
    profiles, skipped = [], []
    for rows in group_by_budget(table, rel_tol):
        compute = budget_compute(table, rows)
        N, loss = table.N[rows], table.loss[rows]
        if np.unique(N).size < MIN_SIZES_PER_PROFILE:
            skipped.append(f"C={compute:.3g}: {np.unique(N).size} model size(s), a parabola needs "
                           f"{MIN_SIZES_PER_PROFILE}")
            continue
        parabola = tuple(float(c) for c in np.polyfit(np.log(N), loss, 2))
        if parabola[0] <= 0:
            skipped.append(f"C={compute:.3g}: loss is not convex in log N (no minimum)")
            continue
        order = np.argsort(N)
        line = tuple(float(c) for c in np.polyfit(np.log(N), np.log(table.flops_per_token[rows]), 1))
        profile = IsoFlopProfile(compute, N[order], loss[order], parabola, line)
        profiles.append(profile)
        if profile.extrapolated and not include_extrapolated:
            skipped.append(f"C={compute:.3g}: vertex N_opt={profile.N_opt:.3g} outside the sizes run "
                           f"[{N.min():.3g}, {N.max():.3g}] (extrapolated); run sizes on both sides of it")
    used = [p for p in profiles if include_extrapolated or not p.extrapolated]
    if len(used) < 2:
        raise RunTableError(f"Approach 2 needs IsoFLOP profiles at >= 2 budgets, found {len(used)} "
                            f"({'; '.join(skipped) or 'no budget has 3 sizes'}); run >= {MIN_SIZES_PER_PROFILE} "
                            "model sizes at each of >= 2 FLOP budgets, around each budget's optimum, or add a "
                            "C column to group runs.")
    compute = np.array([p.compute for p in used])
    return Approach2Fit(tuple(profiles), PowerLaw.fit(compute, [p.N_opt for p in used]),
                        PowerLaw.fit(compute, [p.D_opt for p in used]), tuple(skipped), include_extrapolated)


def isoflop_runs(budgets, num_sizes: int, N_min: float, N_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sweep design: at each budget C, `num_sizes` log-spaced N in [N_min, N_max], D = C/(6N).

    Returns (C, N, D) arrays of length len(budgets) * num_sizes.
    """
    if not 0 < N_min < N_max:
        raise ValueError(f"N_min={N_min:g}, N_max={N_max:g}: need 0 < N_min < N_max.")
    budgets = np.asarray(budgets, np.float64)
    N = np.geomspace(N_min, N_max, num_sizes)
    C, N = (v.reshape(-1) for v in np.meshgrid(budgets, N, indexing="ij"))
    return C, N, C / (FLOPS_PER_PARAM_TOKEN * N)
