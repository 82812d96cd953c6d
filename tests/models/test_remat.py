"""Remat policies by name: identical gradients, and the compiled step's memory shrinks in
the order none > save_dots > minimal > full (under scan_layers, as large runs use)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import build_model, get_config
from research.models.config import ConfigError
from research.models.layers import remat_policy
from research.models.layout import unbox

POLICIES = ("none", "save_dots", "minimal", "full")


def _grad_fn(remat):
    config = get_config("llama-tiny", num_layers=4, d_ff=256, vocab_size=256, max_len=256, scan_layers=True,
                        remat=remat)
    model = build_model(config)

    def loss(params, tokens):
        logits = model.apply({"params": params}, tokens)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0])

    return model, jax.jit(jax.grad(loss))


def test_policies_give_identical_gradients_and_ordered_memory():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 256)), jnp.int32)
    model, _ = _grad_fn("none")
    params = unbox(jax.jit(model.init)(jax.random.key(0), tokens[:, :8])["params"])
    temp_bytes, grads = {}, {}
    for remat in POLICIES:
        _, grad = _grad_fn(remat)
        compiled = grad.lower(params, tokens).compile()
        temp_bytes[remat] = compiled.memory_analysis().temp_size_in_bytes
        grads[remat] = compiled(params, tokens)
    print({k: f"{v / 1e6:.1f} MB" for k, v in temp_bytes.items()})
    sizes = [temp_bytes[p] for p in POLICIES]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 1.5 * sizes[-1], temp_bytes
    for remat in POLICIES[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads[remat], grads["none"])


def test_offload_needs_an_accelerator_and_names_the_fix():
    # conftest runs the suite on CPU, which has no host-offload memory space.
    with pytest.raises(ConfigError, match="remat='minimal' on CPU"):
        remat_policy("offload")
