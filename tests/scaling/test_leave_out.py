"""Approach 3 refitted without each edge of the design: the right runs are left out, and an
edge that bends the law is found by the E that comes back without it."""
import numpy as np
import pytest

from research.scaling.chinchilla_fit import COARSE_GRID
from research.scaling.laws import ChinchillaLaw
from research.scaling.leave_out import leave_out_fits
from research.scaling.run_table import RunTable

TRUE = ChinchillaLaw(E=1.5, A=300.0, B=2000.0, alpha=0.6, beta=0.45)


def _isoflop_design():
    budgets = np.array([1e11, 3e11, 1e12, 3e12])
    sizes = np.geomspace(2e3, 6e4, 7)
    N, C = (a.ravel() for a in np.meshgrid(sizes, budgets))
    return N, C / (6 * N), C


def test_each_edge_is_left_out_and_noiseless_data_give_the_law_back():
    N, D, C = _isoflop_design()
    out = leave_out_fits(RunTable(N, D, TRUE.loss(N, D), budget=C), grid=COARSE_GRID)
    assert set(out) == {"smallest_size", "largest_size", "smallest_budget", "largest_budget"}
    assert [out[k]["runs_left_out"] for k in ("smallest_size", "largest_size")] == [4, 4]
    assert [out[k]["runs_left_out"] for k in ("smallest_budget", "largest_budget")] == [7, 7]
    for edge in out.values():
        assert edge["runs"] == 28 - edge["runs_left_out"]
        assert edge["E"] == pytest.approx(TRUE.E, rel=1e-3) and edge["alpha"] == pytest.approx(TRUE.alpha, rel=1e-2)
        assert edge["a"] == pytest.approx(TRUE.beta / (TRUE.alpha + TRUE.beta), rel=1e-2)


def test_a_smallest_size_off_the_power_law_is_found_by_leaving_it_out():
    N, D, C = _isoflop_design()
    loss = TRUE.loss(N, D) * np.where(N == N.min(), 1.04, 1.0)  # the smallest size 4% worse than the law
    out = leave_out_fits(RunTable(N, D, loss, budget=C), grid=COARSE_GRID)
    assert out["smallest_size"]["E"] == pytest.approx(TRUE.E, rel=1e-3)
    for edge in ("largest_size", "smallest_budget", "largest_budget"):  # each keeps the bent size: E moves
        assert abs(out[edge]["E"] / TRUE.E - 1) > 3e-3, edge


def test_too_few_sizes_or_runs_are_skipped_with_the_reason():
    N = np.array([1e3, 1e3, 2e3, 2e3, 1e3, 2e3])
    D = np.array([1e6, 2e6, 1e6, 2e6, 4e6, 4e6])
    out = leave_out_fits(RunTable(N, D, TRUE.loss(N, D)))
    assert out == {"smallest_size": {"skipped": "only 2 size(s)"}, "largest_size": {"skipped": "only 2 size(s)"}}


def test_a_refit_without_an_optimum_gets_no_exponent_but_the_reason(monkeypatch):
    from types import SimpleNamespace
    from research.scaling import leave_out
    no_optimum = ChinchillaLaw(E=1.5, A=300.0, B=2000.0, alpha=0.6, beta=-0.7)
    monkeypatch.setattr(leave_out, "fit_chinchilla_law", lambda table, grid=None: SimpleNamespace(law=no_optimum))
    N, D, C = _isoflop_design()
    out = leave_out_fits(RunTable(N, D, TRUE.loss(N, D), budget=C), grid=COARSE_GRID)
    for edge in out.values():
        assert edge["a"] is None and "no compute-optimal allocation" in edge["optimum_skipped"]
        assert edge["beta"] == -0.7  # the law itself is still reported
