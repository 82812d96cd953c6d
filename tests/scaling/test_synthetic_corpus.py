"""The Markov corpus: determinism, exact entropy rate, and sampled text matching it."""
import numpy as np
import pytest

from research.scaling.synthetic_corpus import (DEFAULT_ALPHABET, MarkovSource, entropy_rate_nats, markov_source,
                                               nats_per_token, synthetic_documents)


def binary_entropy(p):
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def test_entropy_rate_of_a_two_state_chain_in_closed_form():
    p, q = 0.1, 0.3  # P(a -> b), P(b -> a)
    source = MarkovSource("ab", 1, np.array([[1 - p, p], [q, 1 - q]]))
    pi = np.array([q, p]) / (p + q)
    np.testing.assert_allclose(source.stationary_S(), pi, atol=1e-12)
    assert source.entropy_rate_nats() == pytest.approx(pi[0] * binary_entropy(p) + pi[1] * binary_entropy(q),
                                                       rel=1e-12)


def test_stationary_distribution_is_stationary():
    source = markov_source(3, order=2)
    pi = source.stationary_S()
    S, V = source.transitions_SV.shape
    successor = source.next_context(np.arange(S)[:, None], np.arange(V)[None, :])
    pushed = np.bincount(successor.ravel(), weights=(pi[:, None] * source.transitions_SV).ravel(), minlength=S)
    np.testing.assert_allclose(pushed, pi, atol=1e-12)
    assert pi.sum() == pytest.approx(1.0)


def test_sampled_text_has_the_computed_entropy_rate():
    """-mean log p of sampled characters under the true model matches H (stationary start)."""
    source = markov_source(0, order=2, concentration=0.2)
    H = source.entropy_rate_nats()
    assert 0.5 < H < np.log(len(DEFAULT_ALPHABET))
    first_B, ids_BT = source.sample([np.random.default_rng([7, i]) for i in range(64)], 2000)
    nll = -np.mean([source.log_probs(ids, first) for first, ids in zip(first_B, ids_BT)])
    assert nll == pytest.approx(H, rel=0.01)  # 128k characters: standard error ~0.3%
    assert entropy_rate_nats(source_seed=0, order=2, concentration=0.2) == H


def test_documents_are_deterministic_by_seed_and_index():
    docs = list(synthetic_documents(1, 5, 100, batch=2))
    assert docs == list(synthetic_documents(1, 5, 100, batch=4))
    assert docs[3:] == list(synthetic_documents(1, 2, 100, start=3))  # random access by index
    assert docs != list(synthetic_documents(2, 5, 100))
    assert all(len(d) == 100 and set(d) <= set(DEFAULT_ALPHABET) for d in docs)
    assert len(set(docs)) == 5


def test_lower_concentration_means_lower_entropy_and_order_changes_source():
    assert entropy_rate_nats(concentration=0.05) < entropy_rate_nats(concentration=0.2) < entropy_rate_nats(
        concentration=5.0) < np.log(27)
    assert entropy_rate_nats(order=1) != entropy_rate_nats(order=2)


def test_nats_per_token():
    assert nats_per_token(2.0, num_characters=1000, num_tokens=250) == 8.0


@pytest.mark.parametrize("kwargs,message", [
    ({"alphabet": "aab"}, "distinct characters"),
    ({"order": 0}, "order=0"),
    ({"order": 5}, r"27\*\*5 contexts"),
    ({"concentration": 0.0}, "concentration=0.0 must be > 0"),
])
def test_bad_source_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        markov_source(0, **kwargs)
    with pytest.raises(ValueError, match=message):
        next(synthetic_documents(0, 1, 10, **kwargs))
