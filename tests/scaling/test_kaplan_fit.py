"""Kaplan-style single-variable laws L(X) = E + (X_c / X)^alpha."""
import numpy as np
import pytest

from research.scaling import RunTable, RunTableError, SaturatingPowerLaw, fit_kaplan_laws, fit_saturating_power_law

from tests.scaling.synthetic import TRUE_LAW


@pytest.mark.parametrize("variable,law,X", [
    ("N", SaturatingPowerLaw(E=1.7, X_c=8.8e6, alpha=0.34), np.geomspace(1e7, 1e11, 12)),
    ("D", SaturatingPowerLaw(E=1.9, X_c=5e8, alpha=0.28), np.geomspace(1e9, 1e13, 10)),
    ("C", SaturatingPowerLaw(E=1.8, X_c=2e16, alpha=0.16), np.geomspace(1e18, 1e23, 15)),
])
def test_recovers_known_exponents(variable, law, X):
    rng = np.random.default_rng(0)
    loss = law.loss(X) * np.exp(rng.normal(0, 0.001, X.size))
    fit = fit_saturating_power_law(X, loss, variable=variable)
    assert fit.law.alpha == pytest.approx(law.alpha, rel=0.03)
    assert fit.law.E == pytest.approx(law.E, rel=0.01)
    assert fit.law.X_c == pytest.approx(law.X_c, rel=0.3)  # X_c = exp(a/alpha) amplifies errors


def test_fits_from_a_run_table():
    # Every size trained to convergence-like D (1e15 tokens) -> L(N) ≈ E + A/N^alpha.
    N = np.geomspace(1e7, 1e11, 10)
    N_all = np.concatenate([N, N])
    D_all = np.concatenate([np.full(10, 1e15), np.full(10, 1e10)])  # the short runs are never the best
    table = RunTable(N_all, D_all, TRUE_LAW.loss(N_all, D_all))
    fits = fit_kaplan_laws(table)
    law_N = fits["N"].law
    assert fits["N"].X.size == 10
    assert law_N.alpha == pytest.approx(TRUE_LAW.alpha, rel=0.03)
    # The irreducible term absorbs B/D^beta at D = 1e15.
    assert law_N.E == pytest.approx(TRUE_LAW.E + TRUE_LAW.B / 1e15**TRUE_LAW.beta, rel=0.01)
    assert isinstance(fits["D"], str) and "only 2 point" in fits["D"]  # two token counts: no L(D)
    assert fits["C"].X.size >= 4


@pytest.mark.parametrize("points", [2, 3])
def test_too_few_points(points):
    # On 3 points the 3-parameter law interpolated them exactly (objective ~1e-25), reported as a fit.
    X = np.geomspace(1e9, 1e11, points)
    with pytest.raises(RunTableError, match=rf"^L\(D\) has 3 parameters but only {points} point\(s\) \(on 3 it "
                                            r"interpolates them exactly\); runs need >= 4 distinct values of D\.$"):
        fit_saturating_power_law(X, 1.9 + (5e8 / X) ** 0.28, variable="D")
    law = fit_saturating_power_law(np.geomspace(1e9, 1e11, 4), 1.9 + (5e8 / np.geomspace(1e9, 1e11, 4)) ** 0.28)
    assert law.X.size == 4 and "problem" not in law.as_dict()


def test_a_law_whose_loss_rises_with_X_says_so():
    # One IsoFLOP budget: the larger models, on fewer tokens, do worse, so L(N) rises with N.
    from research.scaling import isoflop_runs
    C, N, D = isoflop_runs(np.array([1e19]), 6, 1e9, 1e11)
    fits = fit_kaplan_laws(RunTable(N, D, TRUE_LAW.loss(N, D), budget=C))
    law_N = fits["N"]
    assert law_N.law.alpha < 0
    assert law_N.as_dict()["problem"] == (
        f"alpha={law_N.law.alpha:.3g} <= 0: the fitted loss does not fall as N grows over these 6 points, so this is "
        "no scaling law in N; fit more runs (more budgets, sizes trained closer to convergence)")


def test_L_of_D_uses_only_data_limited_runs():
    """IsoFLOP runs: L(D) takes the right arm of each valley (N >= the budget's best N), never
    the small models whose loss their size limits; a token design: the largest model only."""
    from research.scaling import isoflop_runs
    from research.scaling.kaplan_fit import data_limited_rows

    C, N, D = isoflop_runs(np.geomspace(1e19, 1e21, 4), 9, 1e8, 1e10)
    table = RunTable(N, D, TRUE_LAW.loss(N, D), budget=C)
    rows = data_limited_rows(table)
    for budget in np.unique(C):
        group = np.flatnonzero(C == budget)
        best_N = N[group[np.argmin(table.loss[group])]]
        assert set(rows[C[rows] == budget]) == set(group[N[group] >= best_N])
        assert best_N > N[group].min()  # the smallest, size-limited model is left out
    fits = fit_kaplan_laws(table)
    assert fits["D"].X.size == rows.size < len(table)
    np.testing.assert_array_equal(np.sort(fits["D"].X), np.sort(D[rows]))

    sizes = np.repeat([1e8, 2e9, 4e10], 4)  # no two runs share a budget
    tokens = np.tile([1e9, 1e10, 1e11, 1e12], 3)
    token_table = RunTable(sizes, tokens, TRUE_LAW.loss(sizes, tokens))
    np.testing.assert_array_equal(data_limited_rows(token_table), np.flatnonzero(sizes == 4e10))
