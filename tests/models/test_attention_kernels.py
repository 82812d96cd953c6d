"""Every attention kernel that runs on CPU equals the xla reference, forward and gradient,
with packing, padding, GQA, causal / bidirectional masks and T5's relative bias."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import build_model, get_config
from research.models.attention_kernels import (NEG_INF, jax_dot_product_attention, reference_attention, resolve_kernel,
                                               segment_attention_mask, softmax_last_axis, splash_attention)
from research.models.config import ConfigError
from research.models.layout import unbox


def _qkv(b, t, s, h, k, dh, seed=0):
    rng = np.random.default_rng(seed)
    draw = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return draw(b, t, h, dh), draw(b, s, k, dh), draw(b, s, k, dh)


def _packed_segments(t):
    """Row 0: two packed documents then padding; row 1: one document filling the row."""
    cut, pad = t // 3, t // 8
    return jnp.asarray([[1] * cut + [2] * (t - cut - pad) + [0] * pad, [1] * t], jnp.int32)


def _compare(kernel_fn, mask, q, k, v, *, scale, bias=None, rtol=1e-5):
    """Outputs of real (non-padding) queries and the gradient of a loss over them agree."""
    valid = (mask.q_segment_BT > 0)[:, :, None, None]
    reference = lambda q, k, v: reference_attention(q, k, v, mask.dense_BTS, scale=scale, bias_BHTS=bias)
    # A loss over real queries only, weighted so that every output element matters.
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.where(valid, f(q, k, v), 0.0) * jnp.cos(q))
    run = lambda f: jax.jit(lambda q, k, v: (jnp.where(valid, f(q, k, v), 0), jax.grad(loss(f), (0, 1, 2))(q, k, v)))
    (out, grads), (out_ref, grads_ref) = run(kernel_fn)(q, k, v), run(reference)(q, k, v)
    np.testing.assert_allclose(out, out_ref, rtol=rtol, atol=rtol)
    for got, want in zip(grads, grads_ref):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("causal", [True, False])
def test_dot_product_attention_equals_reference_packed_padded_gqa(causal):
    q, k, v = _qkv(2, 16, 16, h=4, k=2, dh=8)
    segments = _packed_segments(16)
    mask = segment_attention_mask(segments, segments, causal)
    _compare(lambda q, k, v: jax_dot_product_attention(q, k, v, mask, scale=0.35), mask, q, k, v, scale=0.35)


def test_dot_product_attention_equals_reference_with_bias_and_cross_attention():
    q, k, v = _qkv(2, 8, 16, h=4, k=4, dh=8, seed=1)
    bias = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 8, 16)), jnp.float32)
    q_segments = jnp.asarray([[1] * 5 + [0] * 3, [1] * 8], jnp.int32)
    mask = segment_attention_mask(q_segments, _packed_segments(16), causal=False)
    _compare(lambda q, k, v: jax_dot_product_attention(q, k, v, mask, scale=1.0, bias_BHTS=bias), mask, q, k, v,
             scale=1.0, bias=bias)


def test_splash_in_interpret_mode_equals_reference():
    # Splash's blocks are multiples of 128 lanes, so T = 128 is the smallest length it takes.
    q, k, v = _qkv(2, 128, 128, h=4, k=2, dh=8, seed=3)
    segments = _packed_segments(128)
    mask = segment_attention_mask(segments, segments, causal=True)
    _compare(lambda q, k, v: splash_attention(q, k, v, mask, scale=0.35), mask, q, k, v, scale=0.35)


def test_splash_under_a_sharded_mesh_runs_per_shard_and_equals_reference():
    """On a (data 2, fsdp 2, tensor 2) mesh splash runs inside shard_map: each device takes its
    rows and heads (GQA groups whole), so the compiled program gathers nothing, and the values
    and gradients equal the unsharded reference."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from research.sharding import DEFAULT_RULES
    from research.training import partitioning

    mesh = partitioning.make_training_mesh((2, 2, 2))
    q, k, v = _qkv(4, 128, 128, h=4, k=2, dh=8, seed=4)
    segments = jnp.concatenate([_packed_segments(128), _packed_segments(128)[::-1]])
    rows, heads = P(("data", "fsdp"), None), P(("data", "fsdp"), None, "tensor", None)
    with partitioning.sharding_context(mesh, DEFAULT_RULES):
        q, k, v = (jax.device_put(x, NamedSharding(mesh, heads)) for x in (q, k, v))
        segments = jax.device_put(segments, NamedSharding(mesh, rows))
        mask = segment_attention_mask(segments, segments, causal=True)
        forward = jax.jit(lambda q, k, v: splash_attention(q, k, v, mask, scale=0.35))
        assert "all-gather" not in forward.lower(q, k, v).compile().as_text()
        assert forward(q, k, v).sharding.spec == heads
        _compare(lambda q, k, v: splash_attention(q, k, v, mask, scale=0.35), mask, q, k, v, scale=0.35)


def _params(model, *args):
    return unbox(jax.jit(model.init)(jax.random.key(0), *args)["params"])


@pytest.mark.parametrize("name", ["llama-tiny", "t5-tiny"])
def test_models_give_the_same_logits_and_gradients_with_each_kernel(name):
    """GQA + RoPE (LLaMA) and relative bias + cross-attention (T5) through whole models."""
    segments = jnp.asarray([[1] * 6 + [2] * 8 + [0] * 2, [1] * 16], jnp.int32)
    tokens = jnp.arange(32, dtype=jnp.int32).reshape(2, 16) % 50 + 3
    outputs, params = {}, None
    for kernel in ("xla", "dot_product_attention"):
        config = get_config(name, num_layers=1, attention_kernel=kernel)
        model = build_model(config)
        if config.family == "encoder_decoder":
            args, kwargs = (tokens, tokens), dict(encoder_segment_ids_BS=segments, decoder_segment_ids_BT=segments)
        else:
            args, kwargs = (tokens,), dict(segment_ids_BT=segments)
        params = params or _params(model, *args)  # the kernel changes no parameter
        loss = lambda p: jnp.sum(jnp.where(segments[..., None] > 0, model.apply({"params": p}, *args, **kwargs), 0)
                                 ** 2)
        outputs[kernel] = jax.jit(jax.value_and_grad(loss))(params)
    (loss_ref, grads_ref), (loss_dpa, grads_dpa) = outputs["xla"], outputs["dot_product_attention"]
    np.testing.assert_allclose(loss_dpa, loss_ref, rtol=1e-5)
    # Float reassociation only: relative to each gradient's scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max())),
                 grads_dpa, grads_ref)


def test_auto_picks_per_platform_and_explicit_choices_fail_clearly():
    pick = lambda config, platform, **kw: resolve_kernel(
        config, platform=platform, **{**dict(has_bias=False, has_segments=True, dropout=False, q_len=2048,
                                              kv_len=2048), **kw})
    bf16 = get_config("llama-tiny", dtype="bfloat16")
    assert pick(bf16, "gpu") == "dot_product_attention"
    assert pick(bf16, "tpu") == "splash"
    assert pick(bf16, "cpu") == "xla"
    assert pick(bf16.replace(dtype="float32"), "gpu") == "xla"  # cuDNN flash needs half precision
    assert pick(bf16, "tpu", has_bias=True) == "xla"  # T5's bias: splash takes none
    assert pick(bf16, "tpu", q_len=100, kv_len=100) == "xla"
    assert pick(bf16, "gpu", dropout=True) == "xla"
    splash = bf16.replace(attention_kernel="splash")
    with pytest.raises(ConfigError, match="no additive bias"):
        pick(splash, "tpu", has_bias=True)
    with pytest.raises(ConfigError, match="divisible by 128"):
        pick(splash, "tpu", q_len=100, kv_len=100)
    assert pick(splash, "tpu", has_segments=False) == "xla"  # prefix LM / cached decoding
    with pytest.raises(ConfigError, match="dropout"):
        pick(bf16.replace(attention_kernel="dot_product_attention", dropout_rate=0.1), "gpu", dropout=True)
    with pytest.raises(ConfigError, match="attention_kernel='flash'"):
        bf16.replace(attention_kernel="flash")


def test_float16_dot_product_attention_on_cpu_is_refused_and_auto_runs_under_jit():
    """jax's XLA path failed to compile under jit on CPU ("precision 'F16_F16_F32' is not
    supported by dot_general"); only eager calls worked."""
    tokens = jnp.ones((1, 8), jnp.int32)
    explicit = get_config("llama-tiny", num_layers=1, dtype="float16", attention_kernel="dot_product_attention")
    with pytest.raises(ConfigError, match=r"cannot run dtype='float16' under jit on CPU; use attention_kernel='xla' "
                                          r"or 'auto', or dtype='bfloat16'\."):
        jax.jit(build_model(explicit).init)(jax.random.key(0), tokens)
    auto = explicit.replace(attention_kernel="auto")
    assert resolve_kernel(auto, has_bias=False, has_segments=True, dropout=False, q_len=8, kv_len=8,
                          platform="cpu") == "xla"
    model = build_model(auto)
    params = jax.jit(model.init)(jax.random.key(0), tokens)
    logits = jax.jit(model.apply)(params, tokens)
    assert np.isfinite(np.asarray(logits, np.float32)).all()


class _FakeGpu:
    def __init__(self, capability):
        self.compute_capability = capability


@pytest.mark.parametrize("capability, largest", [("8.0", 128), ("9.0", 256)])
def test_cudnn_head_dims_jax_refuses_fall_back_or_fail_clearly(monkeypatch, capability, largest):
    """jax's check_is_flash_attention wants head_dim % 8 == 0 and <= 128 (256 from Hopper), and even
    T and S when training with a bias (the mask is one): `auto` picked cuDNN for scale-1e4 (head_dim 4)
    on GPU, which failed to compile instead of falling back."""
    monkeypatch.setattr(jax, "devices", lambda *a: [_FakeGpu(capability)])
    pick = lambda config, q_len=1024, kv_len=1024: resolve_kernel(
        config, has_bias=False, has_segments=True, dropout=False, q_len=q_len, kv_len=kv_len, platform="gpu")
    tiny = get_config("scale-1e4", dtype="bfloat16")
    assert tiny.dim_per_head == 4 and pick(tiny) == "xla"
    for head_dim, ok in ((largest, True), (largest + 8, False), (12, False), (8, True)):
        config = get_config("llama-tiny", dtype="float16", head_dim=head_dim)
        assert pick(config) == ("dot_product_attention" if ok else "xla"), head_dim
        explicit = config.replace(attention_kernel="dot_product_attention")
        if ok:
            assert pick(explicit) == "dot_product_attention"
        else:
            with pytest.raises(ConfigError, match=rf"needs head_dim a multiple of 8 and at most {largest}, got "
                                                  rf"head_dim={head_dim}; use attention_kernel='auto'") as error:
                pick(explicit)
            assert "\n" not in str(error.value)
    bf16 = get_config("llama-tiny", dtype="bfloat16")
    assert pick(bf16, q_len=7, kv_len=7) == "xla" and pick(bf16, q_len=1, kv_len=64) == "xla"
    # Inference with odd lengths runs on cuDNN: an explicit choice keeps it.
    assert pick(bf16.replace(attention_kernel="dot_product_attention"), q_len=1, kv_len=64) == "dot_product_attention"
    assert pick(bf16.replace(dtype="float32", head_dim=4), q_len=7) == "xla"  # float32: no cuDNN path at all


def test_the_attention_softmax_is_jaxs_forward_with_the_compact_derivative():
    """softmax_last_axis: jax.nn.softmax's values bit for bit (masked rows, a fully masked row and
    large logits included), and the derivative y * (dx - sum(y * dx)) computed from the outputs
    alone (no division in the backward): its tangent is that formula exactly, and its gradient
    agrees with autodiff of jax.nn.softmax to float32 rounding."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 4, 9)) * 30, jnp.float32)
    logits = logits.at[0, 1].set(NEG_INF).at[1, 2, :5].set(NEG_INF)
    for fn in (softmax_last_axis, jax.jit(softmax_last_axis)):
        np.testing.assert_array_equal(fn(logits), jax.nn.softmax(logits, axis=-1))
    tangent = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
    probs, probs_dot = jax.jvp(softmax_last_axis, (logits,), (tangent,))
    np.testing.assert_array_equal(probs_dot, probs * (tangent - jnp.sum(probs * tangent, axis=-1, keepdims=True)))
    weights = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
    ours = jax.grad(lambda x: jnp.sum(softmax_last_axis(x) * weights))(logits)
    autodiff = jax.grad(lambda x: jnp.sum(jax.nn.softmax(x, axis=-1) * weights))(logits)
    np.testing.assert_allclose(ours, autodiff, rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(ours)))
    # ... and the reference kernel (every CPU model's attention) differentiates through it.
    q = jnp.asarray(rng.normal(size=(1, 4, 2, 8)), jnp.float32)
    mask = segment_attention_mask(jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32), True)
    attention = lambda q: reference_attention(q, q, q, mask.dense_BTS, scale=1.0)
    assert "custom_jvp_call" in str(jax.make_jaxpr(attention)(q))


def test_the_dot_product_attention_kernel_differentiates_its_softmax_compactly():
    """jax.nn.dot_product_attention's xla implementation (attention_kernel='dot_product_attention'
    off cuDNN) runs its softmax under jax_softmax_custom_jvp: the same outputs bit for bit as with
    the flag off, gradients within float32 rounding of them, the compact rule in the gradient's
    program, and the flag left as it was outside the call."""
    q, k, v = _qkv(2, 12, 12, 4, 2, 8, seed=3)
    mask = segment_attention_mask(_packed_segments(12), _packed_segments(12), True)
    kernel = lambda q, k, v: jax_dot_product_attention(q, k, v, mask, scale=0.35, platform="cpu")
    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask.dense_BTS[:, None], scale=0.35,
                                                         implementation="xla")
    np.testing.assert_array_equal(jax.jit(kernel)(q, k, v), jax.jit(plain)(q, k, v))
    weights = jnp.cos(q)
    loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * weights)
    for got, want in zip(jax.grad(loss(kernel), (0, 1, 2))(q, k, v), jax.grad(loss(plain), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "custom_jvp_call" in str(jax.make_jaxpr(jax.grad(loss(kernel)))(q, k, v))
    assert "custom_jvp_call" not in str(jax.make_jaxpr(jax.grad(loss(plain)))(q, k, v))
    assert not jax.config.jax_softmax_custom_jvp
