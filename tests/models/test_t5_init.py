"""T5 from scratch follows T5's init (Mesh TF / HF _init_weights): fan-in scaled kernels,
N(0, 1) token embeddings, so that v1.0's scaled tied logits start O(1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import build_model, get_config
from research.models.layout import unbox


@pytest.fixture(scope="module")
def t5():
    config = get_config("t5-tiny", d_model=128, d_ff=256, head_dim=32, vocab_size=2048)
    model = build_model(config)
    tokens = jnp.arange(2 * 16).reshape(2, 16) % config.vocab_size
    params = unbox(jax.jit(model.init)(jax.random.key(0), tokens, tokens)["params"])
    return config, model, params, tokens


def _std(x):
    return float(np.std(np.asarray(x)))


def test_t5_init_statistics(t5):
    config, _, params, _ = t5
    d, f, h, dh = config.d_model, config.d_ff, config.num_heads, config.dim_per_head
    assert _std(params["token_embed"]["embedding"]) == pytest.approx(1.0, rel=0.05)
    attention = params["encoder_layers_0"]["attention"]
    # T5 does not scale its logits, so the query's init carries the 1/sqrt(Dh).
    assert _std(attention["query"]["kernel"]) == pytest.approx((d * dh) ** -0.5, rel=0.05)
    assert _std(attention["key"]["kernel"]) == pytest.approx(d**-0.5, rel=0.05)
    assert _std(attention["value"]["kernel"]) == pytest.approx(d**-0.5, rel=0.05)
    assert _std(attention["out"]["kernel"]) == pytest.approx((h * dh) ** -0.5, rel=0.05)
    mlp = params["decoder_layers_1"]["mlp"]
    assert _std(mlp["wi"]["kernel"]) == pytest.approx(d**-0.5, rel=0.05)
    assert _std(mlp["wo"]["kernel"]) == pytest.approx(f**-0.5, rel=0.05)
    # 32 x 4 entries only: a looser bound, still far from 0.02.
    assert _std(params["encoder_relative_bias"]["embedding"]["embedding"]) == pytest.approx(d**-0.5, rel=0.3)


def test_t5_v10_tied_logits_start_order_one(t5):
    _, model, params, tokens = t5
    logits = jax.jit(model.apply)({"params": params}, tokens, tokens)
    assert 0.3 < _std(logits) < 3.0


def test_gpt_init_is_unchanged():
    config = get_config("gpt2-tiny")
    params = unbox(jax.jit(build_model(config).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    assert _std(params["token_embed"]["embedding"]) == pytest.approx(0.02, rel=0.05)
    assert _std(params["layers_0"]["mlp"]["wo"]["kernel"]) == pytest.approx(0.02, rel=0.05)
