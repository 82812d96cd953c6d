"""Behavioural tests of research/models/decoder.py on the gpt2-tiny and llama-tiny presets:
KV-cache decoding, causality, packing, scan/remat equivalence, sharding, config errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import sharding
from research.models import ConfigError, build_model, get_config, layout
from research.models.decoder import init_decoder_cache

PRESETS = ("gpt2-tiny", "llama-tiny")
ATOL = 1e-5


@pytest.fixture(scope="module", params=PRESETS)
def tiny(request):
    """(config, model, unrolled params without boxes) of one tiny preset."""
    config = get_config(request.param)
    model = build_model(config)
    return config, model, _random_params(model)


def _random_params(model, seed=0):
    """Random params in the shapes model.init gives. Cheaper than init, whose threefry
    RNG takes seconds to compile on CPU, and norm scales and biases are not trivial."""
    abstract = layout.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    rng = np.random.RandomState(seed)
    def draw(path, leaf):
        noise = rng.normal(0.0, 0.05, leaf.shape).astype(np.float32)
        return jnp.asarray(1.0 + noise if jax.tree_util.keystr(path).endswith("['scale']") else noise)
    return jax.tree_util.tree_map_with_path(draw, abstract)


# Every forward below has batch B and length T (or the prefill / step lengths of a cached
# run), with explicit segments and positions, so one jitted apply per model compiles
# three times in all: compilation, not compute, is what these tests spend time on.
B, T, PREFILL = 3, 9, 6
_APPLY: dict = {}


def _tokens(shape, seed=0, vocab=512):
    return np.random.RandomState(seed).randint(1, vocab, shape).astype(np.int32)


def _forward(model, params, tokens, segments=None, positions=None, cache=None):
    if model not in _APPLY:
        _APPLY[model] = jax.jit(model.apply)
    b, t = tokens.shape
    segments = np.ones((b, t), np.int32) if segments is None else segments
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)) if positions is None else positions
    return _APPLY[model]({"params": params}, jnp.asarray(tokens), segment_ids_BT=jnp.asarray(segments, jnp.int32),
                         positions_BT=jnp.asarray(positions, jnp.int32), cache=cache)


def test_incremental_decoding_matches_full_forward(tiny):
    config, model, params = tiny
    tokens = _tokens((B, T))
    full = _forward(model, params, tokens)
    cache = init_decoder_cache(config, batch=B, max_len=T)
    logits, cache = _forward(model, params, tokens[:, :PREFILL], cache=cache)
    steps = [logits]
    for t in range(PREFILL, T):
        logits, cache = _forward(model, params, tokens[:, t:t + 1], positions=np.full((B, 1), t), cache=cache)
        steps.append(logits)
    assert int(cache.index) == T
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=ATOL, rtol=0)


def test_left_padded_prompts_decode_like_each_prompt_alone(tiny):
    config, model, params = tiny
    lengths, new = (3, 6, 4), T - PREFILL
    rows = [_tokens((n + new,), seed=i + 1) for i, n in enumerate(lengths)]
    prompts, segments, positions = (np.zeros((B, PREFILL), np.int32) for _ in range(3))
    for i, n in enumerate(lengths):
        prompts[i, PREFILL - n:] = rows[i][:n]
        segments[i, PREFILL - n:] = 1
        positions[i, PREFILL - n:] = np.arange(n)  # count from each prompt's first real token

    cache = init_decoder_cache(config, batch=B, max_len=T)
    prefill, cache = _forward(model, params, prompts, segments, positions, cache=cache)
    decoded = []
    for step in range(new):
        next_tokens = np.array([[rows[i][n + step]] for i, n in enumerate(lengths)], np.int32)
        logits, cache = _forward(model, params, next_tokens, positions=np.array([[n + step] for n in lengths]),
                                 cache=cache)
        decoded.append(logits)
    decoded = jnp.concatenate(decoded, axis=1)

    # Each prompt + continuation from position 0 with nothing before it; rows never
    # interact, so one right-padded batch holds all three.
    alone_tokens = np.zeros((B, T), np.int32)
    for i, n in enumerate(lengths):
        alone_tokens[i, :n + new] = rows[i]
    alone = _forward(model, params, alone_tokens, segments=(alone_tokens != 0).astype(np.int32))
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(prefill[i, PREFILL - n:], alone[i, :n], atol=ATOL, rtol=0)
        np.testing.assert_allclose(decoded[i], alone[i, n:n + new], atol=ATOL, rtol=0)


def _logits_with_embedding_perturbation(model, params, tokens, delta_BTD):
    """Logits when `delta_BTD` is added to the token embeddings (an input we can differentiate)."""
    def add_delta(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "token_embed" and context.method_name == "__call__":
            out = out + delta_BTD
        return out

    with nn.intercept_methods(add_delta):
        return model.apply({"params": params}, tokens)


def test_causality_later_inputs_have_exactly_zero_gradient(tiny):
    config, model, params = tiny
    t = 6
    tokens = _tokens((1, t))
    readout_V = jax.random.normal(jax.random.key(1), (config.vocab_size,))

    def scores_T(delta_TD):  # one scalar per position: logits projected on a random direction
        return _logits_with_embedding_perturbation(model, params, tokens, delta_TD[None])[0] @ readout_V

    jac_TTD = jax.jit(jax.jacrev(scores_T))(jnp.zeros((t, config.d_model)))
    influence_TT = np.abs(np.asarray(jac_TTD)).sum(-1)  # [output position, input position]
    future = np.triu(np.ones((t, t), bool), k=1)
    assert np.all(influence_TT[future] == 0.0)
    assert np.all(influence_TT[~future] > 0.0)  # and the past does matter


def test_packed_segments_do_not_interact(tiny):
    config, model, params = tiny
    first, second = _tokens((5,), seed=3), _tokens((T - 5,), seed=4)
    tokens, segments, positions = (np.zeros((B, T), np.int32) for _ in range(3))
    # Row 0 packs both documents; rows 1 and 2 hold each alone (right-padded).
    tokens[0], segments[0] = np.concatenate([first, second]), [1] * 5 + [2] * (T - 5)
    positions[0] = np.concatenate([np.arange(5), np.arange(T - 5)])
    tokens[1, :5], segments[1, :5], positions[1, :5] = first, 1, np.arange(5)
    tokens[2, :T - 5], segments[2, :T - 5], positions[2, :T - 5] = second, 1, np.arange(T - 5)
    logits = _forward(model, params, tokens, segments, positions)
    np.testing.assert_allclose(logits[0, :5], logits[1, :5], atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits[0, 5:], logits[2, :T - 5], atol=ATOL, rtol=0)


def _loss_and_logits(model, params, tokens):
    logits = model.apply({"params": params}, tokens)
    targets = jnp.roll(tokens, -1, axis=1)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)), logits


_REFERENCE_GRADS: dict = {}

# (scan_layers, remat) per preset: each layout and each policy appears, without
# compiling every combination's gradient.
VARIANTS = {"gpt2-tiny": [(False, "save_dots"), (True, "none")], "llama-tiny": [(False, "full"), (True, "minimal")]}


@pytest.mark.parametrize("variant_index", range(2))
def test_scan_and_remat_match_unrolled_logits_and_gradients(tiny, variant_index):
    config, model, params = tiny
    scan_layers, remat = VARIANTS[config.name][variant_index]
    variant = build_model(config.replace(scan_layers=scan_layers, remat=remat))
    variant_params = layout.stack_layers(params, "layers") if scan_layers else params
    # The variant's own init has exactly the layout we convert to.
    init_shapes = jax.eval_shape(variant.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    assert jax.tree.map(jnp.shape, layout.unbox(init_shapes)) == jax.tree.map(jnp.shape, variant_params)

    tokens = _tokens((2, 8), seed=5)
    value_and_grad = lambda m: jax.jit(jax.value_and_grad(lambda p: _loss_and_logits(m, p, tokens), has_aux=True))
    if config.name not in _REFERENCE_GRADS:
        _REFERENCE_GRADS[config.name] = value_and_grad(model)(params)
    (ref_loss, ref_logits), ref_grads = _REFERENCE_GRADS[config.name]
    (loss, logits), grads = value_and_grad(variant)(variant_params)
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(loss, ref_loss, atol=ATOL, rtol=0)
    if scan_layers:
        grads = layout.unstack_layers(grads, "layers")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL, rtol=1e-4), grads, ref_grads)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_param_has_logical_axes_with_rules(tiny, scan_layers):
    config, _, _ = tiny
    model = build_model(config.replace(scan_layers=scan_layers))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
    assert sharding.unmapped_logical_axes(nn.get_partition_spec(boxed)) == set()
    if scan_layers:
        assert all(leaf.names[0] == "layers" for leaf in leaves if leaf.value.ndim and "layers" in leaf.names)


def test_sharded_forward_on_2x2x2_mesh_matches_single_device(tiny):
    config, model, _ = tiny
    mesh = sharding.make_mesh((2, 2, 2))
    tokens = _tokens((4, 8), seed=6)
    # An rbg key: threefry's random bits take several seconds longer to compile on CPU.
    init = lambda: model.init(jax.random.key(0, impl="rbg"), tokens)
    specs = nn.get_partition_spec(jax.eval_shape(init))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        variables = jax.jit(init, out_shardings=sharding.logical_to_sharding(specs, mesh))()
        sharded = jax.jit(model.apply)(variables, tokens)
    embedding = variables["params"]["token_embed"]["embedding"].value
    assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert len(embedding.addressable_shards) == 8 and embedding.addressable_shards[0].data.shape == (256, 32)
    single = _forward(model, jax.device_get(layout.unbox(variables["params"])), tokens)
    np.testing.assert_allclose(sharded, single, atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset,overrides,expected", [
    ("gpt2-tiny", dict(num_heads=5), "num_heads=5 does not divide d_model=64"),
    ("llama-tiny", dict(num_kv_heads=3), "num_kv_heads=3 does not divide num_heads=4"),
    ("llama-tiny", dict(activation="swish"), "activation='swish' is not one of"),
    ("gpt2-tiny", dict(n_layers=3), "unknown config field(s) ['n_layers']"),
    # Accepted before, and built without any positional information:
    ("gpt2-tiny", dict(position="relative"), "position='relative' (T5's bucketed bias) is built by encoder_decoder"),
    # Accepted, and ignored (T5) or built without a final norm (BERT):
    ("t5-tiny", dict(norm_placement="post"), "norm_placement='post' is not built for encoder_decoder models"),
    ("bert-test", dict(norm_placement="pre"), "norm_placement='pre' is not built for encoder models"),
    # Only T5's head scales its logits: a decoder's or encoder's flag changed nothing (logits equal).
    ("gpt2-tiny", dict(scale_tied_logits=True), "scale_tied_logits belongs to encoder_decoder (T5 v1.0) models"),
    ("bert-test", dict(scale_tied_logits=True), "scale_tied_logits belongs to encoder_decoder (T5 v1.0) models"),
    # A ZeroDivisionError or an MLIRError later, or a T5 without encoder layers:
    ("gpt2-tiny", dict(head_dim=0), "head_dim=0 must be positive"),
    ("t5-tiny", dict(relative_buckets=0), "relative_buckets=0 must be positive"),
    ("t5-tiny", dict(num_encoder_layers=-1), "num_encoder_layers=-1 must be positive"),
    ("bert-test", dict(num_labels=-1), "num_labels=-1 must be >= 0"),
])
def test_bad_config_raises_one_line_config_error(preset, overrides, expected):
    with pytest.raises(ConfigError) as error:
        get_config(preset, **overrides)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_unknown_preset_suggests_nearest_names():
    with pytest.raises(ConfigError, match=r"unknown model preset 'gpt2-tinny'\. Did you mean gpt2-tiny"):
        get_config("gpt2-tinny")


def test_learned_positions_refuse_inputs_past_max_len():
    # Rows past the learned position table read as NaN (jnp.take's fill): every logit was NaN.
    config = get_config("gpt2-tiny", max_len=8, num_layers=1)
    model = build_model(config)
    params = _random_params(model)
    apply = jax.jit(model.apply)
    assert np.isfinite(apply({"params": params}, jnp.asarray(_tokens((1, 8))))).all()
    with pytest.raises(ValueError, match=r"positions up to 8 exceed .*max_len=8.*truncate the input to 8 tokens"):
        apply({"params": params}, jnp.asarray(_tokens((1, 9))))

    # Cached decoding with default positions: the step at position max_len - 1 runs, the next refuses.
    cache = init_decoder_cache(config, batch=1, max_len=9)
    _, cache = model.apply({"params": params}, jnp.asarray(_tokens((1, 7))), cache=cache)
    logits, cache = model.apply({"params": params}, jnp.asarray(_tokens((1, 1))), cache=cache)
    assert int(cache.index) == 8 and np.isfinite(logits).all()
    with pytest.raises(ValueError, match="positions up to 8 exceed"):
        model.apply({"params": params}, jnp.asarray(_tokens((1, 1))), cache=cache)
