"""Encoder (BERT): bidirectional attention, padding and packing, scan/remat layouts,
logical axis names, and published parameter counts."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from research import sharding
from research.models import get_config, layout
from research.models.config import ConfigError
from research.models.encoder import HEAD_PARAMS, Encoder

CONFIG = get_config("bert-test", vocab_size=97, max_len=16, num_labels=3)
B, T = 2, 8


def _tokens(seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, CONFIG.vocab_size, (B, T)), jnp.int32)


@pytest.fixture(scope="module")
def boxed_params():
    return jax.jit(Encoder(CONFIG).init)(jax.random.key(0), _tokens())["params"]


@pytest.fixture(scope="module")
def params(boxed_params):
    return layout.unbox(boxed_params)


@functools.partial(jax.jit, static_argnames=("config", "method", "deterministic"))
def _apply(params, tokens, config=CONFIG, method="__call__", **kwargs):
    # One compile per (config, method, shapes) instead of op-by-op dispatch: far faster on CPU.
    return Encoder(config).apply({"params": params}, tokens, method=method, **kwargs)


def _encode(params, tokens, config=CONFIG, **kwargs):
    return _apply(params, tokens, config, method="encode", **kwargs)


def test_attends_both_ways_and_not_to_padding(params):
    """d hidden[:, 0] / d embedding of the last token: non-zero, and zero once it is padding."""
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6, 7, 90]] * B, jnp.int32)  # id 90 only at the last position
    # A random readout: the plain sum of a LayerNorm output is constant, so its gradient is ~0.
    readout_D = jax.random.normal(jax.random.key(1), (CONFIG.d_model,))

    def grad_wrt_last_token_embedding(segment_ids):
        def first_position_output(table):
            p = {**params, "token_embed": {"embedding": table}}
            return (_encode(p, tokens, segment_ids_BT=segment_ids)[:, 0] @ readout_D).sum()
        return jax.grad(first_position_output)(params["token_embed"]["embedding"])[90]

    assert float(jnp.abs(grad_wrt_last_token_embedding(jnp.ones((B, T), jnp.int32))).max()) > 1e-6
    padded = jnp.ones((B, T), jnp.int32).at[:, -1].set(0)
    assert float(jnp.abs(grad_wrt_last_token_embedding(padded)).max()) == 0.0


def test_padding_tokens_do_not_change_real_positions(params):
    segment_ids = jnp.asarray([[1] * 5 + [0] * 3, [1] * T], jnp.int32)
    tokens = _tokens(0)
    other = tokens.at[0, 5:].set(jnp.asarray([11, 12, 13]))
    for method in ("encode", "classify"):
        a = _apply(params, tokens, method=method, segment_ids_BT=segment_ids)
        b = _apply(params, other, method=method, segment_ids_BT=segment_ids)
        if method == "classify":
            np.testing.assert_allclose(a, b, atol=1e-6)
        else:
            np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
            np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_packed_segments_do_not_interact(params):
    """A row packing two documents (positions restarting at 0) equals each document alone."""
    doc_a, doc_b = [5, 6, 7], [8, 9, 10, 11]
    tokens = jnp.asarray([doc_a + doc_b + [0]], jnp.int32)
    types = jnp.asarray([[0, 1, 1, 0, 0, 1, 1, 0]], jnp.int32)
    packed = _encode(params, tokens, token_type_ids_BT=types,
                     positions_BT=jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0]], jnp.int32),
                     segment_ids_BT=jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]], jnp.int32))
    alone_a = _encode(params, jnp.asarray([doc_a], jnp.int32), token_type_ids_BT=types[:, :3])
    alone_b = _encode(params, jnp.asarray([doc_b], jnp.int32), token_type_ids_BT=types[:, 3:7])
    np.testing.assert_allclose(packed[0, :3], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:7], alone_b[0], atol=1e-5)


def test_scan_and_remat_match_unrolled(params):
    scanned_config = CONFIG.replace(scan_layers=True, remat="full")
    stacked = layout.stack_layers(params, "layers")
    init_shapes = jax.eval_shape(lambda: Encoder(scanned_config).init(jax.random.key(0), _tokens())["params"])
    assert jax.tree.map(jnp.shape, layout.unbox(init_shapes)) == jax.tree.map(jnp.shape, stacked)
    tokens, segment_ids = _tokens(1), jnp.asarray([[1] * 6 + [0] * 2, [1] * 4 + [2] * 4], jnp.int32)
    unrolled_out = _apply(params, tokens, method="classify", segment_ids_BT=segment_ids)
    scanned_out = _apply(stacked, tokens, scanned_config, method="classify", segment_ids_BT=segment_ids)
    np.testing.assert_allclose(scanned_out, unrolled_out, atol=1e-5)
    # Gradients flow through the rematerialised scan and agree with the unrolled ones.
    loss = jax.jit(lambda p, config: _apply(p, tokens, config, method="classify").sum(), static_argnums=1)
    grads_unrolled = layout.stack_layers(jax.grad(loss)(params, CONFIG), "layers")
    grads_scanned = jax.grad(loss)(stacked, scanned_config)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), grads_scanned, grads_unrolled)


def test_dropout_is_active_only_when_not_deterministic(params):
    config = CONFIG.replace(dropout_rate=0.3)
    tokens = _tokens(2)
    train = lambda seed: _apply(params, tokens, config, deterministic=False, rngs={"dropout": jax.random.key(seed)})
    eval_out = _apply(params, tokens, config)
    np.testing.assert_array_equal(train(0), train(0))
    assert not np.allclose(train(0), eval_out, atol=1e-3)
    assert not np.allclose(train(0), train(1), atol=1e-3)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_param_has_ruled_logical_axes(scan_layers):
    config = CONFIG.replace(scan_layers=scan_layers)
    boxed = jax.eval_shape(lambda: Encoder(config).init(jax.random.key(0), _tokens())["params"])
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, meta.Partitioned))
    unboxed = [jax.tree.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, meta.Partitioned)) if not isinstance(leaf, nn.LogicallyPartitioned)]
    assert not unboxed, f"params without logical axis names: {unboxed}"
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
    specs = nn.get_partition_spec(boxed)
    assert sharding.unmapped_logical_axes(specs) == set()
    # Every spec maps onto a mesh (no logical name twice in one array, which flax rejects).
    mesh = sharding.make_mesh((2, 2, 2))
    sharding.logical_to_sharding(specs, mesh)
    if scan_layers:
        assert boxed["layers"]["attention"]["query"]["kernel"].names == ("layers", "embed", "heads", "kv")


@pytest.mark.parametrize("preset,bert_model_params", [
    ("bert-tiny", 4_385_920), ("bert-base", 109_482_240), ("bert-large", 335_141_888)])
def test_published_parameter_counts(preset, bert_model_params):
    """BertModel (embeddings + encoder + pooler) sizes; the MLM head adds D^2 + 3D + V."""
    config = get_config(preset)
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    tokens = jnp.ones((1, 4), jnp.int32)
    pooled = jax.eval_shape(lambda: Encoder(config).init(jax.random.key(0), tokens, method="pool"))["params"]
    assert count(pooled) == bert_model_params
    full = jax.eval_shape(lambda: Encoder(config).init(jax.random.key(0), tokens))["params"]
    assert set(full) - set(pooled) == {"mlm_head"} and set(HEAD_PARAMS) >= {"mlm_head"}
    d = config.d_model
    assert count(full) - bert_model_params == d * d + 3 * d + config.vocab_size


def test_init_creates_every_declared_head(boxed_params):
    assert {"pooler", "mlm_head", "classifier"} <= set(boxed_params)
    assert boxed_params["classifier"]["kernel"].value.shape == (CONFIG.d_model, 3)
    assert "decoder" not in boxed_params["mlm_head"]  # tied to token_embed
    untied = jax.eval_shape(lambda: Encoder(CONFIG.replace(tie_embeddings=False, pooler=False, num_labels=0)).init(
        jax.random.key(0), _tokens())["params"])
    assert untied["mlm_head"]["decoder"]["kernel"].value.shape == (CONFIG.d_model, CONFIG.vocab_size)
    assert not {"pooler", "classifier"} & set(untied)


def test_bad_inputs_fail_with_one_line_errors(params):
    model = Encoder(CONFIG)
    too_long = jnp.ones((1, CONFIG.max_len + 1), jnp.int32)
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        model.apply({"params": params}, too_long)
    no_types = CONFIG.replace(type_vocab_size=0, num_labels=0)
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        Encoder(no_types).init(jax.random.key(0), _tokens(), token_type_ids_BT=jnp.zeros((B, T), jnp.int32))
    with pytest.raises(ConfigError, match="num_labels > 0"):
        Encoder(CONFIG.replace(num_labels=0)).apply({"params": params}, _tokens(), method="classify")
    with pytest.raises(ConfigError, match="pooler=False"):
        Encoder(CONFIG.replace(pooler=False)).apply({"params": params}, _tokens(), method="pool")
    with pytest.raises(ConfigError, match="family='encoder'"):
        Encoder(get_config("gpt2-tiny")).init(jax.random.key(0), _tokens())
