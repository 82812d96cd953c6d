"""Each metric on hand-computed examples (arithmetic in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from research.evaluation import metrics as M
from research.evaluation.emergence_metrics import (breakthroughness, in_context_learning_score, linearity,
                                                   total_improvement)
from research.models import ConfigError


def test_generation_metrics_by_hand():
    assert M.exact_match(" 543\n", "543") == 1.0 and M.exact_match("54", "543") == 0.0
    assert M.extract_answer("7+6=13; 4+1=5. Answer: 53", "Answer:") == "53"
    assert M.extract_answer("53", "Answer:") == "53"  # no prefix: the whole text
    # target 5 4 3, prediction 5 4 9 7: positions 0, 1 match, 2 does not -> 2/3.
    assert M.token_accuracy([5, 4, 9, 7], [5, 4, 3]) == pytest.approx(2 / 3)
    assert M.token_accuracy([5], [5, 4, 3]) == pytest.approx(1 / 3)  # missing positions miss
    # 5 4 9 7 -> 5 4 3: substitute 9->3, delete 7 = 2 edits.
    assert M.token_edit_distance([5, 4, 9, 7], [5, 4, 3]) == 2
    # kitten -> sitting: k->s, e->i, insert g = 3 (the textbook example).
    assert M.token_edit_distance(list("kitten"), list("sitting")) == 3
    assert M.token_edit_distance([], [1, 2]) == 2
    assert M.mean_brier(np.array([0.5, 1.5])) == 1.0


def test_multiple_choice_metrics_by_hand():
    # log-likelihoods -1, -2 (gold), -4 for choices of 1, 10, 1 characters.
    out = M.multiple_choice_metrics([-1.0, -2.0, -4.0], gold=1, choices=["a", "abcdefghij", "b"])
    assert out["acc"] == 0.0  # argmax is choice 0
    assert out["acc_norm"] == 1.0  # per character: -1, -0.2, -4 -> choice 1
    # p = softmax(-1, -2, -4) = e^0, e^-1, e^-3 over 1 + 0.3679 + 0.0498 = 1.4177 -> 0.7054, 0.2595, 0.0351
    # Brier = 0.7054^2 + (0.2595 - 1)^2 + 0.0351^2 = 0.4976 + 0.5483 + 0.0012 = 1.0471
    assert out["brier_score"] == pytest.approx(1.0471, abs=1e-3)
    assert out["target_log_prob"] == -2.0
    # An empty choice scores -inf per character, as in lm-eval: it won acc_norm here with -1 / 1.
    assert M.multiple_choice_metrics([-1.0, -2.0], gold=1, choices=["", "ab"])["acc_norm"] == 1.0


def test_rolling_aggregation_is_corpus_level():
    examples = [{"log_prob": -10.0, **M.rolling_units("ab cd", 5)}, {"log_prob": -2.0, **M.rolling_units("x", 1)}]
    # tokens 5 + 1 = 6, words 2 + 1 = 3, bytes 5 + 1 = 6; total log p = -12.
    out = M.aggregate(examples, M.ROLLING_METRICS)
    assert out["token_perplexity"] == pytest.approx(math.exp(12 / 6))
    assert out["word_perplexity"] == pytest.approx(math.exp(12 / 3))
    assert out["byte_perplexity"] == pytest.approx(math.exp(12 / 6))
    assert out["bits_per_byte"] == pytest.approx(12 / (6 * math.log(2)))
    assert M.aggregate([{"acc": 1.0}, {"acc": 0.0}, {"acc": 1.0}], ["acc"]) == {"acc": pytest.approx(2 / 3)}


def test_linearity_and_breakthroughness_by_hand():
    scales = [1e6, 1e7, 1e8, 1e9, 1e10]
    # Steady: y = 0, .1, .2, .3, .4. I = +0.4 (max after min); every step 0.1 -> RMS = RMedS = 0.1.
    # L = B = 0.4 / 0.1 = 4 = n - 1.
    assert linearity(scales, [0, .1, .2, .3, .4]) == pytest.approx(4)
    assert breakthroughness(scales, [0, .1, .2, .3, .4]) == pytest.approx(4)
    # Jump at the end: steps 0, 0, .02, .78. I = 0.8. RMS = sqrt((0.0004 + 0.6084) / 4) = 0.3901 -> L = 2.0506.
    # Median of squares (0, 0, 0.0004, 0.6084) = 0.0002 -> RMedS = 0.014142 -> B = 56.57.
    jump = [0.1, 0.1, 0.1, 0.12, 0.9]
    assert linearity(scales, jump) == pytest.approx(0.8 / math.sqrt(0.6088 / 4), rel=1e-6)
    assert breakthroughness(scales, jump) == pytest.approx(0.8 / math.sqrt(0.0002), rel=1e-6)
    # Worsening with scale: argmax (0) before argmin (2) -> I = -(0.5 - 0.1) = -0.4; steps -0.2, -0.2 -> L = -2.
    assert total_improvement([1, 2, 3], [0.5, 0.3, 0.1]) == pytest.approx(-0.4)
    assert linearity([1, 2, 3], [0.5, 0.3, 0.1]) == pytest.approx(-2)
    # Models are sorted by scale first; a flat curve scores 0; a lone jump has median step 0 -> inf.
    assert linearity([1e10, 1e6, 1e8, 1e7, 1e9], [.4, 0, .2, .1, .3]) == pytest.approx(4)
    assert linearity([1, 2, 3], [0.2, 0.2, 0.2]) == 0.0
    assert breakthroughness([1, 2, 3, 4], [0, 0, 0, 1]) == math.inf
    with pytest.raises(ConfigError, match="at least 2 models"):
        linearity([1], [0.5])
    with pytest.raises(ConfigError, match="repeat a value"):
        breakthroughness([1, 1, 2], [0, 1, 2])


def test_in_context_learning_score_by_hand():
    # Example 1: loss 3.0 at token 2, 1.0 at token 4; example 2: 5.0 and 2.0.
    # late - early = mean(1, 2) - mean(3, 5) = 1.5 - 4 = -2.5.
    losses = [np.array([9.0, 3.0, 8.0, 1.0]), np.array([9.0, 5.0, 8.0, 2.0, 7.0])]
    assert in_context_learning_score(losses, early_token=2, late_token=4) == pytest.approx(-2.5)
    with pytest.raises(ConfigError, match="example 0 has 4 tokens, fewer than late_token=500"):
        in_context_learning_score(losses)
    with pytest.raises(ConfigError, match="1 <= early_token < late_token"):
        in_context_learning_score(losses, early_token=4, late_token=2)


def test_rolling_units_count_words_and_bytes_as_lm_eval():
    # Leading / trailing whitespace is an empty "word" to lm-eval; stripping first undercounted.
    pytest.importorskip("lm_eval")
    from lm_eval.api.task import ConfigurableTask

    for text in ["hello world", "hello world\n", "  The cat sat.\n\nThe dog sat.\n", "\n", "caf\u00e9 \u00fcber"]:
        units = M.rolling_units(text, 1)
        assert (units["num_words"], units["num_bytes"]) == \
            (ConfigurableTask.count_words(text), ConfigurableTask.count_bytes(text)), text


def test_a_perplexity_past_a_floats_range_is_inf_not_an_overflow_error():
    """A text without spaces (CJK, minified code) is one "word" of thousands of nats: math.exp
    raised OverflowError there, losing every row already computed."""
    example = {"log_prob": -2000.0, **M.rolling_units("\u4e2d" * 400, 400)}  # 1 word, 400 tokens, 1200 bytes
    out = M.aggregate([example], M.ROLLING_METRICS)
    assert out["word_perplexity"] == math.inf
    assert out["token_perplexity"] == pytest.approx(math.exp(5.0))
    assert out["byte_perplexity"] == pytest.approx(math.exp(2000 / 1200))
    assert out["bits_per_byte"] == pytest.approx(2000 / (1200 * math.log(2)))
    assert M.perplexity(709.0) == pytest.approx(math.exp(709.0)) and M.perplexity(710.0) == math.inf


def test_an_empty_text_adds_no_tokens_or_bytes_and_units_of_zero_are_nan():
    # lm-eval scores an empty text log p 0 over 0 bytes and (count_words) 1 word.
    empty = {"log_prob": 0.0, **M.rolling_units("", 0)}
    text = {"log_prob": -6.0, **M.rolling_units("ab cd", 5)}
    out = M.aggregate([text, empty], M.ROLLING_METRICS)
    assert out["token_perplexity"] == pytest.approx(math.exp(6 / 5))
    assert out["byte_perplexity"] == pytest.approx(math.exp(6 / 5))
    assert out["word_perplexity"] == pytest.approx(math.exp(6 / 3))
    alone = M.aggregate([empty], M.ROLLING_METRICS)  # nothing measured: 0 / 0 (was ZeroDivisionError)
    assert math.isnan(alone["token_perplexity"]) and math.isnan(alone["bits_per_byte"])
    assert alone["word_perplexity"] == 1.0
