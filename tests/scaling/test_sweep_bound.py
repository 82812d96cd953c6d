"""The reachable loss on the synthetic corpus: conditional entropies by context length, window bound."""
import collections

import numpy as np
import pytest

from research.scaling.synthetic_bound import context_entropies_nats, window_bound_nats
from research.scaling.synthetic_corpus import markov_source, synthetic_documents


def plug_in_conditional_entropy(text: str, j: int) -> float:
    """H(X_t | previous j characters) estimated from counts of (j+1)-grams in `text`."""
    grams = collections.Counter(text[i:i + j + 1] for i in range(len(text) - j))
    contexts = collections.Counter()
    for gram, count in grams.items():
        contexts[gram[:-1]] += count
    total = sum(grams.values())
    return -sum(count / total * np.log(count / contexts[gram[:-1]]) for gram, count in grams.items())


def test_context_entropies_match_counts_in_sampled_text():
    options = dict(alphabet="abcd", order=2, concentration=0.5)
    source = markov_source(1, **options)
    entropies = context_entropies_nats(source)
    assert list(entropies) == sorted(entropies, reverse=True)  # more context never hurts
    assert entropies[-1] == pytest.approx(source.entropy_rate_nats(), abs=1e-12)
    text = "".join(synthetic_documents(0, 40, 5000, source_seed=1, **options))
    for j, expected in enumerate(entropies):
        assert plug_in_conditional_entropy(text, j) == pytest.approx(expected, abs=0.01), j


def _binary_entropy_times(m: int) -> float:
    """m h(1/m): what predicting eos with probability 1/m at m like inputs costs in all."""
    return float(np.log(m) + (m - 1) * np.log(m / (m - 1)))


def test_window_bound_counts_the_context_each_window_starts_without_and_the_eos():
    source = markov_source(0, alphabet="abcdefgh", order=2, concentration=0.2)
    h0, h1, h2 = context_entropies_nats(source)
    # 8 characters in windows of 4 inputs: tokens ▁ c1 c2 c3 | c4 c5 c6 c7 | c8 eos. Token i is
    # predicted from the inputs of its window up to i - 1: c1 from [▁] (no character), c2 from
    # [▁ c1], c4 from [▁ c1 c2 c3], c5 from [c4] (one), c8 from [c4 c5 c6 c7]. The eos follows
    # c8, the first input of a window without ▁, as c4 is: P(eos) = 1/2 there; 2 ln 2 per document.
    contexts = [0, 1, 2, 2, 1, 2, 2, 2]
    characters = sum((h0, h1, h2)[c] for c in contexts)
    assert window_bound_nats(source, 8, 4) == pytest.approx((characters + 2 * np.log(2)) / 9)
    # One window holds the whole document with its ▁: the eos's place is known, it costs nothing.
    assert window_bound_nats(source, 10_000, 10_001) == pytest.approx((h0 + h1 + 9_998 * h2) / 10_001)
    # 1024 characters, windows of 64: c1 sees none, c2 and the first target of 15 later windows
    # one; the eos follows c1024, the first input of window 16, as c64, ..., c960 are (m = 16).
    expected = (h0 + 16 * h1 + 1007 * h2 + _binary_entropy_times(16)) / 1025
    assert window_bound_nats(source, 1024, 64) == pytest.approx(expected)
    # 10 characters in windows of 4: the eos follows c10 at window position 2, as c6 does (c2 is
    # in the ▁ window, which a model tells apart): m = 2.
    contexts = [0, 1, 2, 2, 1, 2, 2, 2, 1, 2]
    characters = sum((h0, h1, h2)[c] for c in contexts)
    assert window_bound_nats(source, 10, 4) == pytest.approx((characters + 2 * np.log(2)) / 11)
    with pytest.raises(ValueError, match="seq_len=1"):
        window_bound_nats(source, 8, 1)
