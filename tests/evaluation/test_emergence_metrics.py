"""BIG-bench linearity / breakthroughness (Srivastava et al. 2022, App. B) by hand, their noise
rule, item-bootstrap intervals, and teacher-forced p against exact match ~ p^L."""
import math

import numpy as np
import pytest

from research.evaluation import metrics as M
from research.evaluation.emergence_metrics import (bootstrap_mean_interval, breakthroughness,
                                                   curve_shape_with_noise, linearity, mean_resolution,
                                                   total_improvement)
from research.evaluation.study_report import mirage_table

SCALES = [1e4, 3e4, 1e5, 3e5, 1e6]


def test_paper_formulas_by_hand():
    # Equal steps: I = 4, every step 1 -> L = B = n - 1 = 4.
    assert linearity(SCALES, [0, 1, 2, 3, 4]) == pytest.approx(4.0)
    assert breakthroughness(SCALES, [0, 1, 2, 3, 4]) == pytest.approx(4.0)
    # One jump: RMS of steps (0, 0, 0, 1) is 1/2 -> L = 2 = sqrt(n - 1); median square 0 -> B = +inf.
    assert linearity(SCALES, [0, 0, 0, 0, 1]) == pytest.approx(2.0)
    assert breakthroughness(SCALES, [0, 0, 0, 0, 1]) == math.inf
    # Steps 0.1, 0.4, 0.1: I = 0.6, RMS = sqrt(0.06), root median square = 0.1.
    y = [0.0, 0.1, 0.5, 0.6]
    assert linearity(SCALES[:4], y) == pytest.approx(0.6 / math.sqrt(0.06))
    assert breakthroughness(SCALES[:4], y) == pytest.approx(6.0)
    # I is signed by where the best model sits: a curve that falls with scale is negative,
    # and models are ordered by scale whatever order they are given in.
    assert total_improvement(SCALES, [4, 3, 2, 1, 0]) == -4
    assert linearity(SCALES[::-1], [4, 3, 2, 1, 0]) == pytest.approx(4.0)


def items(rates, n):
    """Per-item 0/1 scores with exactly rate * n ones per model."""
    return [[1.0] * round(r * n) + [0.0] * (n - round(r * n)) for r in rates]


def test_noise_rule_separates_a_tiny_jump_from_a_real_one():
    tiny, real = [0, 0, 0, 0, 0.01], [0, 0, 0, 0, 1]
    # 100 items: one correct answer is within noise, so no shape metrics at all.
    flat = curve_shape_with_noise(SCALES, items(tiny, 100))
    assert not flat["above_noise"] and flat["breakthroughness"] is None and flat["linearity"] is None
    assert flat["paper_breakthroughness"] == math.inf  # what the paper's formula alone would say
    # 1000 items: 10 correct answers clear 3 standard errors, but the floored steps keep B finite
    # and proportional to the jump, instead of +inf for both curves.
    small = curve_shape_with_noise(SCALES, items(tiny, 1000))
    large = curve_shape_with_noise(SCALES, items(real, 1000))
    assert small["above_noise"] and large["above_noise"]
    assert small["breakthroughness"] == pytest.approx(10.0)
    assert large["breakthroughness"] == pytest.approx(1000.0)
    # Steps far above their noise keep the paper's values.
    smooth = curve_shape_with_noise(SCALES, items([0.1, 0.3, 0.5, 0.7, 0.9], 1000))
    assert smooth["linearity"] == pytest.approx(4.0) and smooth["breakthroughness"] == pytest.approx(4.0)
    low, high = smooth["value_intervals"][2]
    assert low < 0.5 < high and high - low < 0.05


def test_a_continuous_metric_gets_the_paper_values_in_any_units():
    # Item scores of a probability rising 6e-4 per model, paired item noise well below the steps:
    # the (1 / items)^2 floor of 0/1 scores (1e-6 here, above 6e-4^2) drew L down to 2.4, and the
    # same curve in percent got the paper's 4.0.
    rng = np.random.default_rng(0)
    base = 0.01 + rng.normal(0, 1e-4, 1000)
    scores = np.array([base + 6e-4 * i + rng.normal(0, 1e-5, 1000) for i in range(5)])
    shape = curve_shape_with_noise(SCALES, scores)
    percent = curve_shape_with_noise(SCALES, 100 * scores)
    assert shape["above_noise"]
    assert shape["linearity"] == pytest.approx(shape["paper_linearity"], rel=1e-3)
    assert shape["linearity"] == pytest.approx(percent["linearity"], rel=1e-9)
    assert shape["breakthroughness"] == pytest.approx(percent["breakthroughness"], rel=1e-9)
    # The resolution of a mean over items: 1 / items for 0/1 scores and whole numbers, the grid
    # over the items for fractions of 4 tokens.
    assert mean_resolution(np.array([[0.0, 1.0, 1.0, 0.0]])) == 0.25
    assert mean_resolution(np.array([[3.0, 0.0], [1.0, 2.0]])) == 0.5
    assert mean_resolution(np.array([[0.25, 0.75, 1.0, 0.5]])) == pytest.approx(0.0625)


def test_noise_rule_sees_a_rise_that_falls_back_and_no_flat_noise():
    # The minimum ties at both ends (0.001 at the 2nd model, 0.003 at the last), so I's sign can
    # flip between resamples: in one run of the study (other items) the signed-I rule judged
    # such a 0.965 rise noise. The range rule does not depend on the sign.
    rise_fall = curve_shape_with_noise(SCALES, items([0.002, 0.001, 0.615, 0.966, 0.003], 1000))
    assert rise_fall["above_noise"] and rise_fall["total_improvement"] == pytest.approx(0.965)
    assert rise_fall["breakthroughness"] is not None
    # Flat curves of independent noisy items, 16 checkpoints x 400 items at a rate of 0.01 (the
    # sparse case where the signed-I rule raised false alarms): none is called above noise,
    # while the same curves with a 0.05 rise at the last checkpoint are.
    rng = np.random.default_rng(0)
    flat = [(rng.random((16, 400)) < 0.01).astype(float) for _ in range(40)]
    assert not any(curve_shape_with_noise(range(16), f, seed=i)["above_noise"] for i, f in enumerate(flat))
    for f in flat:
        f[-1, :20] = 1.0
    assert all(curve_shape_with_noise(range(16), f, seed=i)["above_noise"] for i, f in enumerate(flat))


def test_teacher_forced_p_is_per_token_and_ignores_later_positions():
    # Gold "543": the first token is wrong, the rest are the argmax given the gold prefix.
    out = M.teacher_forced(np.log([0.2, 0.9, 0.6]), np.array([False, True, True]))
    assert out["teacher_forced_accuracy"] == pytest.approx(2 / 3)
    assert out["teacher_forced_prob"] == pytest.approx((0.2 + 0.9 + 0.6) / 3)
    assert out["answer_tokens"] == 3
    # token_accuracy of a free-running generation that dropped the first digit: every later
    # position is shifted, so it scores 0 where teacher forcing scores 2/3.
    assert M.token_accuracy([4, 3], [5, 4, 3]) == 0.0


@pytest.mark.parametrize("L", [2, 4, 6])
def test_exact_match_matches_p_to_the_L_only_for_independent_tokens(L):
    rng = np.random.default_rng(L)
    p, n = 0.8, 2000
    correct_NL = rng.random((n, L)) < p  # independent per-token errors (Schaeffer et al.'s model)
    exact = correct_NL.all(axis=1).astype(float)
    accuracy = correct_NL.mean(axis=1)
    pl, _, _ = bootstrap_mean_interval(accuracy, samples=2000, transform=lambda m: m**L)
    assert pl == pytest.approx(accuracy.mean() ** L) and exact.mean() == pytest.approx(pl, abs=0.03)
    assert _mirage_row(correct_NL)["exact_match_agrees_with_p_to_the_L"]  # the paired difference's interval holds 0
    # Errors that come all together (an item is right or wrong as a whole): EM = p, far above p^L.
    together = np.repeat((rng.random(n) < p)[:, None], L, axis=1)
    _, low2, _ = bootstrap_mean_interval(together.all(axis=1).astype(float))
    _, _, pl2_high = bootstrap_mean_interval(together.mean(axis=1), transform=lambda m: m**L)
    assert low2 > pl2_high  # the comparison detects it
    assert _mirage_row(together)["exact_match_minus_p_to_the_L_interval"][0] > 0


def _mirage_row(correct_NL: np.ndarray) -> dict:
    """study_report.mirage_table's row of items whose answer tokens are right where correct_NL is."""
    n = len(correct_NL)
    items = {"exact_match": correct_NL.all(axis=1).astype(float).tolist(),
             "teacher_forced_accuracy": correct_NL.mean(axis=1).tolist(),
             "teacher_forced_prob": correct_NL.mean(axis=1).tolist(), "target_log_prob": [0.0] * n,
             "token_edit_distance": [0.0] * n, "answer_tokens": [float(correct_NL.shape[1])] * n}
    (row,) = mirage_table([{"task": "t", "num_shots": 0, "size": "s", "params_non_embedding": 1, "items": items}])
    return row


def test_p_to_the_L_over_answers_of_several_lengths_is_the_mean_of_each_items_p_to_its_L():
    """Base-26 addition of 2 digits answers in 2 or 3 tokens (55% carry). For independent digits,
    exact match's expectation is the mean of p^(L_i), above (mean p)^(mean L) by Jensen's
    inequality (p^L is convex in L): 0.0105 above at p = 0.5, so exact match 'disagreed' with p^L in
    44% of evaluations of 1,000 items where its 80% interval should miss about 20%."""
    rng = np.random.default_rng(0)
    agree, differences = [], []
    for _ in range(100):
        lengths = np.where(rng.random(1000) < 0.55, 3, 2)
        correct = [rng.random(L) < 0.5 for L in lengths]
        items = {"exact_match": [float(c.all()) for c in correct],
                 "teacher_forced_accuracy": [float(c.mean()) for c in correct],
                 "teacher_forced_prob": [0.5] * 1000, "target_log_prob": [0.0] * 1000,
                 "token_edit_distance": [0.0] * 1000, "answer_tokens": lengths.astype(float).tolist()}
        (row,) = mirage_table([{"task": "t", "num_shots": 0, "size": "s", "params_non_embedding": 1,
                                "items": items}], samples=300, seed=int(rng.integers(1 << 30)))
        accuracy = np.asarray(items["teacher_forced_accuracy"])
        assert row["p_to_the_L"] == pytest.approx(np.mean([accuracy.mean() ** L for L in lengths]))
        agree.append(row["exact_match_agrees_with_p_to_the_L"])
        differences.append(row["exact_match_minus_p_to_the_L"])
    assert abs(np.mean(differences)) < 0.004 and np.mean(agree) >= 0.7, (np.mean(differences), np.mean(agree))


def test_exact_match_and_p_to_the_L_agree_by_their_paired_difference_not_by_overlapping_intervals():
    # The audit's case: 1000 items of 6 tokens, half the items easy (each token right with
    # probability 0.92), half hard (0.84), tokens independent within an item. Exact match is
    # then above p^L (errors gather on the hard items), and the two 80% intervals overlap,
    # which the design log read as "exact match follows p^L"; the difference's interval, from
    # the same item resamples, does not hold 0.
    rng = np.random.default_rng(0)
    n, L = 1000, 6
    hard = rng.random(n) < 0.5
    correct_NL = rng.random((n, L)) < np.where(hard, 0.84, 0.92)[:, None]
    row = _mirage_row(correct_NL)
    (em_low, em_high), (pl_low, pl_high) = row["exact_match_interval"], row["p_to_the_L_interval"]
    assert max(em_low, pl_low) <= min(em_high, pl_high)  # the intervals overlap
    low, high = row["exact_match_minus_p_to_the_L_interval"]
    assert 0 < low < row["exact_match_minus_p_to_the_L"] < high
    assert not row["exact_match_agrees_with_p_to_the_L"]
    # By hand: the difference of the two means over one resample of the items, 1000 resamples.
    exact, p = correct_NL.all(axis=1).astype(float), correct_NL.mean(axis=1)
    index_BI = np.random.default_rng(0).integers(0, n, size=(1000, n))
    differences = exact[index_BI].mean(axis=1) - p[index_BI].mean(axis=1) ** L
    assert row["exact_match_minus_p_to_the_L"] == pytest.approx(exact.mean() - p.mean() ** L)
    np.testing.assert_allclose([low, high], np.percentile(differences, [10, 90]))
    # Paired with each side's own interval: the same resamples (seed and item count).
    np.testing.assert_allclose(row["exact_match_interval"], np.percentile(exact[index_BI].mean(axis=1), [10, 90]))


def test_exact_match_zero_on_every_item_agrees_with_a_p_to_the_L_below_one_item():
    # 1000 items of 6 tokens, each right with probability 0.2: p^L = 6.4e-5, so no item is all
    # right, and exact match is 0 in every resample. The difference's interval then sits just
    # below 0 (all of it p^L's spread), less than one item (0.001) from it: agreement. A p^L of
    # 0.05, 50 items' worth, is not.
    rng = np.random.default_rng(1)
    for p, agrees in ((0.2, True), (0.6, False)):
        correct_NL = rng.random((1000, 6)) < p
        correct_NL[correct_NL.all(axis=1), 0] = False  # exact match 0 on every item
        row = _mirage_row(correct_NL)
        assert row["exact_match_interval"] == [0.0, 0.0] and row["exact_match_minus_p_to_the_L_interval"][1] < 0
        assert row["exact_match_agrees_with_p_to_the_L"] == agrees


def test_p_to_the_L_times_the_end_decision_predicts_exact_match_where_p_to_the_L_alone_does_not():
    # 1000 items of 4 answer tokens, each right with probability 0.85, and the decision to stop
    # after them, right with probability 0.7, all independent. Exact match needs all five:
    # 0.85^4 * 0.7 = 0.37, while p^L over the answer tokens alone predicts 0.85^4 = 0.52, a
    # paired difference far outside noise; p^L q, q the end's accuracy, predicts exact match.
    rng = np.random.default_rng(0)
    n, L = 1000, 4
    correct_NL, end_N = rng.random((n, L)) < 0.85, rng.random(n) < 0.7
    exact = (correct_NL.all(axis=1) & end_N).astype(float)
    p = correct_NL.mean(axis=1)
    items = {"exact_match": exact.tolist(), "teacher_forced_accuracy": p.tolist(),
             "teacher_forced_prob": p.tolist(), "target_log_prob": [0.0] * n,
             "token_edit_distance": [0.0] * n, "answer_tokens": [float(L)] * n,
             "end_is_greedy": end_N.astype(float).tolist(), "end_prob": end_N.astype(float).tolist()}
    (row,) = mirage_table([{"task": "t", "num_shots": 0, "size": "s", "params_non_embedding": 1, "items": items}])
    assert row["exact_match_minus_p_to_the_L_interval"][1] < -0.1 and not row["exact_match_agrees_with_p_to_the_L"]
    assert row["end_accuracy"] == pytest.approx(end_N.mean())
    assert row["p_to_the_L_times_end"] == pytest.approx(p.mean() ** L * end_N.mean())
    assert row["exact_match_minus_p_to_the_L_times_end"] == pytest.approx(exact.mean() - p.mean() ** L * end_N.mean())
    assert row["exact_match_agrees_with_p_to_the_L_times_end"]
    # Its interval by hand: both means over the same 1000 resamples of the items.
    index_BI = np.random.default_rng(0).integers(0, n, size=(1000, n))
    differences = exact[index_BI].mean(axis=1) - p[index_BI].mean(axis=1) ** L * end_N[index_BI].mean(axis=1)
    np.testing.assert_allclose(row["exact_match_minus_p_to_the_L_times_end_interval"], np.percentile(differences, [10, 90]))
    # Items without the end decision (a harness that does not score it): no such columns.
    assert "end_accuracy" not in _mirage_row(correct_NL)


def test_the_product_of_per_position_accuracies_tells_unequal_positions_from_dependent_errors():
    # 3000 items of 5 or 6 answer tokens, errors independent but positions unequal (0.99 .. 0.70,
    # as carries make some digits harder): exact match is below p^L by the AM-GM inequality, and
    # the product of per-position accuracies predicts it. Errors that repel each other (at most one
    # wrong token per item, at the same per-position rates) leave a gap below even that product.
    rng = np.random.default_rng(0)
    p_j = np.array([0.99, 0.95, 0.90, 0.85, 0.80, 0.70])
    lengths = np.where(np.arange(3000) % 3 == 0, 5, 6)

    def row_of(correct):
        items = {"exact_match": [float(all(c)) for c in correct], "answer_tokens": [float(len(c)) for c in correct],
                 "teacher_forced_accuracy": [float(np.mean(c)) for c in correct],
                 "answer_token_greedy": [[float(v) for v in c] for c in correct]}
        for name in ("teacher_forced_prob", "target_log_prob", "token_edit_distance"):
            items[name] = items["teacher_forced_accuracy"]
        (row,) = mirage_table([{"task": "t", "num_shots": 0, "size": "s", "params_non_embedding": 1, "items": items}])
        return row

    independent = [rng.random(L) < p_j[:L] for L in lengths]
    row = row_of(independent)
    # By hand: p_j over the items that have a j-th token, then the mean over items of their prefix product.
    shares = [np.mean([c[j] for c in independent if len(c) > j]) for j in range(6)]
    expected = np.mean([np.prod(shares[:len(c)]) for c in independent])
    assert row["p_positions_product"] == pytest.approx(expected, rel=1e-12)
    assert row["exact_match_minus_p_to_the_L_interval"][1] < 0 and not row["exact_match_agrees_with_p_to_the_L"]
    assert row["exact_match_agrees_with_p_positions_product"]
    repelling = []
    for L in lengths:  # one wrong token at position j with probability 1 - p_j, never two
        wrong = np.flatnonzero(rng.random(L) >= p_j[:L])
        c = np.ones(L, bool)
        if len(wrong):
            c[rng.choice(wrong)] = False
        repelling.append(c)
    assert not row_of(repelling)["exact_match_agrees_with_p_positions_product"]
