"""Fits that stop where the optimum is: noiseless points from known laws are recovered exactly."""
import numpy as np
import pytest

from research.scaling import COARSE_GRID, ChinchillaLaw, RunTable, fit_chinchilla_law, isoflop_runs

# Laws whose noiseless fits the former absolute stopping test (ftol * max(|f|, 1)) left off
# by 1.2e-4 .. 7.4e-4 relative: their summed Huber objective falls below 1e-8 long before
# the parameters settle.
LAWS = [ChinchillaLaw(E=0.542, A=5.06, B=297.19, alpha=0.524, beta=0.508),
        ChinchillaLaw(E=1.533, A=19.003, B=6.998, alpha=0.561, beta=0.463),
        ChinchillaLaw(E=0.965, A=30.851, B=1375.283, alpha=0.667, beta=0.379)]


@pytest.mark.parametrize("law", LAWS, ids=["law4", "law6", "law7"])
def test_noiseless_points_recovered_to_1e4_relative(law):
    C, N, D = isoflop_runs(np.geomspace(1e10, 1e12, 5), 7, 2e3, 2e5)
    fit = fit_chinchilla_law(RunTable(N, D, law.loss(N, D), budget=C), grid=COARSE_GRID)
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit.law, name) == pytest.approx(getattr(law, name), rel=1e-4), name
