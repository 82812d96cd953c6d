"""The study's rules: exact vs nominal accounting, the early-plateau rule, the held-out budget,
and the capacity-limited corpus."""
import numpy as np
import pytest

from research.scaling import COARSE_GRID, ChinchillaLaw, RunTable, RunTableError, fit_envelope, fit_isoflop, isoflop_runs
from research.scaling.held_out import predict_held_out_budget
from research.scaling.plateau import mark_plateau_runs, on_plateau, order1_entropy_nats
from research.scaling.run_table import read_runs_csv
from research.scaling.synthetic_bound import context_entropies_nats
from research.scaling.synthetic_corpus import markov_source

LAW = ChinchillaLaw(E=1.5, A=40.0, B=80.0, alpha=0.5, beta=0.4)


def test_exact_accounting_reads_total_N_and_exact_flops(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("N,N_total,D,C_exact,loss,status\n1000,1600,1e6,9.6e9,2.0,ok\n2000,2600,1e6,1.56e10,1.9,ok\n")
    nominal, exact = read_runs_csv(str(path)), read_runs_csv(str(path), "exact")
    np.testing.assert_allclose(nominal.N, [1000, 2000])
    np.testing.assert_allclose(nominal.compute, [6e9, 1.2e10])  # 6 N D
    np.testing.assert_allclose(exact.N, [1600, 2600])
    np.testing.assert_allclose(exact.compute, [9.6e9, 1.56e10])
    np.testing.assert_allclose(exact.flops_per_token, [9600, 15600])
    (tmp_path / "bare.csv").write_text("N,D,loss\n1000,1e6,2.0\n")
    with pytest.raises(RunTableError, match="N_total, C_exact"):
        read_runs_csv(str(tmp_path / "bare.csv"), "exact")


def test_isoflop_D_opt_uses_the_runs_own_flops_per_token():
    """With exact FLOPs of c(N) = 9 N per token (not 6 N), D_opt = C / c(N_opt)."""
    C, N, D = isoflop_runs([1e12, 1e13, 1e14], 7, 1e3, 1e6)
    D = C / (9.0 * N)  # these runs spend 9 N FLOPs per token
    table = RunTable(N, D, LAW.loss(N, D), flops=9.0 * N * D)
    for profile in fit_isoflop(table).profiles:
        assert profile.D_opt == pytest.approx(profile.compute / (9.0 * profile.N_opt), rel=1e-6)
    envelope = fit_envelope(table).envelope
    np.testing.assert_allclose(envelope.D, envelope.compute / (9.0 * envelope.N), rtol=1e-9)


def test_plateau_rule_flags_runs_that_never_beat_bigram_statistics():
    records = [{"run": "a", "status": "ok", "loss": 1.95}, {"run": "b", "status": "ok", "loss": 1.80},
               {"run": "c", "status": "failed", "loss": None}]
    marked = mark_plateau_runs(records, order1_entropy=1.96)
    assert [r["status"] for r in marked] == ["plateau", "ok", "failed"]
    assert "early plateau" in marked[0]["error"] and records[0]["status"] == "ok"  # inputs untouched
    assert on_plateau(1.92, 1.96) and not on_plateau(1.90, 1.96)
    assert mark_plateau_runs(records, None) == records  # no estimate: nothing flagged


def test_order1_entropy_plug_in_matches_the_source():
    source = markov_source(0, alphabet="abcd", order=1, concentration=0.5)
    ids = source.sample_ids([np.random.default_rng(i) for i in range(20)], 5000)
    assert order1_entropy_nats(ids) == pytest.approx(source.entropy_rate_nats(), abs=0.01)


def test_held_out_budget_predicted_from_the_others():
    C, N, D = isoflop_runs([1e10, 3e10, 1e11, 3e11], 6, 2e3, 6e4)
    table = RunTable(N, D, LAW.sample(N, D, rel_noise=0.002, seed=0), budget=C)
    held = predict_held_out_budget(table, grid=COARSE_GRID)
    assert held.num_held_out == 6 and held.num_fit_runs == 18 and held.compute == pytest.approx(3e11)
    assert abs(held.as_dict()["relative_error_at_best_run"]) < 0.01
    # The law's optimum along the budget is no worse than the best run that was made.
    assert held.predicted_optimum <= held.predicted_at_best_run + 1e-9
    with pytest.raises(RunTableError, match=">= 3 FLOP budgets"):
        predict_held_out_budget(RunTable(N[:12], D[:12], LAW.loss(N[:12], D[:12]), budget=C[:12]), grid=COARSE_GRID)


def test_hierarchical_zipf_source_puts_information_at_every_order():
    source = markov_source(0, alphabet="abcdefghijklmnop", order=3, concentration=0.75, zipf_exponent=0.8,
                           hierarchical=True)
    H = context_entropies_nats(source)
    assert np.all(np.diff(H) < -0.1)  # every order of context is worth > 0.1 nats
    assert H[-1] == pytest.approx(source.entropy_rate_nats(), rel=1e-9)
    # Heavy-tailed contexts: half the mass in < 5% of the 4096 contexts, 99% needs > 15%.
    mass = np.cumsum(np.sort(source.stationary_S())[::-1])
    assert np.searchsorted(mass, 0.5) < 0.05 * 4096 < 0.15 * 4096 < np.searchsorted(mass, 0.99)
    # The sampler draws from these transitions: empirical log-loss under the source ~ H.
    first, ids = source.sample([np.random.default_rng(i) for i in range(8)], 4000)
    empirical = -np.mean([source.log_probs(row, int(c)).mean() for row, c in zip(ids, first)])
    assert empirical == pytest.approx(H[-1], abs=0.05)
    # zipf_exponent 0 and hierarchical False is the old source, draw for draw.
    old = markov_source(0, alphabet="abcdefghijklmnop", order=2, concentration=0.05)
    assert old.entropy_rate_nats() == pytest.approx(0.7540566, abs=1e-6)


def test_bigram_level_on_real_text_is_held_out_not_plug_in():
    """A bigram source over 300 symbols, 100,000 training tokens (most of its 90,000 pairs seen a few times or never):
    the plug-in entropy of the training tokens falls far below the source's H_1 (and would flag
    runs that beat bigram statistics), the held-out cross-entropy of the counted bigram model
    does not."""
    from research.scaling.plateau import bigram_cross_entropy_nats

    rng = np.random.default_rng(0)
    vocab = 300
    transitions = rng.dirichlet(np.full(vocab, 0.1), size=vocab)
    stationary = np.linalg.matrix_power(transitions.T, 200) @ np.full(vocab, 1 / vocab)
    true_h1 = float(-(stationary[:, None] * transitions * np.log(transitions + 1e-300)).sum())

    cumulative = np.cumsum(transitions, axis=1)

    def sample(n: int, seed: int) -> list[int]:
        r = np.random.default_rng(seed)
        ids = [int(r.integers(vocab))]
        for u in r.random(n - 1):
            ids.append(int(np.searchsorted(cumulative[ids[-1]], u)))
        return ids

    train, held_out = sample(100_000, 1), sample(20_000, 2)
    assert order1_entropy_nats([train]) < true_h1 - 0.1  # 3.66 against 3.82
    estimate = bigram_cross_entropy_nats([train], [held_out], vocab)
    assert true_h1 - 0.02 < estimate < true_h1 + 0.3  # 4.04: high, so it flags fewer runs
    with pytest.raises(ValueError, match="vocab_size=10"):
        bigram_cross_entropy_nats([train], [held_out], 10)


def test_exact_report_reads_the_optimum_along_the_runs_flops_per_token(tmp_path):
    """Under exact accounting fit.json's Approach 3 optimum lies along C = f(N) D, f the power
    law through the runs' exact FLOPs per token (here exactly 40 N^0.8), not along 6 N D; a
    compute budget whose optimum lies beyond the runs' sizes is flagged as an extrapolation."""
    from research.scaling.laws import PowerLaw
    from research.scaling.report import fit_run_table

    f = PowerLaw(40.0, 0.8)
    C, N, D = isoflop_runs([1e10, 3e10, 1e11, 3e11], 6, 2e3, 6e4)
    loss = LAW.loss(N, D)
    rows = "\n".join(f"{n},{n},{d},{f(n) * d},{c},{l},ok" for n, d, c, l in zip(N, D, C, loss))
    path = tmp_path / "runs.csv"
    path.write_text("N,N_total,D,C_exact,C,loss,status\n" + rows + "\n")
    report = fit_run_table(str(path), str(tmp_path / "out"), accounting="exact", bootstrap_samples=20,
                           init_grid="coarse", compute_budget=1e11)
    along = report["approach3"]["optimum_exact_flops"]
    assert along["flops_per_token"]["exponent"] == pytest.approx(0.8, abs=1e-9)
    assert along["a"] == pytest.approx(LAW.beta / (LAW.alpha + 0.8 * LAW.beta), abs=0.01)  # 0.488
    assert report["approach3"]["a"] == pytest.approx(LAW.a, abs=0.01)  # 0.444: the 6 N D optimum
    assert len(along["intervals"]["a"]) == 2 and "warning" not in report["prediction"]["approach3"]
    far = fit_run_table(str(path), str(tmp_path / "far"), accounting="exact", bootstrap_samples=0,
                        init_grid="coarse", compute_budget=1e20)
    assert "outside the runs' N" in far["prediction"]["approach3"]["warning"]


def test_a_bug_in_the_bigram_level_is_not_taken_for_missing_data(tmp_path):
    """order1_entropy caught every Exception: a bug (here plan=None, an AttributeError) returned
    None and switched the plateau rule off without a word. Now only a data or tokenizer error
    does, with its reason in fit.json and a summary line; anything else propagates."""
    from experiments.configs.scaling_laws import get_config
    from experiments.scaling_laws.sweep_fit import order1_entropy

    with pytest.raises(AttributeError):  # the old code returned None: no H_1, no plateau flags
        order1_entropy(get_config("stdlib_tiny"), None, str(tmp_path))


def test_the_plateau_rule_is_not_applied_for_a_data_error_and_the_summary_says_why(tmp_path):
    import dataclasses

    from experiments.configs.scaling_laws import get_config
    from experiments.scaling_laws.sweep import plan_sweep
    from experiments.scaling_laws.sweep_fit import _plateau_level
    from experiments.scaling_laws.sweep_summary import summary

    config = get_config("stdlib_tiny")
    with pytest.raises(AttributeError):
        _plateau_level(config, None, str(tmp_path))
    plan = plan_sweep(config)
    missing = str(tmp_path / "missing.model")
    data = dataclasses.replace(plan.data_config,
                               tokenizer=dataclasses.replace(plan.data_config.tokenizer, model_path=missing))
    h1, reason = _plateau_level(config, dataclasses.replace(plan, data_config=data), str(tmp_path))
    assert h1 is None and reason.startswith("no bigram level H_1 for this corpus: DataError: ") and missing in reason
    config.fit.plateau_rule = False
    assert _plateau_level(config, plan, str(tmp_path)) == (None, "turned off (fit.plateau_rule=False)")
    law = LAW.as_dict()
    report = {"num_runs": 6, "approach3": {**law, "intervals": {}}, "approach2": {},
              "exact": {"approach3": {**law, "intervals": {}}, "approach2": {}},
              "sweep": {"runs": {"failed": [], "plateau": [], "plateau_rule": {"order1_entropy": None,
                                                                             "not_applied": reason}},
                        "param_count": "non_embedding", "n_opt_exponents": {}, "held_out": {}, "leave_out": {},
                        "compute_optimal": [], "irreducible": None, "seed_noise": None, "loss_by_budget": []}}
    assert f"plateau rule not applied: {reason}" in summary(report).splitlines()


def test_held_out_optimum_of_a_budget_with_one_size_follows_six_N_D():
    """A held-out budget of one run (tokens_tiny groups by compute): FLOPs per token were a line
    fitted to one point, the optimum was searched along a wrong budget line and landed on the
    grid's edge (2.1756 at N = 1e10 against 2.2457 at N = 4.2e9 along C = 6 N D)."""
    N = np.repeat(np.geomspace(1e7, 1e9, 5), 3)
    D = N * np.tile([40.0, 120.0, 360.0], 5)
    table = RunTable(N, D, LAW.loss(N, D))
    held = predict_held_out_budget(table, grid=COARSE_GRID)
    assert held.num_held_out == 1
    sizes = np.geomspace(N.min() / 10, N.max() * 10, 400)  # the prediction's own grid
    along = LAW.loss(sizes, held.compute / (6 * sizes))  # the true law along C = 6 N D
    assert held.predicted_optimum == pytest.approx(along.min(), rel=1e-4)
    assert held.predicted_optimum_N == pytest.approx(sizes[along.argmin()], rel=0.03)
