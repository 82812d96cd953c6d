"""Approaches 1 and 2: IsoFLOP parabolas and the loss-compute envelope on synthetic runs."""
import numpy as np
import pytest

from research.scaling import (PowerLaw, RunTable, RunTableError, compute_frontier, fit_envelope, fit_isoflop,
                              isoflop_runs)
from research.scaling.isoflop import group_by_budget

from tests.scaling.synthetic import TRUE_LAW

BUDGETS = np.geomspace(1e18, 1e22, 5)


def test_approach2_recovers_exponent_of_exact_parabolas():
    """Losses exactly parabolic in ln N around N_opt = 0.3 C^0.45 give a = 0.45, b = 0.55."""
    C, N, D = isoflop_runs(BUDGETS, 7, 1e6, 1e12)
    true = PowerLaw(0.3, 0.45)
    loss = 2.0 + 0.05 * (np.log(N) - np.log(true(C))) ** 2 - 0.01 * np.log(C)
    fit = fit_isoflop(RunTable(N, D, loss))  # groups by 6ND, no C column
    assert len(fit.profiles) == 5 and not fit.skipped
    assert fit.N_opt.exponent == pytest.approx(0.45, abs=1e-9)
    assert fit.N_opt.coefficient == pytest.approx(0.3, rel=1e-6)
    assert fit.D_opt.exponent == pytest.approx(0.55, abs=1e-9)
    assert fit.as_dict()["a"] + fit.as_dict()["b"] == pytest.approx(1.0)


def test_approach2_on_a_chinchilla_law(chinchilla_table):
    fit = fit_isoflop(chinchilla_table)
    assert len(fit.profiles) == 9
    # A parabola only approximates each profile, so a is close to, not equal to, beta/(alpha+beta).
    assert fit.N_opt.exponent == pytest.approx(TRUE_LAW.a, abs=0.03)
    assert not any(p.extrapolated for p in fit.profiles)


def test_budget_grouping_and_skipped_budgets():
    C, N, D = isoflop_runs(BUDGETS[:3], 5, 1e7, 1e10)
    # Rounding N and D to whole layers and steps perturbs 6ND by a few percent.
    jitter = np.random.default_rng(0).uniform(0.97, 1.03, N.size)
    N_extra, D_extra = np.array([1e8, 2e8]), 1e23 / (6 * np.array([1e8, 2e8]))  # a budget with 2 sizes
    table = RunTable(np.concatenate([N * jitter, N_extra]), np.concatenate([D, D_extra]),
                     TRUE_LAW.loss(np.concatenate([N * jitter, N_extra]), np.concatenate([D, D_extra])))
    assert [len(g) for g in group_by_budget(table)] == [5, 5, 5, 2]
    fit = fit_isoflop(table)
    assert len(fit.profiles) == 3
    assert len(fit.skipped) == 1 and "2 model size(s)" in fit.skipped[0]


def extrapolated_budget_table():
    """Four noiseless budgets of a known law (a = 0.556): the first three with 6 sizes 4x either
    side of their optimum, the last with 6 sizes all below its optimum (a ladder ending too low)."""
    from research.scaling import ChinchillaLaw

    law = ChinchillaLaw(E=1.54, A=114.6, alpha=0.845, B=1.7e5, beta=1.06)
    C, N = [], []
    for i, budget in enumerate([3.16e10, 1e11, 3.16e11, 1e12]):
        N_opt = float(law.compute_optimal(budget)[0])
        sizes = np.geomspace(N_opt / 4, N_opt * 4, 6) if i < 3 else np.geomspace(N_opt / 8, N_opt / 1.3, 6)
        C += [budget] * 6
        N += list(sizes)
    C, N = np.array(C), np.array(N)
    D = C / (6 * N)
    return law, RunTable(N, D, law.loss(N, D), budget=C)


def test_an_extrapolated_vertex_is_left_out_of_N_opt_and_listed():
    law, table = extrapolated_budget_table()
    fit = fit_isoflop(table)
    assert fit.N_opt.exponent == pytest.approx(law.a, abs=0.005)  # 0.512 with the last vertex in the fit
    assert len(fit.skipped) == 1 and fit.skipped[0].startswith("C=1e+12: vertex N_opt=") and "extrapolated" in \
        fit.skipped[0]
    assert [p["in_fit"] for p in fit.as_dict()["profiles"]] == [True, True, True, False]
    assert fit.as_dict()["skipped"] == list(fit.skipped)
    kept = fit_isoflop(table, include_extrapolated=True)
    assert len(kept.profiles) == 4 and not kept.skipped and abs(kept.N_opt.exponent - law.a) > 0.03
    two = table.select(np.flatnonzero(np.isin(table.budget, [3.16e10, 1e12])))
    with pytest.raises(RunTableError, match=r"found 1 \(C=1e\+12: vertex N_opt=.* \(extrapolated\)"):
        fit_isoflop(two)


def test_approach2_needs_two_profiles():
    C, N, D = isoflop_runs(BUDGETS[:1], 5, 1e7, 1e10)
    with pytest.raises(RunTableError, match="IsoFLOP profiles at >= 2 budgets, found 1"):
        fit_isoflop(RunTable(N, D, TRUE_LAW.loss(N, D)))


def training_curves(sizes, max_tokens=1e13, points=60):
    """One curve per size: the law's loss after each of `points` log-spaced token counts."""
    N = np.repeat(sizes, points)
    D = np.tile(np.geomspace(1e8, max_tokens, points), len(sizes))
    run = np.repeat([f"model-{i}" for i in range(len(sizes))], points)
    return RunTable(N, D, TRUE_LAW.loss(N, D), run=run)


def test_approach1_envelope_of_training_curves():
    table = training_curves(np.geomspace(1e7, 1e11, 41))
    fit = fit_envelope(table, num_compute=500, between_sizes=False)  # the best rung at each compute
    assert fit.from_curves
    env = fit.envelope
    # The envelope is never above any curve at the same compute, and its sizes grow with C.
    assert np.all(np.diff(env.N) >= 0)
    on_envelope = np.isin(table.N, env.N)
    assert env.loss.min() >= TRUE_LAW.loss(*TRUE_LAW.compute_optimal(env.compute.max())) - 1e-9
    assert on_envelope.any()
    assert fit.N_opt.exponent == pytest.approx(TRUE_LAW.a, abs=0.03)
    assert fit.D_opt.exponent == pytest.approx(TRUE_LAW.b, abs=0.03)
    between = fit_envelope(table, num_compute=500)  # the default: N_opt read between rungs
    assert between.N_opt.exponent == pytest.approx(TRUE_LAW.a, abs=0.01)
    assert between.D_opt.exponent == pytest.approx(TRUE_LAW.b, abs=0.01)


def cpu_tiny_law_runs():
    """The cpu_tiny sweep's seed-0 runs (N non-embedding, D, nominal budget) and noiseless final
    losses from a law that sweep fitted (a = 0.556)."""
    from experiments.configs.scaling_laws import get_config
    from experiments.scaling_laws.sweep import plan_sweep
    from research.scaling import ChinchillaLaw

    law = ChinchillaLaw(E=1.539, A=114.6, alpha=0.845, B=1.705e5, beta=1.06)
    runs = [r for r in plan_sweep(get_config("cpu_tiny")).runs if r.seed == 0]
    return law, runs


def test_default_envelope_leaves_the_ladders_ends_out_of_training_curves():
    """Noiseless curves of a known law at the cpu_tiny design, each run's curve from 1,024 tokens
    to its end (as curves.csv holds them): early in training the smallest model leads, so most
    grid values' best size is the ladder's smallest, a bound and not an optimum. The default
    (what the fit CLI and report.fit_run_table use) keeps only bracketed grid values and
    recovers the law's a; keeping every argmin gave 0.247."""
    law, runs = cpu_tiny_law_runs()
    rows = [(r.N, d, r.run_id) for r in runs for d in np.geomspace(1024, r.tokens, 16)]
    N, D = (np.array([row[i] for row in rows], float) for i in (0, 1))
    table = RunTable(N, D, law.loss(N, D), run=np.array([row[2] for row in rows]))
    fit = fit_envelope(table)
    assert fit.N_opt.exponent == pytest.approx(law.a, abs=0.01)
    assert fit.D_opt.exponent == pytest.approx(law.b, abs=0.01)
    assert N.min() < fit.envelope.N.min() and fit.envelope.N.max() < N.max()
    rungs = fit_envelope(table, between_sizes=False)  # bracketed, on the rungs: the staircase's slope
    assert np.isin(rungs.envelope.N, N).all() and N.min() < rungs.envelope.N.min()
    assert abs(rungs.N_opt.exponent - law.a) < 0.05
    raw = fit_envelope(table, between_sizes=False, bracketed=False)  # kept for comparison, documented biased
    assert raw.N_opt.exponent == pytest.approx(0.247, abs=0.01) and raw.envelope.N.min() == N.min()
    with pytest.raises(ValueError, match="needs bracketed=True"):
        fit_envelope(table, bracketed=False)


@pytest.mark.parametrize("labelled", [True, False])
def test_frontier_counts_each_budget_once_at_its_best_run(labelled):
    """Noiseless final losses at the cpu_tiny runs: rounding to whole steps moves a run's 6 N D
    by < 0.2% from its budget, which made every size of the smallest budget a frontier point
    of its own (11 points from 4 budgets, a = 0.498). Each budget counts once, at its compute
    (the C label, or its runs grouped within 10%), and N_opt read between rungs gives the law's a."""
    law, runs = cpu_tiny_law_runs()
    N, D = np.array([r.N for r in runs], float), np.array([r.tokens for r in runs], float)
    budget = np.array([r.budget for r in runs])
    table = RunTable(N, D, law.loss(N, D), budget=budget if labelled else None)
    fit = fit_envelope(table)
    budgets = np.unique(budget)
    assert fit.envelope.compute.size == budgets.size == 4
    np.testing.assert_allclose(fit.envelope.compute, budgets, rtol=0 if labelled else 2e-3)
    assert fit.N_opt.exponent == pytest.approx(law.a, abs=0.01)
    rows, compute = compute_frontier(table)
    best = [np.flatnonzero(budget == c)[np.argmin(table.loss[budget == c])] for c in budgets]
    assert rows.tolist() == best and np.array_equal(compute, fit.envelope.compute)
    np.testing.assert_array_equal(fit_envelope(table, between_sizes=False).envelope.N, N[best])


def test_curve_with_two_sizes_is_an_error():
    table = RunTable(np.array([1e8, 2e8, 4e8]), np.array([1e9, 2e9, 4e9]), np.array([3.0, 2.9, 2.8]),
                     run=np.array(["a", "a", "b"]))
    with pytest.raises(RunTableError, match="run 'a' has rows with different N"):
        fit_envelope(table)


def test_frontier_of_final_losses():
    table = RunTable(np.array([1.0, 2.0, 3.0, 4.0, 5.0]) * 1e8, np.full(5, 1e9),
                     np.array([3.0, 3.2, 2.9, 2.95, 2.5]))
    rows, compute = compute_frontier(table)  # no C column, and FLOPs > 10% apart: each run its own budget
    assert rows.tolist() == [0, 2, 4]
    np.testing.assert_allclose(compute, table.compute[[0, 2, 4]], rtol=1e-12)
    fit = fit_envelope(table)
    assert not fit.from_curves and fit.envelope.N.tolist() == [1e8, 3e8, 5e8]
    # Runs 5% apart chain into one group_by_budget group spanning 34%: not one budget, so each
    # run stays its own frontier point rather than the group collapsing into one.
    dense = RunTable(np.full(7, 1e8), 1e9 * 1.05 ** np.arange(7), 3.0 - 0.01 * np.arange(7))
    assert compute_frontier(dense)[0].tolist() == list(range(7))


def test_a_run_column_naming_each_row_is_final_losses_not_curves():
    """A sweep's runs.csv has a run column with one row per run: Approach 1 read each row as a
    curve of one point and found 2 grid values (a = 0.076 on these losses). They are final
    losses: the frontier, as without the column."""
    law, runs = cpu_tiny_law_runs()
    N, D = np.array([r.N for r in runs], float), np.array([r.tokens for r in runs], float)
    budget = np.array([r.budget for r in runs])
    named = fit_envelope(RunTable(N, D, law.loss(N, D), budget=budget, run=np.array([r.run_id for r in runs])))
    plain = fit_envelope(RunTable(N, D, law.loss(N, D), budget=budget))
    assert not named.from_curves and named.envelope.compute.size == 4
    assert named.N_opt.exponent == plain.N_opt.exponent == pytest.approx(law.a, abs=0.01)


def test_frontier_leaves_out_a_budget_whose_best_run_is_its_edge():
    """A budget whose best run is its smallest (or largest) size only bounds its optimum."""
    C, N, D = isoflop_runs([1e10, 1e11, 1e12], 5, 1e3, 1e5)
    loss = 2.0 + 0.05 * (np.log(N) - np.log(0.03 * C ** 0.5)) ** 2 - 0.01 * np.log(C)
    loss[C == 1e12] = 2.0 - 0.01 * np.log(1e12) + 0.01 * np.arange(5)  # best at its smallest size
    table = RunTable(N, D, loss, budget=C)
    assert fit_envelope(table).envelope.compute.tolist() == [1e10, 1e11]
    assert fit_envelope(table, between_sizes=False, bracketed=False).envelope.compute.tolist() == [1e10, 1e11, 1e12]


@pytest.mark.parametrize("exact", [False, True])
def test_approach1_between_rungs_removes_the_ladders_staircase(exact):
    """Noiseless final losses of the cpu_tiny sweep's IsoFLOP design (its ladder, unevenly spaced;
    6 sizes per budget around 200 tokens per parameter, D planned from 6 N; each model's runs are
    its curve) from the law that sweep fitted: the plain argmin's exponent is off by the staircase
    of discrete sizes; N_opt read between rungs recovers the law's. Under exact accounting each
    run really costs f(N) D FLOPs (f as the ladder's, 1.5x 6 N at the smallest size, 1.1x at the
    largest), so the runs of one budget sit at different compute and the envelope's ends are
    reached by some sizes only: those points are left out (the law's a along f: 0.586; with them
    kept Approach 1 read 0.515)."""
    from research.scaling import ChinchillaLaw, PowerLaw

    law = ChinchillaLaw(E=1.539, A=114.6, B=1.705e5, alpha=0.845, beta=1.06)
    flops_per_token = PowerLaw(17.5, 0.91) if exact else PowerLaw(6.0, 1.0)
    true_a = law.optimal_exponents(flops_per_token)[0]
    ladder = np.array([1760, 3792, 6592, 10160, 14496, 19600, 25472, 39520, 59240, 80000.0])
    N, D, runs = [], [], []
    for C in (3.16e10, 1e11, 3.16e11, 1e12):
        nearest = np.argsort(np.abs(np.log(ladder) - np.log(np.sqrt(C / 6 / 200))))[:6]
        for i in sorted(nearest):
            N.append(ladder[i]), D.append(C / 6 / ladder[i]), runs.append(f"model-{i}")
    N, D = np.array(N), np.array(D)
    table = RunTable(N, D, law.loss(N, D), run=np.array(runs), flops=flops_per_token(N) * D)
    between, argmin = fit_envelope(table), fit_envelope(table, between_sizes=False, bracketed=False)
    assert abs(between.N_opt.exponent - true_a) < 0.015
    assert abs(argmin.N_opt.exponent - true_a) > 0.03
    assert not np.isin(between.envelope.N, ladder).all()  # between rungs, not only on them
    assert ladder.min() <= between.envelope.N.min() and between.envelope.N.max() <= ladder.max()
