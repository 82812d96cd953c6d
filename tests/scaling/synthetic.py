"""Synthetic run tables drawn from known laws, shared by the scaling tests."""
import numpy as np

from research.scaling import BESIROGLU_2024, RunTable, isoflop_runs

TRUE_LAW = BESIROGLU_2024  # any law would do; this one has Chinchilla's magnitudes


def chinchilla_like_runs(rel_noise: float = 0.002, seed: int = 0) -> RunTable:
    """240 runs laid out like Hoffmann et al.'s Figure 4: 9 IsoFLOP budgets, 4e7..1.6e10 params."""
    C, N, D = isoflop_runs(np.geomspace(6e18, 3e21, 9), 27, 4e7, 1.6e10)
    keep = D > 1e8  # drops the 3 largest models at the smallest budget: 240 runs
    N, D, C = N[keep], D[keep], C[keep]
    return RunTable(N, D, TRUE_LAW.sample(N, D, rel_noise=rel_noise, seed=seed), budget=C)
