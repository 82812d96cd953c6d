"""Writing past the end of a KV cache raises (dynamic_update_slice would clamp and overwrite)."""
import jax
import jax.numpy as jnp
import pytest

from research.models import build_model, get_config
from research.models.decoder import init_decoder_cache
from research.models.encoder_decoder import init_encoder_decoder_cache


def test_decoder_cache_overflow_raises_eagerly_and_at_trace_time():
    config = get_config("gpt2-tiny", num_layers=1)
    model = build_model(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    step = jax.jit(lambda tokens, cache: model.apply({"params": params}, tokens, cache=cache))
    _, cache = step(jnp.ones((1, 5), jnp.int32), init_decoder_cache(config, batch=1, max_len=6))
    # Slot 5 is the last one: two more tokens would need 7 slots (checked before any layer runs).
    with pytest.raises(ValueError, match="at cache slot 5 needs 7 slots but the KV cache has 6"):
        model.apply({"params": params}, jnp.ones((1, 2), jnp.int32), cache=cache)
    logits, full = step(jnp.ones((1, 1), jnp.int32), cache)
    assert int(full.index) == 6 and bool(jnp.all(jnp.isfinite(logits)))
    # Under jit the index is traced: a step past the end wrote over the last slot and gave finite,
    # wrong logits (3.5 off the full forward in a 4-slot llama). They are NaN now.
    over, _ = step(jnp.ones((1, 1), jnp.int32), full)
    assert bool(jnp.all(jnp.isnan(over)))
    # Under jit the index is traced; a write longer than the whole cache still fails while tracing.
    with pytest.raises(ValueError, match="7 tokens do not fit a KV cache of 6 slots"):
        step(jnp.ones((1, 7), jnp.int32), init_decoder_cache(config, batch=1, max_len=6))


def test_encoder_decoder_cache_overflow_raises():
    config = get_config("t5-tiny", num_layers=1, num_encoder_layers=1)
    model = build_model(config)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), tokens, tokens)["params"]
    encoded = jnp.zeros((1, 4, config.d_model))
    cache = init_encoder_decoder_cache(config, batch=1, max_len=2)._replace(index=jnp.int32(2))
    with pytest.raises(ValueError, match="at cache slot 2 needs 3 slots"):
        model.apply({"params": params}, encoded, jnp.ones((1, 1), jnp.int32), cache=cache, method="decode")
    # Under jit the index is traced: the write past the end clamped and the logits were finite, wrong.
    step = jax.jit(lambda cache: model.apply({"params": params}, encoded, jnp.ones((1, 1), jnp.int32), cache=cache,
                                             method="decode"))
    fits, _ = step(cache._replace(index=jnp.int32(1)))
    over, _ = step(cache)
    assert bool(jnp.all(jnp.isfinite(fits))) and bool(jnp.all(jnp.isnan(over)))
