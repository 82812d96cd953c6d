"""Is a study's fit trustworthy at its own design? Draw many datasets from a known law at the
study's (N, D) points with the run-to-run noise measured between seeds, fit each with its
bootstrap, and count how often the intervals hold the truth.

All datasets share the design (N, D) and differ only in their losses, so every fit and every
bootstrap resample of every dataset is one problem of a single batched L-BFGS solve whose
log losses are per problem: 50 datasets x 200 resamples cost one compilation.
The fit per dataset is Approach 3's (chinchilla_fit): the best of a grid of starts, then
bootstrap resamples of the runs, each refitted from the starts fit_chinchilla_law gives its
resamples (chinchilla_fit.bootstrap_starts: the dataset's best basins and BOOTSTRAP_STARTS),
keeping the lowest objective. What differs from the study's own fit is only the grid of the
datasets' point fits, `grid` (COARSE_GRID by default, for cost; the study uses PAPER_GRID),
and with it which basins the resamples start from. Runs sharing an (N, D), seeds of one point,
are drawn with their own noise and then merged as the study merges them
(RunTable.merge_replicates): one point at their mean log loss.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from research.scaling.chinchilla_fit import (BOOTSTRAP_BASINS, BOOTSTRAP_STARTS, COARSE_GRID, PARAMETERS, InitGrid, _law,
                                             bootstrap_starts)
from research.scaling.huber_lse import HUBER_GTOL, huber_lse_value_and_grad
from research.scaling.laws import ChinchillaLaw
from research.scaling.lbfgs import minimize_batched

COVERED = ("E", "alpha", "beta")


@dataclasses.dataclass(frozen=True)
class CoverageStudy:
    true_law: ChinchillaLaw
    rel_noise: float
    confidence: float
    bootstrap_samples: int
    fits: tuple[ChinchillaLaw, ...]  # one per dataset
    intervals: dict[str, np.ndarray]  # parameter -> (datasets, 2) percentile intervals

    def coverage(self) -> dict[str, float]:
        """Fraction of datasets whose interval holds the true value, per parameter."""
        truth = self.true_law.as_dict()
        return {k: float(np.mean((v[:, 0] <= truth[k]) & (truth[k] <= v[:, 1]))) for k, v in self.intervals.items()}


def _per_problem_losses(x_PK, per_problem, log_X_JR):
    weight_PR, log_loss_PR = per_problem
    return huber_lse_value_and_grad(x_PK, weight_PR, (log_X_JR, log_loss_PR))


def _solve(log_X_JR, log_loss_PR, x0_PK, weight_PR, max_evaluations):
    with jax.enable_x64(True):
        per_problem = (jnp.asarray(weight_PR, jnp.float64), jnp.asarray(log_loss_PR, jnp.float64))
        return minimize_batched(_per_problem_losses, jnp.asarray(x0_PK, jnp.float64), per_problem,
                                jnp.asarray(log_X_JR, jnp.float64), max_evaluations=max_evaluations, gtol=HUBER_GTOL)


def simulate_interval_coverage(law: ChinchillaLaw, N, D, *, rel_noise: float, num_datasets: int = 50,
                               bootstrap_samples: int = 200, confidence: float = 0.8, grid: InitGrid = COARSE_GRID,
                               seed: int = 0, max_evaluations: int = 3000, bootstrap_basins: int = BOOTSTRAP_BASINS,
                               bootstrap_extra: InitGrid | np.ndarray | None = BOOTSTRAP_STARTS) -> CoverageStudy:
    """Fit `num_datasets` noisy draws of `law` at runs (N, D) and bootstrap each (module docstring);
    bootstrap_basins and bootstrap_extra as in fit_chinchilla_law."""
    N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
    S = num_datasets
    rng = np.random.default_rng(seed)
    log_loss_SU = np.log(law.loss(N, D))[None] + rng.normal(0.0, rel_noise, (S, N.size))  # U: the runs
    # Runs at one (N, D) (seeds) are one design point at their mean log loss, as the study fits them.
    points_RJ, point_of_U = np.unique(np.stack([N, D], axis=1), axis=0, return_inverse=True)
    member_UR = np.eye(len(points_RJ))[point_of_U.reshape(-1)]
    log_loss_SR = (log_loss_SU @ member_UR) / member_UR.sum(axis=0)
    R = len(points_RJ)
    log_X_JR = np.log(points_RJ.T)

    starts_IK = grid.points()
    I = len(starts_IK)
    result = _solve(log_X_JR, np.repeat(log_loss_SR, I, axis=0), np.tile(starts_IK, (S, 1)), np.ones((S * I, R)),
                    max_evaluations)
    value_SI = np.where(np.isfinite(result.value_P), result.value_P, np.inf).reshape(S, I)
    x_SIK = result.x_PK.reshape(S, I, -1)
    best_SK = x_SIK[np.arange(S), value_SI.argmin(axis=1)]

    B = bootstrap_samples
    # Each dataset's resamples start where fit_chinchilla_law would start them; a dataset with
    # fewer distinct basins repeats its best start, so that every dataset has J starts.
    starts = [bootstrap_starts(x_SIK[s], value_SI[s], bootstrap_basins, bootstrap_extra) for s in range(S)]
    J = max(len(x) for x in starts)
    starts_SJK = np.stack([np.concatenate([x, np.repeat(x[:1], J - len(x), axis=0)]) for x in starts])
    counts_PR = rng.multinomial(R, np.full(R, 1.0 / R), size=S * B).astype(np.float64)
    boot = _solve(log_X_JR, np.repeat(log_loss_SR, B * J, axis=0), np.repeat(starts_SJK, B, axis=0).reshape(-1, 5),
                  np.repeat(counts_PR, J, axis=0), max_evaluations)
    value_SBJ = np.where(np.isfinite(boot.value_P), boot.value_P, np.inf).reshape(S, B, J)
    x_SBJK = boot.x_PK.reshape(S, B, J, -1)
    laws_SB = [[_law(x_SBJK[s, b, value_SBJ[s, b].argmin()]) for b in range(B)] for s in range(S)]
    tail = 50.0 * (1.0 - confidence)
    intervals = {k: np.array([np.percentile([getattr(l, k) for l in laws], [tail, 100 - tail]) for laws in laws_SB])
                 for k in COVERED}
    return CoverageStudy(law, rel_noise, confidence, B, tuple(_law(x) for x in best_SK), intervals)


assert PARAMETERS == ("a", "b", "e", "alpha", "beta")  # the x_PK layout _law reads
