"""Prefix LM on a decoder: the prefix attends both ways, everything else stays causal."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data.objectives import PrefixLM, prefix_lm_example
from research.models import build_model, get_config
from research.training import losses


@pytest.fixture(scope="module")
def tiny():
    model = build_model(get_config("gpt2-tiny"))
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


def _changes(model, params, tokens, position, prefix=None):
    """Which output positions change when the token at `position` changes."""
    other = tokens.at[0, position].set((tokens[0, position] + 1) % 512)
    kwargs = {} if prefix is None else {"prefix_mask_BT": prefix}
    a = model.apply({"params": params}, tokens, **kwargs)
    b = model.apply({"params": params}, other, **kwargs)
    return np.abs(np.asarray(a - b)).max(axis=-1)[0] > 0


def test_prefix_attends_both_ways_and_suffix_stays_causal(tiny):
    model, params = tiny
    tokens = jnp.arange(3, 11)[None]
    prefix = jnp.array([[1, 1, 1, 1, 0, 0, 0, 0]])
    # A later prefix token is seen by every prefix position and everything after it.
    np.testing.assert_array_equal(_changes(model, params, tokens, 3, prefix), [1, 1, 1, 1, 1, 1, 1, 1])
    # A suffix token is seen only from its own position on: no prefix position sees it.
    np.testing.assert_array_equal(_changes(model, params, tokens, 5, prefix), [0, 0, 0, 0, 0, 1, 1, 1])
    # Without the mask the same model is causal.
    np.testing.assert_array_equal(_changes(model, params, tokens, 3), [0, 0, 0, 1, 1, 1, 1, 1])


def test_prefix_stays_inside_its_packed_document(tiny):
    model, params = tiny
    tokens = jnp.arange(3, 11)[None]
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 2]])
    prefix = jnp.array([[1, 1, 0, 0, 1, 1, 0, 0]])
    other = tokens.at[0, 5].set(100)
    a = model.apply({"params": params}, tokens, segment_ids_BT=segments, prefix_mask_BT=prefix)
    b = model.apply({"params": params}, other, segment_ids_BT=segments, prefix_mask_BT=prefix)
    changed = np.abs(np.asarray(a - b)).max(axis=-1)[0] > 0
    np.testing.assert_array_equal(changed, [0, 0, 0, 0, 1, 1, 1, 1])


def test_prefix_example_marks_prefix_and_weights_only_predictions_after_it():
    inputs = np.arange(10, 20, dtype=np.int32)
    example = {"inputs": inputs, "targets": inputs + 1, "loss_weights": np.ones(10, np.float32)}
    for seed in range(20):
        out = prefix_lm_example(example, np.random.default_rng(seed))
        p = int(out["prefix"].sum())
        assert 1 <= p <= 9
        np.testing.assert_array_equal(out["prefix"], (np.arange(10) < p).astype(np.int32))
        # Position p-1 predicts the first suffix token; earlier targets lie inside the prefix.
        np.testing.assert_array_equal(out["loss_weights"], (np.arange(10) >= p - 1).astype(np.float32))
    assert "prefix" in PrefixLM().packed_lengths(16)
    assert "prefix" not in PrefixLM(encoder_decoder=True).packed_lengths(16)


def test_decoder_prefix_lm_loss_reads_the_prefix(tiny):
    model, params = tiny
    objective = losses.get_objective("prefix_lm", "decoder")
    tokens = jnp.arange(3, 11)[None]
    batch = {"inputs": tokens, "targets": tokens + 1, "segment_ids": jnp.ones_like(tokens),
             "positions": jnp.arange(8)[None], "loss_weights": jnp.ones((1, 8)).at[0, :3].set(0.0)}
    causal, _ = losses.objective_loss(model, params, batch, None, objective=objective)
    with_prefix, _ = losses.objective_loss(model, params, {**batch, "prefix": jnp.array([[1, 1, 1, 1, 0, 0, 0, 0]])},
                                           None, objective=objective)
    assert float(causal) != float(with_prefix)
