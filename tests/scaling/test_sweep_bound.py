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


def test_window_bound_counts_the_context_each_window_starts_without():
    source = markov_source(0, alphabet="abcdefgh", order=2, concentration=0.2)
    h0, h1, h2 = context_entropies_nats(source)
    # 8 characters in windows of 4 inputs: tokens ▁ c1 c2 c3 | c4 c5 c6 c7 | c8 eos. Token i is
    # predicted from the inputs of its window up to i - 1: c1 from [▁] (no character), c2 from
    # [▁ c1], c4 from [▁ c1 c2 c3], c5 from [c4] (one), c8 from [c4 c5 c6 c7].
    contexts = [0, 1, 2, 2, 1, 2, 2, 2]
    assert window_bound_nats(source, 8, 4) == pytest.approx(np.mean([(h0, h1, h2)[c] for c in contexts]))
    assert window_bound_nats(source, 10_000, 10_001) == pytest.approx(h2 + (h0 + h1 - 2 * h2) / 10_000)
    # 1024 characters, windows of 64: c1 sees none, c2 and the first target of 15 later windows one.
    assert window_bound_nats(source, 1024, 64) == pytest.approx(h2 + ((h0 - h2) + 16 * (h1 - h2)) / 1024)
    with pytest.raises(ValueError, match="seq_len=1"):
        window_bound_nats(source, 8, 1)
