"""LoRA (Hu et al. 2021) as a parameter transform plus an optimizer mask.

No model changes: for every kernel W whose path matches a target pattern, the adapter
holds A [..., in, r] and B [..., r, out] (leading stacked "layers" dims kept under
scan_layers), and the model is applied to the transformed parameters

    W' = W + (alpha / r) * A @ B          (merge_lora)

which is the same function as the unmerged forward x W + (alpha / r) (x A) B. The train
state's params are {"base": frozen weights, "lora": adapters}; the loss stops gradients
at the base, and the optimizer (optax.multi_transform) updates only "lora", so Adam's
moments exist only for adapter leaves. B starts at zero, so step 0 is the base model.
A task head the job initialises fresh (a reward head, a classifier) has nothing pretrained
to adapt: it sits whole under "trained" and is trained in full, as peft's modules_to_save.
Export: `to_hf(model, merged_params(params, config), path, tokenizer=...)` (the base with the
adapters merged and any trained head; research/finetune/trainer.py's export_dir does this).

Dropout (lora.dropout = p, as peft's lora_dropout): in train mode only, the adapter path
sees dropped-out inputs, y = x W + (alpha / r) (dropout(x) A) B, while the base path sees x.
A merged kernel cannot express that, so train steps with p > 0 run the unmerged forward: the
adapters sit next to their kernels in the params tree and a flax method interceptor adds
the adapter path to those Dense layers' outputs (with_adapter_path). The mask key is the
module's make_rng("dropout") (the train step's key, split per layer and per module), so a
resumed run draws the same masks. Evaluation (no rng) uses the merged weights.

Paths are "/"-joined parameter keys, e.g. "layers/attention/query/kernel" (scanned) or
"decoder_layers_1/cross_attention/out/kernel" (T5, unrolled); patterns are regular
expressions searched in them, and every path a pattern matches must be a projection kernel
(an embedding, bias or norm scale is refused: no adapter there would change the model).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.models.config import ConfigError

# Attention and MLP projections of all three families (decoder, BERT, T5 self/cross attention).
DEFAULT_TARGETS = (r"attention/(query|key|value|out)/kernel$", r"mlp/(wi|wi_0|wi_1|wo)/kernel$")
BASE, LORA = "base", "lora"
TRAINED = "trained"  # top-level subtrees trained in full under LoRA (fresh task heads)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Adapter rank r, scale alpha / r, and which kernels get adapters (config.lora)."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    dropout: float = 0.0  # on the adapter path's input, train mode only (peft's lora_dropout)

    def __post_init__(self):
        if self.rank <= 0:
            raise ConfigError(f"lora.rank={self.rank} must be positive (e.g. --config.lora.rank=8), or 0 for full "
                              "fine-tuning.")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha} must be positive: adapters are scaled by alpha / rank "
                              "(e.g. --config.lora.alpha=16).")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1), e.g. 0.05.")
        if not self.targets:
            raise ConfigError("lora.targets is empty; give regular expressions of kernel paths, e.g. "
                              f"{DEFAULT_TARGETS}.")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ConfigError(f"lora.targets pattern {pattern!r} is not a regular expression ({error}).") from None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _path(key_path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in key_path)


def _split_dims(path: str, ndim: int) -> tuple[int, int, int]:
    """(stacked, in, out) dims of a kernel: attention q/k/v are D -> (H, Dh), out is (H, Dh) -> D."""
    parts = path.split("/")
    parent = parts[-2] if len(parts) >= 2 else ""
    n_in = 2 if parent == "out" else 1
    n_out = 2 if parent in ("query", "key", "value") else 1
    stacked = ndim - n_in - n_out
    if stacked < 0:
        raise ConfigError(f"lora target {path!r} has {ndim} dims, fewer than the {n_in + n_out} ({n_in} in, {n_out} "
                          f"out) of a {parent!r} projection kernel; leave it out of lora.targets.")
    return stacked, n_in, n_out


def _is_leaf(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def target_paths(params: Any, config: LoraConfig) -> list[str]:
    """Paths of the kernels that get adapters; ConfigError for a pattern that matches nothing, or
    that matches a parameter LoRA does not adapt: merge_lora and the dropout path (Dense layers)
    apply adapters to projection kernels only, so one on an embedding, bias or norm scale would
    be trained and counted while changing nothing."""
    leaves = {_path(p): getattr(v, "value", v) for p, v in
              jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_leaf)[0]}
    matched = []
    for pattern in config.targets:
        hits = [p for p in leaves if re.search(pattern, p)]
        if not hits:
            kernels = [p for p in leaves if p.endswith("kernel")][:4]
            raise ConfigError(f"lora.targets pattern {pattern!r} matches no parameter; parameter paths look like "
                              f"{kernels}.")
        for path in hits:
            if path.rsplit("/", 1)[-1] != "kernel":
                raise ConfigError(f"lora.targets pattern {pattern!r} matches {path!r}, which is not a projection "
                                  "kernel (LoRA adapts '.../kernel' weights only); anchor the pattern to kernels, "
                                  "e.g. 'attention/query/kernel$'.")
            _split_dims(path, len(leaves[path].shape))
        matched += [p for p in hits if p not in matched]
    return sorted(matched)


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _get(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        tree = tree[key]
    return tree


def init_lora(params: Any, config: LoraConfig, rng: jax.Array) -> dict:
    """Adapters for `params` (boxed or not): {.. parent: {"lora_a": A, "lora_b": B}} mirroring
    the kernels' nesting. A ~ U(-1/sqrt(in), 1/sqrt(in)) as peft's default (Kaiming-uniform,
    a=sqrt(5)); B = 0. Boxed kernels give boxed adapters with matching logical axis names
    (the rank axis is replicated)."""
    adapters: dict = {}
    for index, path in enumerate(target_paths(params, config)):
        kernel = _get(params, path)
        names = kernel.names if isinstance(kernel, nn.Partitioned) else None
        value = kernel.value if isinstance(kernel, nn.Partitioned) else kernel
        stacked, n_in, _ = _split_dims(path, value.ndim)
        lead, in_shape, out_shape = value.shape[:stacked], value.shape[stacked:stacked + n_in], value.shape[stacked + n_in:]
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        a = jax.random.uniform(jax.random.fold_in(rng, index), (*lead, *in_shape, config.rank), value.dtype,
                               -bound, bound)
        b = jnp.zeros((*lead, config.rank, *out_shape), value.dtype)
        if names is not None:
            # Same box type (logical names) as the kernel's, so the rules table shards them alike.
            a = kernel.replace(value=a, names=(*names[:stacked + n_in], None))
            b = kernel.replace(value=b, names=(*names[:stacked], None, *names[stacked + n_in:]))
        parent = path.rsplit("/", 1)[0]
        _set(adapters, parent + "/lora_a", a)
        _set(adapters, parent + "/lora_b", b)
    return adapters


def lora_delta(a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...], path: str, scale: float) -> jax.Array:
    """scale * A @ B reshaped to the kernel's shape (batched over stacked layer dims)."""
    stacked, n_in, _ = _split_dims(path, len(kernel_shape))
    lead = kernel_shape[:stacked]
    rank = a.shape[-1]
    a2 = a.reshape(*lead, -1, rank)
    b2 = b.reshape(*lead, rank, -1)
    return (scale * jnp.matmul(a2, b2)).reshape(kernel_shape)


def merge_lora(base: Any, adapters: Any, config: LoraConfig) -> Any:
    """W + (alpha / r) A B for every adapted kernel; other leaves unchanged (unboxed trees)."""
    def merge(key_path, leaf):
        path = _path(key_path)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if not path.endswith("kernel"):
            return leaf
        try:
            node = _get(adapters, parent)
        except (KeyError, TypeError):
            return leaf
        if not isinstance(node, dict) or "lora_a" not in node:
            return leaf
        delta = lora_delta(node["lora_a"], node["lora_b"], leaf.shape, path, config.scale)
        return (leaf + delta.astype(leaf.dtype)).astype(leaf.dtype)
    return jax.tree_util.tree_map_with_path(merge, base)


def attach_adapters(base: Any, adapters: Any) -> Any:
    """`base` with each adapter's lora_a / lora_b placed next to its kernel (unboxed trees)."""
    if not isinstance(adapters, dict):
        return adapters
    return {**base, **{key: attach_adapters(base.get(key, {}), value) for key, value in adapters.items()}}


def adapter_path(x: jax.Array, a: jax.Array, b: jax.Array, scale: float, dropout: float,
                 key: jax.Array | None, dtype: Any) -> jax.Array:
    """scale * (dropout(x) A) B, contracting x's last a.ndim - 1 dims with A [in.., r]; no
    dropout when key is None (peft: dropout only on the input of lora_A, scaled by 1/keep)."""
    if key is not None and dropout > 0:
        keep = 1.0 - dropout
        x = jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, jnp.zeros_like(x))
    n_in = a.ndim - 1
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    xa = jax.lax.dot_general(x.astype(dtype), a.astype(dtype), (contract, ((), ())))
    return scale * jnp.tensordot(xa, b.astype(dtype), axes=1)


def with_adapter_path(config: LoraConfig):
    """A flax method interceptor: Dense layers whose params hold lora_a / lora_b return
    x W (+ bias) + adapter_path(x), with dropout when the apply has a "dropout" rng."""
    from research.models.layers import Dense

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (context.method_name != "__call__" or not isinstance(module, Dense)
                or not module.has_variable("params", "lora_a")):
            return next_fun(*args, **kwargs)
        y = next_fun(*args, **kwargs)
        key = module.make_rng("dropout") if module.has_rng("dropout") else None
        delta = adapter_path(args[0], module.get_variable("params", "lora_a"), module.get_variable("params", "lora_b"),
                             config.scale, config.dropout, key, module.config.compute_dtype)
        return y + delta.astype(y.dtype)
    return nn.intercept_methods(intercept)


def split_trained(params: dict, names: tuple[str, ...]) -> tuple[dict, dict]:
    """(params without the top-level subtrees `names`, those subtrees): the frozen base and
    the fully trained heads of a LoRA run."""
    return ({k: v for k, v in params.items() if k not in names}, {k: v for k, v in params.items() if k in names})


def merged_params(params: dict, config: LoraConfig) -> Any:
    """The model's parameters of {"base", "lora"[, "trained"]}: merged weights plus the heads."""
    return {**merge_lora(params[BASE], params[LORA], config), **params.get(TRAINED, {})}


def lora_loss_fn(loss_fn: Any, config: LoraConfig) -> Any:
    """The loss as a function of {"base", "lora"[, "trained"]} params, gradients stopped at the
    (frozen) base: merged weights, or under dropout in train mode (rng given) the unmerged forward."""
    def loss(model, params, batch, rng):
        base = jax.lax.stop_gradient(params[BASE])
        trained = params.get(TRAINED, {})
        if rng is None or config.dropout == 0:
            return loss_fn(model, {**merge_lora(base, params[LORA], config), **trained}, batch, rng)
        with with_adapter_path(config):
            return loss_fn(model, {**attach_adapters(base, params[LORA]), **trained}, batch, rng)
    return loss


def trainable_labels(params: Any) -> Any:
    """"train" for adapter and head leaves, "frozen" for the base: the labels of optax.multi_transform."""
    return {key: jax.tree.map(lambda _: "train" if key in (LORA, TRAINED) else "frozen", value)
            for key, value in params.items()}


def adapter_optimizer(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optimizer` on the adapters (and fresh heads) only; the base gets zero updates and no optimizer state."""
    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, trainable_labels)
