"""BIG-bench linearity / breakthroughness (Srivastava et al. 2022, App. B) by hand, their noise
rule, item-bootstrap intervals, and teacher-forced p against exact match ~ p^L."""
import math

import numpy as np
import pytest

from research.evaluation import metrics as M
from research.evaluation.emergence_metrics import (bootstrap_mean_interval, breakthroughness,
                                                   curve_shape_with_noise, linearity, total_improvement)

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
    em, em_low, em_high = bootstrap_mean_interval(exact, samples=2000)
    pl, pl_low, pl_high = bootstrap_mean_interval(accuracy, samples=2000, transform=lambda m: m**L)
    assert pl == pytest.approx(accuracy.mean() ** L)
    assert max(em_low, pl_low) <= min(em_high, pl_high) + 0.01  # intervals meet: EM ~ p^L
    # Errors that come all together (an item is right or wrong as a whole): EM = p, far from p^L.
    together = np.repeat((rng.random(n) < p)[:, None], L, axis=1)
    em2, low2, high2 = bootstrap_mean_interval(together.all(axis=1).astype(float))
    _, pl2_low, pl2_high = bootstrap_mean_interval(together.mean(axis=1), transform=lambda m: m**L)
    assert low2 > pl2_high  # the comparison detects it
