"""LoRA: zero-initialised B is the base model, merged = unmerged forward, peft parity,
only adapters train and are held by the optimizer, targets that match nothing fail."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from research.finetune.lora import (BASE, LORA, LoraConfig, adapter_optimizer, attach_adapters, init_lora, lora_delta,
                                    lora_loss_fn, merge_lora, target_paths, with_adapter_path)
from research.models import build_model, get_config
from research.models.config import ConfigError
from research.models.layers import Dense
from research.training import losses
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import TrainState
from research.training.train_step import make_train_step

FAMILIES = {"gpt2-tiny": dict(scan_layers=True), "llama-tiny": {}, "bert-test": {}, "t5-tiny": {}}


def init_model(preset, **overrides):
    model = build_model(get_config(preset, num_layers=1, vocab_size=128, d_model=32, d_ff=64, **overrides))
    tokens = jnp.arange(1, 9, dtype=jnp.int32)[None]
    args = (tokens, tokens) if model.config.family == "encoder_decoder" else (tokens,)
    boxed = jax.jit(model.init)(jax.random.key(0), *args)["params"]
    return model, boxed, args


@pytest.mark.parametrize("preset", sorted(FAMILIES))
def test_adapters_on_attention_and_mlp_of_every_family_start_as_the_base(preset):
    model, boxed, args = init_model(preset, **FAMILIES[preset])
    config = LoraConfig(rank=4)
    paths = target_paths(boxed, config)
    assert any("attention/query/kernel" in p for p in paths) and any("mlp/wo/kernel" in p for p in paths)
    if preset == "t5-tiny":
        assert any("cross_attention/out/kernel" in p for p in paths)
    base = meta.unbox(boxed)
    adapters = meta.unbox(init_lora(boxed, config, jax.random.key(1)))
    merge = jax.jit(lambda base, adapters: merge_lora(base, adapters, config))
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply({"params": merge(base, adapters)}, *args), apply({"params": base}, *args))
    # Nonzero B changes exactly the targeted kernels.
    adapters = jax.tree.map(lambda x: x + 0.1, adapters)
    # The unmerged forward (train steps under lora.dropout; no rng here, so no dropout) reaches
    # every target's Dense layer: it equals the merged weights' forward.
    with with_adapter_path(LoraConfig(rank=4, dropout=0.5)):
        unmerged = apply({"params": attach_adapters(base, adapters)}, *args)
    np.testing.assert_allclose(unmerged, apply({"params": merge(base, adapters)}, *args), rtol=1e-4, atol=1e-5)
    changed = jax.tree_util.tree_map_with_path(lambda p, a, b: bool(jnp.any(a != b)), base, merge(base, adapters))
    flat = {"/".join(k.key for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(changed)[0]}
    assert sorted(p for p, v in flat.items() if v) == paths


@pytest.mark.parametrize("kernel_shape,n_in,name", [((16, 4, 8), 1, "query"), ((4, 8, 16), 2, "out"),
                                                     ((3, 16, 24), 1, "wi")])
def test_merged_kernel_equals_the_unmerged_forward(kernel_shape, n_in, name):
    """x W' == x W + (alpha / r) (x A) B for q/k/v, out and a scanned (stacked) MLP kernel."""
    rng = np.random.default_rng(0)
    stacked = len(kernel_shape) - n_in - (2 if name == "query" else 1)
    lead, in_shape, out_shape = kernel_shape[:stacked], kernel_shape[stacked:stacked + n_in], kernel_shape[stacked + n_in:]
    w = rng.normal(size=kernel_shape).astype(np.float32)
    a = rng.normal(size=(*lead, *in_shape, 3)).astype(np.float32)
    b = rng.normal(size=(*lead, 3, *out_shape)).astype(np.float32)
    x = rng.normal(size=(*lead, 5, *in_shape)).astype(np.float32)
    path = f"layers/x/{name}/kernel"
    merged = w + lora_delta(jnp.asarray(a), jnp.asarray(b), kernel_shape, path, 2.0)
    in_axes = "ij"[:n_in]
    out_axes = "uv"[:len(out_shape)]
    ld = "l" if lead else ""
    merged_out = jnp.einsum(f"{ld}t{in_axes},{ld}{in_axes}{out_axes}->{ld}t{out_axes}", x, merged)
    unmerged = (jnp.einsum(f"{ld}t{in_axes},{ld}{in_axes}{out_axes}->{ld}t{out_axes}", x, w)
                + 2.0 * jnp.einsum(f"{ld}tr,{ld}r{out_axes}->{ld}t{out_axes}",
                                   jnp.einsum(f"{ld}t{in_axes},{ld}{in_axes}r->{ld}tr", x, a), b))
    np.testing.assert_allclose(merged_out, unmerged, rtol=1e-4, atol=1e-4)


def test_a_lora_layer_matches_peft():
    import torch
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    d_in, d_out, rank, alpha = 12, 10, 4, 8.0
    torch.manual_seed(0)
    linear = torch.nn.Sequential()
    linear.add_module("proj", torch.nn.Linear(d_in, d_out))
    peft_model = get_peft_model(linear, PeftLoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"]))
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # peft starts B at zero too; make the adapter matter
    x = torch.randn(3, d_in)
    expected = peft_model(x).detach().numpy()

    config = get_config("gpt2-tiny")
    dense = Dense((d_out,), ("embed",), ("mlp",), config, use_bias=True)
    params = {"proj": {"kernel": layer.base_layer.weight.detach().numpy().T,
                       "bias": layer.base_layer.bias.detach().numpy()}}
    adapters = {"proj": {"lora_a": layer.lora_A["default"].weight.detach().numpy().T,
                         "lora_b": layer.lora_B["default"].weight.detach().numpy().T}}
    merged = merge_lora(params, adapters, LoraConfig(rank=rank, alpha=alpha, targets=("proj/kernel",)))
    ours = dense.apply({"params": merged["proj"]}, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_only_adapters_train_and_only_adapters_have_optimizer_state():
    model, boxed, _ = init_model("llama-tiny", scan_layers=True, num_kv_heads=2)
    config = LoraConfig(rank=2)
    params = {BASE: meta.unbox(boxed), LORA: meta.unbox(init_lora(boxed, config, jax.random.key(1)))}
    optimizer, schedule = make_optimizer(OptimizerConfig(total_steps=10, learning_rate=1e-2))
    optimizer = adapter_optimizer(optimizer)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    held = [x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim]
    adapter_shapes = [x.shape for x in jax.tree.leaves(params[LORA])]
    assert sorted(held) == sorted(adapter_shapes * 2)  # Adam's mu and nu of each adapter leaf, nothing else

    objective = losses.get_objective("causal_lm", "decoder")
    step = jax.jit(make_train_step(model, lora_loss_fn(losses.make_loss_fn(objective), config), optimizer, schedule))
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.integers(1, 100, (4, 8)).astype(np.int32), "targets": rng.integers(1, 100, (4, 8)).astype(np.int32),
             "segment_ids": np.ones((4, 8), np.int32), "positions": np.tile(np.arange(8, dtype=np.int32), (4, 1)),
             "loss_weights": np.ones((4, 8), np.float32)}
    new, _ = step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, new.params[BASE], params[BASE])
    assert all(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(new.params[LORA]), jax.tree.leaves(params[LORA])))


def test_a_target_pattern_that_matches_nothing_is_one_line():
    model = build_model(get_config("gpt2-tiny", num_layers=1, d_model=32))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]  # paths only
    with pytest.raises(ConfigError, match=r"lora.targets pattern 'attn/c_attn' matches no parameter") as error:
        target_paths(boxed, LoraConfig(targets=(r"attention/query/kernel$", "attn/c_attn")))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="lora.rank=0"):
        LoraConfig(rank=0)


def _peft_layer(d_in, d_out, rank, alpha, dropout):
    import torch
    from peft import LoraConfig as PeftLoraConfig, get_peft_model
    torch.manual_seed(0)
    linear = torch.nn.Sequential()
    linear.add_module("proj", torch.nn.Linear(d_in, d_out))
    peft_model = get_peft_model(linear, PeftLoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"],
                                                       lora_dropout=dropout))
    layer = peft_model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    params = {"kernel": layer.base_layer.weight.detach().numpy().T, "bias": layer.base_layer.bias.detach().numpy(),
              "lora_a": layer.lora_A["default"].weight.detach().numpy().T,
              "lora_b": layer.lora_B["default"].weight.detach().numpy().T}
    return peft_model, layer, params


def test_lora_dropout_acts_on_the_adapter_input_in_train_mode_only_as_in_peft():
    """peft: y = base(x) + s * B(A(dropout(x))). One-hot rows make each row's input either kept
    (scaled by 1/keep) or dropped, so every train-mode row must equal peft's output with that
    row kept or with it dropped (base path untouched); eval mode equals peft without dropout."""
    import torch

    d_in, d_out, rank, alpha, p = 8, 6, 4, 8.0, 0.5
    peft_model, layer, params = _peft_layer(d_in, d_out, rank, alpha, p)
    x = np.eye(d_in, dtype=np.float32)[np.arange(256) % d_in] * 2.0
    config = LoraConfig(rank=rank, alpha=alpha, targets=("kernel",), dropout=p)
    dense = Dense((d_out,), ("embed",), ("mlp",), get_config("gpt2-tiny"), use_bias=True)

    def ours(key):
        with with_adapter_path(config):
            rngs = {} if key is None else {"dropout": key}
            return np.asarray(dense.apply({"params": params}, jnp.asarray(x), rngs=rngs))

    peft_model.eval()
    eval_expected = peft_model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours(None), eval_expected, rtol=1e-5, atol=1e-5)
    peft_model.train()

    class Scale(torch.nn.Module):  # peft's dropout keeping every input: x / keep
        def forward(self, inputs):
            return inputs / (1 - p)

    layer.lora_dropout["default"] = Scale()
    kept = peft_model(torch.from_numpy(x)).detach().numpy()
    layer.lora_dropout["default"] = torch.nn.Dropout(1.0)  # every input dropped: the base alone
    dropped = peft_model(torch.from_numpy(x)).detach().numpy()
    train = ours(jax.random.key(3))
    is_kept = np.all(np.isclose(train, kept, rtol=1e-5, atol=1e-5), axis=1)
    is_dropped = np.all(np.isclose(train, dropped, rtol=1e-5, atol=1e-5), axis=1)
    assert np.all(is_kept | is_dropped)
    assert 0.35 < is_kept.mean() < 0.65  # keep probability 1 - p
    np.testing.assert_array_equal(train, ours(jax.random.key(3)))  # the key fixes the mask
    assert not np.array_equal(train, ours(jax.random.key(4)))


def test_lora_dropout_changes_the_loss_in_train_mode_only():
    model, boxed, args = init_model("gpt2-tiny", scan_layers=True)
    params = {BASE: meta.unbox(boxed), LORA: jax.tree.map(lambda x: x + 0.05,
                                                          meta.unbox(init_lora(boxed, LoraConfig(rank=2), jax.random.key(1))))}
    tokens = np.arange(1, 17, dtype=np.int32).reshape(2, 8)
    batch = {"inputs": tokens, "targets": np.roll(tokens, -1, 1), "loss_weights": np.ones((2, 8), np.float32),
             "positions": np.tile(np.arange(8, dtype=np.int32), (2, 1)), "segment_ids": np.ones((2, 8), np.int32)}
    objective = losses.make_loss_fn(losses.get_objective("causal_lm", "decoder"), 0.0)
    key = jax.random.key(0)

    @jax.jit  # one compilation for every case
    def cases(params):
        loss = lambda dropout, rng, p=params: lora_loss_fn(objective, LoraConfig(rank=2, dropout=dropout))(
            model, p, batch, rng)[0]
        grads = jax.grad(lambda p: loss(0.3, key, p))(params)
        return (loss(0.3, None), loss(0.0, None), loss(0.3, key), loss(0.0, key)), grads

    (eval_dropout, eval_plain, train_dropout, train_plain), grads = cases(params)
    assert eval_dropout == eval_plain  # eval: merged weights, no dropout
    assert train_dropout != train_plain  # train: the adapter path sees dropped inputs
    # Under dropout the base still gets no gradient.
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads[BASE]))
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[LORA]))


def test_a_fresh_head_trains_in_full_beside_the_adapters_and_the_base_stays_frozen():
    """peft's modules_to_save: BERT's classifier (initialised for the task) is under "trained"."""
    from research.finetune.lora import TRAINED, split_trained
    from research.finetune.task_paths import classification_loss
    model = build_model(get_config("bert-test", num_layers=1, vocab_size=128, d_model=32, d_ff=64, num_labels=2,
                                   pooler=True))
    tokens = jnp.arange(1, 9, dtype=jnp.int32)[None].repeat(4, 0)
    boxed = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
    config = LoraConfig(rank=2)
    base, heads = split_trained(meta.unbox(boxed), ("classifier",))
    params = {BASE: base, LORA: meta.unbox(init_lora(boxed, config, jax.random.key(1))), TRAINED: heads}
    optimizer, schedule = make_optimizer(OptimizerConfig(total_steps=10, learning_rate=1e-2, warmup_steps=0))
    optimizer = adapter_optimizer(optimizer)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    batch = {"tokens": np.asarray(tokens), "segment_ids": np.ones((4, 8), np.int32),
             "label": np.asarray([0, 1, 0, 1], np.int32)}
    step = jax.jit(make_train_step(model, lora_loss_fn(classification_loss, config), optimizer, schedule))
    new, _ = step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, new.params[BASE], params[BASE])
    assert all(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(new.params[TRAINED]),
                                                     jax.tree.leaves(params[TRAINED])))


@pytest.mark.parametrize("pattern, path, scan", [("token_embed", "token_embed/embedding", False),
                                                 ("attention/query", "layers_0/attention/query/bias", False),
                                                 ("attention/query", "layers/attention/query/bias", True),
                                                 ("mlp_norm/scale", "layers_0/mlp_norm/scale", False)])
def test_a_target_that_is_not_a_projection_kernel_is_one_line(pattern, path, scan):
    # merge_lora and the Dense interceptor apply adapters to kernels only: an adapter on an
    # embedding, bias or norm scale was created, trained and counted, and changed nothing (its
    # gradient exactly 0). A scanned bias has 3 dims and used to pass as a kernel.
    model = build_model(get_config("gpt2-tiny", num_layers=1, d_model=32, scan_layers=scan))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    with pytest.raises(ConfigError, match=rf"^lora.targets pattern '{pattern}' matches '{path}', which is not a "
                                          r"projection kernel .*; anchor the pattern to kernels, e\.g\. "
                                          r"'attention/query/kernel\$'\.$") as error:
        target_paths(boxed, LoraConfig(rank=4, targets=(pattern,)))
    assert "\n" not in str(error.value)


def test_a_kernel_with_too_few_dims_says_what_it_lacks():
    params = {"attention": {"query": {"kernel": jnp.zeros((8, 4))}}}  # q needs [in, heads, head_dim]
    with pytest.raises(ConfigError, match=r"^lora target 'attention/query/kernel' has 2 dims, fewer than the 3 "
                                          r"\(1 in, 2 out\) of a 'query' projection kernel; leave it out of "
                                          r"lora\.targets\.$"):
        target_paths(params, LoraConfig(rank=4, targets=("query/kernel$",)))
