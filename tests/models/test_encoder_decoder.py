"""Behaviour of the T5 encoder-decoder: cache, causality, padding, packing, layouts, sizes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import build_model, get_config, layout
from research.models.config import ConfigError
from research.models.encoder_decoder import EncoderDecoder, init_encoder_decoder_cache
from research.sharding import unmapped_logical_axes

B, S, T = 2, 8, 6
CONFIG = get_config("t5-v1_1-tiny", vocab_size=64)  # gated-GELU, untied head
LAYER_NAMES = ("encoder_layers", "decoder_layers")


def _init_shapes(config):
    model = EncoderDecoder(config)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32))


def _random_params(config, seed=0):
    """Random params without compiling an init: shapes from eval_shape, values from numpy."""
    rng = np.random.default_rng(seed)
    shapes = layout.unbox(_init_shapes(config)["params"])
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)


def _tokens(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).integers(1, CONFIG.vocab_size, shape), jnp.int32)


def _forward_fn(config):
    model = EncoderDecoder(config)
    return jax.jit(lambda params, e, d, es, ds, ep, dp: model.apply(
        {"params": params}, e, d, encoder_segment_ids_BS=es, decoder_segment_ids_BT=ds, encoder_positions_BS=ep,
        decoder_positions_BT=dp))


PARAMS = _random_params(CONFIG)
FORWARD = _forward_fn(CONFIG)
ONES_BS, ONES_BT = jnp.ones((B, S), jnp.int32), jnp.ones((B, T), jnp.int32)
POS_BS, POS_BT = jnp.broadcast_to(jnp.arange(S), (B, S)), jnp.broadcast_to(jnp.arange(T), (B, T))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_incremental_decode_matches_full_forward(scan_layers):
    config = CONFIG.replace(scan_layers=scan_layers)
    params = PARAMS
    if scan_layers:
        for name in LAYER_NAMES:
            params = layout.stack_layers(params, name)
    model = EncoderDecoder(config)
    encoder_tokens, decoder_tokens = _tokens(1, (B, S)), _tokens(2, (B, T))
    # Row 1's source is right-padded: the cross-attention mask must follow it step by step.
    encoder_segments = ONES_BS.at[1, 5:].set(0)
    want = FORWARD(PARAMS, encoder_tokens, decoder_tokens, encoder_segments, ONES_BT, POS_BS, POS_BT)

    encoded = jax.jit(lambda p, e, s: model.apply({"params": p}, e, encoder_segment_ids_BS=s, method="encode"))(
        params, encoder_tokens, encoder_segments)
    step = jax.jit(lambda p, d, c: model.apply({"params": p}, encoded, d, encoder_segment_ids_BS=encoder_segments,
                                               cache=c, method="decode"))
    cache = init_encoder_decoder_cache(config, B, T + 2)  # spare slots stay masked
    got = []
    for t in range(T):
        logits, cache = step(params, decoder_tokens[:, t:t + 1], cache)
        got.append(logits)
    assert int(cache.index) == T
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=1e-5, rtol=0)


def test_decoder_is_causal():
    # Add a perturbation to the decoder's token embeddings (length T, the encoder's is S)
    # and differentiate each position's logits with respect to it.
    model = EncoderDecoder(CONFIG)
    encoder_tokens, decoder_tokens = _tokens(3, (B, S)), _tokens(4, (B, T))

    def logits_per_position(delta_BTD):
        def add_delta(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            is_decoder_embedding = (context.module.name == "token_embed" and context.method_name == "__call__"
                                    and out.shape[1] == T)
            return out + delta_BTD if is_decoder_embedding else out

        with nn.intercept_methods(add_delta):
            logits_BTV = model.apply({"params": PARAMS}, encoder_tokens, decoder_tokens)
        return jnp.sum(logits_BTV[0], axis=-1)  # [T]: row 0 only, so rows must not mix either

    jacobian_TBTD = jax.jit(jax.jacrev(logits_per_position))(jnp.zeros((B, T, CONFIG.d_model)))
    influence_TT = np.abs(np.asarray(jacobian_TBTD[:, 0])).sum(-1)  # [output position, input position]
    assert np.all(influence_TT[np.triu_indices(T, k=1)] == 0)
    assert np.all(influence_TT[np.tril_indices(T)] > 0)
    assert np.all(np.asarray(jacobian_TBTD[:, 1]) == 0)


def test_encoder_ignores_padding():
    encoder_tokens, decoder_tokens = _tokens(5, (B, S)), _tokens(6, (B, T))
    segments = ONES_BS.at[0, 3:].set(0).at[1, 6:].set(0)
    want = FORWARD(PARAMS, encoder_tokens, decoder_tokens, segments, ONES_BT, POS_BS, POS_BT)
    repadded = jnp.where(segments == 0, _tokens(7, (B, S)), encoder_tokens)
    got = FORWARD(PARAMS, repadded, decoder_tokens, segments, ONES_BT, POS_BS, POS_BT)
    np.testing.assert_array_equal(got, want)
    # Sanity: the padded-out tokens do matter when they are not padding.
    unpadded = FORWARD(PARAMS, repadded, decoder_tokens, ONES_BS, ONES_BT, POS_BS, POS_BT)
    assert np.abs(np.asarray(unpadded - want)).max() > 1e-3


def test_packed_rows_equal_separate_rows():
    # Row 0 packs document a (source 4, target 3) and document b (source 3, target 3).
    src_a, tgt_a, src_b, tgt_b = _tokens(8, (4,)), _tokens(9, (3,)), _tokens(10, (3,)), _tokens(11, (3,))
    pad = lambda x, n: jnp.pad(x, (0, n - x.shape[0]))
    packed_src, packed_tgt = pad(jnp.concatenate([src_a, src_b]), S), jnp.concatenate([tgt_a, tgt_b])
    packed = FORWARD(
        PARAMS, jnp.stack([packed_src, pad(src_a, S)]), jnp.stack([packed_tgt, pad(tgt_a, T)]),
        jnp.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 0, 0, 0, 0]]),
        jnp.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 0, 0, 0]]),
        jnp.array([[0, 1, 2, 3, 0, 1, 2, 0], list(range(S))]), jnp.array([[0, 1, 2, 0, 1, 2], list(range(T))]))
    alone_b = FORWARD(PARAMS, jnp.stack([pad(src_b, S)] * 2), jnp.stack([pad(tgt_b, T)] * 2),
                      jnp.array([[1, 1, 1, 0, 0, 0, 0, 0]] * 2), jnp.array([[1, 1, 1, 0, 0, 0]] * 2), POS_BS, POS_BT)
    np.testing.assert_allclose(packed[0, :3], packed[1, :3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(packed[0, 3:], alone_b[0, :3], atol=1e-5, rtol=0)


def _loss_and_grad(config, params):
    model = EncoderDecoder(config)
    encoder_tokens, decoder_tokens = _tokens(12, (B, S)), _tokens(13, (B, T))
    loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, encoder_tokens, decoder_tokens))[..., 0])
    return jax.jit(jax.value_and_grad(loss))(params)


@functools.cache
def _unrolled_loss_and_grad():
    return _loss_and_grad(CONFIG, PARAMS)


@pytest.mark.parametrize("overrides", [dict(scan_layers=True), dict(remat="full"),
                                       dict(scan_layers=True, remat="full")])
def test_scan_and_remat_equal_unrolled(overrides):
    config = CONFIG.replace(**overrides)
    params = PARAMS
    if config.scan_layers:
        for name in LAYER_NAMES:
            params = layout.stack_layers(params, name)
        assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, layout.unbox(_init_shapes(config)["params"]))
    want_loss, want_grad = _unrolled_loss_and_grad()
    loss, grad = _loss_and_grad(config, params)
    np.testing.assert_allclose(loss, want_loss, atol=1e-6, rtol=0)
    if config.scan_layers:
        for name in LAYER_NAMES:
            grad = layout.unstack_layers(grad, name)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5), grad, want_grad)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_param_has_ruled_logical_axes(scan_layers):
    config = get_config("t5-tiny", scan_layers=scan_layers)
    shapes = _init_shapes(config)
    specs = nn.get_partition_spec(shapes)["params"]
    flat_shapes = jax.tree_util.tree_leaves_with_path(layout.unbox(shapes)["params"])
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(flat_shapes) == len(flat_specs)
    for (path, shape), spec in zip(flat_shapes, flat_specs):
        assert len(spec) == len(shape.shape) and None not in spec, (jax.tree_util.keystr(path), spec)
    assert unmapped_logical_axes(specs) == set()
    assert {"token_embed", "encoder_relative_bias", "decoder_relative_bias", "encoder_norm",
            "decoder_norm"} <= set(specs)
    assert "lm_head" not in specs  # t5-tiny is v1.0: the head is the (scaled) token embedding


@pytest.mark.parametrize("name,count", [("t5-small", 60_506_624), ("t5-v1_1-small", 76_961_152),
                                        ("t5-base", 222_903_552), ("t5-large", 737_668_096),
                                        ("t5-v1_1-base", 247_577_856)])
def test_published_param_counts(name, count):
    shapes = layout.unbox(_init_shapes(get_config(name, scan_layers=True)))  # scan: trace one block
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count


def test_bad_inputs_fail_with_one_line():
    with pytest.raises(ConfigError, match="family='encoder_decoder'"):
        _init_shapes(get_config("gpt2-tiny"))
    cache = init_encoder_decoder_cache(CONFIG, B, 3)
    model = build_model(CONFIG)
    with pytest.raises(ValueError, match="6 tokens do not fit a KV cache of 3 slots"):
        jax.eval_shape(lambda: model.apply({"params": PARAMS}, jnp.zeros((B, S, CONFIG.d_model)), ONES_BT,
                                           cache=cache, method="decode"))


def test_relative_bucket_settings_are_accepted_exactly_when_both_stacks_bucket_them_in_range():
    """relative_position_bucket divided by zero (relative_buckets < 4) or gave NaN / negative buckets
    (relative_max_distance <= relative_buckets // 2) for configs ModelConfig accepted. Now a config is
    accepted iff the encoder's bidirectional and the decoder's causal buckets all lie in [0, buckets)."""
    from research.models.attention import relative_position_bucket
    offsets = jnp.arange(-600, 601)
    for buckets in range(1, 13):
        for distance in range(1, 10):
            try:
                get_config("t5-tiny", relative_buckets=buckets, relative_max_distance=distance)
                accepted = True
            except ConfigError as error:
                accepted = False
                assert len(str(error).splitlines()) == 1 and (f"relative_buckets={buckets}" in str(error))
            try:
                ids = [np.asarray(relative_position_bucket(offsets, bidirectional, buckets, distance))
                       for bidirectional in (True, False)]
                in_range = all(0 <= i.min() and i.max() < buckets for i in ids)
            except ZeroDivisionError:
                in_range = False
            assert accepted == in_range, (buckets, distance)
    # Shipped presets and transformers' T5 defaults (32 buckets, 128) still pass.
    from research.models.hf.t5 import config_from_hf
    from research.models.presets import preset_names
    assert config_from_hf({}).relative_buckets == 32
    for name in preset_names():
        get_config(name)
    # The smallest accepted settings run end to end.
    config = get_config("t5-tiny", num_layers=1, vocab_size=64, relative_buckets=4, relative_max_distance=3)
    tokens = jnp.ones((1, 24), jnp.int32)
    logits = build_model(config).apply({"params": _random_params(config)}, tokens, tokens)
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("overrides, message", [
    (dict(relative_max_distance=16), r"relative_max_distance=16 must exceed the 16 exact distances of "
                                     r"relative_buckets=32 .*use relative_max_distance >= 17\.$"),
    (dict(relative_max_distance=8), r"relative_max_distance=8 must exceed .* >= 17\.$"),
    (dict(relative_buckets=3), r"relative_buckets=3 is too few.*use relative_buckets >= 4\.$"),
])
def test_t5_bucket_settings_that_gave_nan_logits_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        get_config("t5-tiny", num_layers=1, **overrides)
