"""Approach 3 of Hoffmann et al. 2022: fit L(N, D) = E + A/N^alpha + B/D^beta to every run.

As in the paper (section 3.3, appendix D.2): parameters (a, b, e, alpha, beta) with
A = exp(a), B = exp(b), E = exp(e); prediction in log-sum-exp form
log L_hat = LSE(a - alpha log N, b - beta log D, e); objective the Huber loss (delta 1e-3)
of log L_hat - log L, summed over runs; L-BFGS from every point of a grid of
initialisations, keeping the lowest objective. Confidence intervals by bootstrap: resample
the runs with replacement (as integer weights on the sum) and refit.

Float64 throughout: with delta = 1e-3 the Huber loss is quadratic only for residuals below
0.1%, so float32 rounding of log L (~1e-7 relative) is fine but of the objective and its
gradient is not.
"""
from __future__ import annotations

import dataclasses
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.scaling.huber_lse import HUBER_DELTA, HUBER_GTOL, huber_lse_value_and_grad
from research.scaling.laws import ChinchillaLaw
from research.scaling.lbfgs import minimize_batched
from research.scaling.run_table import RunTable, RunTableError

PARAMETERS = ("a", "b", "e", "alpha", "beta")  # order of the K=5 axis of every x_PK here
ALLOCATION_KEYS = ("a", "b", "G")  # ChinchillaLaw.as_dict's entries that exist only with an optimum
# E + A/N^alpha seen at two sizes is two numbers for three unknowns (E shared with the D term):
# each of A, alpha and B, beta needs runs at >= 3 distinct values of its variable.
MIN_DISTINCT = 3
# More distinct (N, D) points than the law's 5 parameters: on exactly 5 the fit interpolates them
# (objective 0), so every bit of noise lands in the parameters and nothing measures the misfit.
MIN_DESIGN_POINTS = len(PARAMETERS) + 1
# Collinear designs: the smallest singular value of the centred (log N, log D) points over the
# largest (rank of [1, log N, log D] < 3 below it). With log D = c - log N (one IsoFLOP budget) or
# c + log N (one tokens-per-parameter ratio) only A/N^alpha + B/D^beta along that line is seen, and
# the fit returns one of a continuum of (E, alpha, beta) at equal objective. Exact lines give
# ~1e-15; a sweep's one-budget profiles, D rounded to whole steps, 8e-7 .. 4e-4 (each budget of
# the cpu_tiny, stdlib_tiny and gpu_host presets); whole designs 0.4 .. 0.73 (the same presets
# and tokens_tiny). 1e-3 sits between: float noise and step rounding never let a line through.
COLLINEAR_RTOL = 1e-3


@dataclasses.dataclass(frozen=True)
class InitGrid:
    """L-BFGS starting points: the Cartesian product of these values (in log-parameter space)."""

    a: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    b: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    e: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    alpha: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    beta: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)

    def points(self) -> np.ndarray:
        """(P, 5) starts in PARAMETERS order."""
        return np.array(list(itertools.product(*(getattr(self, p) for p in PARAMETERS))), np.float64)


PAPER_GRID = InitGrid()  # Hoffmann et al.'s grid: 6 * 6 * 5 * 5 * 5 = 4500 starts
COARSE_GRID = InitGrid(a=(0.0, 5.0, 10.0), b=(0.0, 5.0, 10.0), e=(0.0, 0.5), alpha=(0.5, 1.0), beta=(0.5, 1.0))


@dataclasses.dataclass(frozen=True)
class Approach3Fit:
    """The best fit, how it was found, and bootstrap intervals (empty when not bootstrapped)."""

    law: ChinchillaLaw
    objective: float  # summed Huber loss at the optimum
    num_inits: int
    num_converged: int  # starts that stopped by a convergence rule, not max_evaluations
    seconds: float  # wall time of the grid fit (compilation included)
    bootstrap_laws: tuple[ChinchillaLaw, ...] = ()
    confidence: float = 0.8

    def bootstrap_with_optimum(self) -> tuple[ChinchillaLaw, ...]:
        """The bootstrap fits that have a compute-optimal allocation (ChinchillaLaw.optimum_problem)."""
        return tuple(law for law in self.bootstrap_laws if not law.optimum_problem())

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Percentile intervals of E, A, B, alpha, beta over the bootstrap fits, and of the
        allocation's a, b, G over the fits that have one: a resample whose beta (or alpha) came out
        <= 0 has no optimum, its G is NaN (one NaN made G's interval [nan, nan]) and its
        beta / (alpha + beta) the exponent of nothing (it bent a's interval below 0). How many
        were left out is `bootstrap_without_optimum` in as_dict."""
        if not self.bootstrap_laws:
            return {}
        tail = 50.0 * (1.0 - self.confidence)
        with_optimum = self.bootstrap_with_optimum()
        out = {}
        for key in self.law.as_dict():
            laws = with_optimum if key in ALLOCATION_KEYS else self.bootstrap_laws
            if laws:
                values = [law.as_dict()[key] for law in laws]
                out[key] = tuple(float(q) for q in np.percentile(values, [tail, 100.0 - tail]))
        return out

    def as_dict(self) -> dict:
        return {**self.law.as_dict(), "objective": self.objective, "huber_delta": HUBER_DELTA,
                "num_inits": self.num_inits, "num_converged": self.num_converged, "seconds": self.seconds,
                "bootstrap_samples": len(self.bootstrap_laws), "confidence": self.confidence,
                "bootstrap_without_optimum": len(self.bootstrap_laws) - len(self.bootstrap_with_optimum()),
                "intervals": {k: list(v) for k, v in self.intervals().items()}}


def _minimize(table: RunTable, x0_PK: np.ndarray, weight_PR: np.ndarray, max_evaluations: int):
    with jax.enable_x64(True):
        data = (jnp.asarray(np.log([table.N, table.D])), jnp.asarray(np.log(table.loss)))
        weight_PR = jnp.asarray(np.broadcast_to(weight_PR, (len(x0_PK), len(table))), jnp.float64)
        return minimize_batched(huber_lse_value_and_grad, jnp.asarray(x0_PK, jnp.float64), weight_PR, data,
                                max_evaluations=max_evaluations, gtol=HUBER_GTOL)


def _law(x_K: np.ndarray) -> ChinchillaLaw:
    a, b, e, alpha, beta = (float(v) for v in x_K)
    return ChinchillaLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta)


BOOTSTRAP_SAMPLES = 4000  # Epoch AI's replication (Besiroglu et al. 2024) used 4,000 resamples
# The fewest resamples the commands accept (other than 0, none): a 10-90% percentile interval needs
# enough resamples to have a 10th and a 90th percentile at all (from 1 resample it is that
# resample's value, which need not contain the estimate), and below ~100 the interval's ends move
# with the resampling more than with the data. This function itself takes any count (tests use few).
MIN_BOOTSTRAP = 100
BOOTSTRAP_BASINS = 3  # resample starts: the full-data optimum plus the best of this many other basins
# ... plus these 8 of COARSE_GRID's starts, (a, b, e, alpha, beta). Why: a resample's optimum can
# lie in a basin that the full data's grid fit never ended in (its "other basins" are mostly the
# same optimum to within 1e-3), and a refit left in the full-data basin pulls the interval
# towards the point estimate. Checked against full paper-grid (4500-start) refits of 100
# resamples of each of 13 tables, on the cpu_tiny design (synthetic losses at its 30 runs, seeds
# merged) unless said: a resample "missed" when its objective came out > 1e-6 above the grid's.
#   4 basin starts alone: 4-12 of 100 missed at the study's 0.54% noise (7 tables, the audit's
#     24-run IsoFLOP design and exact accounting among them), by up to 4%, e.g. E 1.530 and
#     alpha 0.72 for 1.486 and 0.34; 9-15 at 1-1.5% noise, 17 and 29 at 2.4% (stdlib_tiny's).
#   + these 8 (chosen greedily on 5 of the 0.54% tables, where they then missed none): on the
#     other 8 tables 2 of 200 at 0.54% (by 0.07% and 3.4%), 3 of 200 at 1% (two by < 1e-5),
#     3 of 200 at 1.5% (by < 3e-5), 9 of 200 at 2.4%.
#   + all 72 of COARSE_GRID: 1, 1, 1 and 3 of 200 (its 0.54% miss is the same resample, by 2.8%).
# At 4000 resamples of the cpu_tiny table, nominal and exact accounting together, the bootstrap
# took 17 s of CPU with the 4 basin starts, 73 s with these 8 added, 475 s with COARSE_GRID's 72
# (12 s, about 45 s and 250 s of wall on the shared 2-core machine): a whole-grid refit would
# have added ~4 minutes to the cpu_tiny study's 12-17 minutes. Pass bootstrap_extra=COARSE_GRID
# for noisier data where the cost is acceptable.
BOOTSTRAP_STARTS = np.array([
    (0.0, 10.0, 0.0, 1.0, 1.0), (10.0, 5.0, 0.0, 1.0, 0.5), (0.0, 10.0, 0.5, 1.0, 0.5), (0.0, 10.0, 0.5, 1.0, 1.0),
    (0.0, 0.0, 0.5, 1.0, 0.5), (0.0, 10.0, 0.0, 1.0, 0.5), (0.0, 5.0, 0.5, 1.0, 0.5), (0.0, 5.0, 0.0, 0.5, 0.5)])


def fit_chinchilla_law(table: RunTable, *, grid: InitGrid = PAPER_GRID, bootstrap_samples: int = 0,
                       confidence: float = 0.8, seed: int = 0, max_evaluations: int = 3000,
                       bootstrap_basins: int = BOOTSTRAP_BASINS,
                       bootstrap_extra: InitGrid | np.ndarray | None = BOOTSTRAP_STARTS) -> Approach3Fit:
    """Approach 3 on every run of `table`; `bootstrap_samples` > 0 adds percentile intervals.

    Each bootstrap resample is refitted from bootstrap_starts: the full-data optimum, the end
    points of the `bootstrap_basins` next-best distinct basins of the full grid, and
    `bootstrap_extra` (a grid or (J, 5) starts; BOOTSTRAP_STARTS says why), keeping the lowest
    objective: the point fit's estimator, best over a set of starts that reached the paper
    grid's optimum on nearly every resample tried (rerunning the 4500 starts for each of 4000
    resamples would be 18M fits). All resamples run as one batched L-BFGS problem. The default
    confidence 0.8 gives 10th-90th percentile intervals.
    """
    table.require(len(PARAMETERS), "Approach 3 (5 parameters)")
    problem = design_problem(table.N, table.D)
    if problem:
        raise RunTableError(problem)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.8 for 10th-90th percentiles.")
    start = time.perf_counter()
    inits_PK = grid.points()
    result = _minimize(table, inits_PK, np.ones((1, len(table))), max_evaluations)
    value_P = np.where(np.isfinite(result.value_P), result.value_P, np.inf)
    best = int(np.argmin(value_P))
    seconds = time.perf_counter() - start
    bootstrap_laws: tuple[ChinchillaLaw, ...] = ()
    if bootstrap_samples > 0:
        starts_IK = bootstrap_starts(result.x_PK, value_P, bootstrap_basins, bootstrap_extra)
        bootstrap_laws = _bootstrap(table, starts_IK, bootstrap_samples, seed, max_evaluations)
    return Approach3Fit(law=_law(result.x_PK[best]), objective=float(result.value_P[best]),
                        num_inits=len(inits_PK), num_converged=int(result.converged_P.sum()),
                        seconds=seconds, bootstrap_laws=bootstrap_laws, confidence=confidence)


def design_problem(N: np.ndarray, D: np.ndarray) -> str | None:
    """Why runs at these (N, D) cannot determine Approach 3's law, in one line, or None: fewer
    than MIN_DISTINCT sizes or token counts, log N and log D on one line (COLLINEAR_RTOL), or
    no more distinct points than the law has parameters (MIN_DESIGN_POINTS). The sweep checks
    its plan with it before training (experiments/scaling_laws/sweep.py)."""
    sizes, tokens = len(np.unique(N)), len(np.unique(D))
    if min(sizes, tokens) < MIN_DISTINCT:
        return (f"Approach 3 needs runs at >= {MIN_DISTINCT} distinct model sizes N and >= {MIN_DISTINCT} "
                f"distinct token counts D to determine A, alpha and B, beta; the table has {sizes} and "
                f"{tokens}: add runs at other sizes or token counts.")
    points = np.unique(np.stack([np.asarray(N, np.float64), np.asarray(D, np.float64)], axis=1), axis=0)
    logs = np.log(points)
    # Centred, [1, log N, log D] has rank 1 + rank(centred (log N, log D)), better conditioned.
    singular = np.linalg.svd(logs - logs.mean(axis=0), compute_uv=False)
    if singular[-1] <= COLLINEAR_RTOL * singular[0]:
        return ("Approach 3 cannot separate A/N^alpha from B/D^beta: across the runs log D is a linear function of "
                "log N (one IsoFLOP budget, D = C/6N, or one tokens-per-parameter ratio, D = kN), so N and D move "
                "together; add runs at other budgets or tokens-per-parameter ratios.")
    if len(points) < MIN_DESIGN_POINTS:
        return (f"Approach 3 needs more distinct (N, D) points than its {len(PARAMETERS)} parameters (on "
                f"{len(PARAMETERS)} the law interpolates them exactly); the table has {len(points)}: add runs at "
                "other sizes or token counts.")
    return None


def bootstrap_starts(x_PK: np.ndarray, value_P: np.ndarray, basins: int = BOOTSTRAP_BASINS,
                     extra: InitGrid | np.ndarray | None = BOOTSTRAP_STARTS) -> np.ndarray:
    """(I, 5) starts of every bootstrap refit, from a grid fit's end points x_PK and objectives
    value_P: its best basins (_basin_starts), then `extra` (a grid's points or (J, 5) starts)."""
    starts = _basin_starts(x_PK, value_P, basins)
    if extra is None:
        return starts
    extra = extra.points() if isinstance(extra, InitGrid) else np.asarray(extra, np.float64).reshape(-1, 5)
    return np.concatenate([starts, extra])


def _basin_starts(x_PK: np.ndarray, value_P: np.ndarray, basins: int) -> np.ndarray:
    """The best end point, then the best end point of each of the next `basins` distinct basins
    (end points whose parameters differ by more than 1e-3 from every one already taken)."""
    order = np.argsort(value_P)
    taken = [x_PK[order[0]]]
    for p in order[1:]:
        if len(taken) > basins or not np.isfinite(value_P[p]):
            break
        if all(np.max(np.abs(x_PK[p] - t)) > 1e-3 for t in taken):
            taken.append(x_PK[p])
    return np.stack(taken)


def _bootstrap(table: RunTable, starts_IK: np.ndarray, samples: int, seed: int,
               max_evaluations: int) -> tuple[ChinchillaLaw, ...]:
    rng = np.random.default_rng(seed)
    R = len(table)
    # Resampling R runs with replacement == integer multiplicities that sum to R.
    weight_SR = rng.multinomial(R, np.full(R, 1.0 / R), size=samples).astype(np.float64)
    I = len(starts_IK)
    result = _minimize(table, np.tile(starts_IK, (samples, 1)), np.repeat(weight_SR, I, axis=0), max_evaluations)
    value_SI = np.where(np.isfinite(result.value_P), result.value_P, np.inf).reshape(samples, I)
    x_SIK = result.x_PK.reshape(samples, I, -1)
    return tuple(_law(x_SIK[s, i]) for s, i in enumerate(value_SI.argmin(axis=1)))
