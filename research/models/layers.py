"""Building blocks shared by all three families: dense, norms, MLP, embeddings.

Every parameter is created with logical axis names (research/sharding.py maps them to
mesh axes). Shapes use the legend in research/models/__init__.py.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig

Array = jax.Array
INIT_STD = 0.02


def kernel_init(axes: Sequence[str], std: float = INIT_STD):
    return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(axes))


def zeros_init(axes: Sequence[str]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


def ones_init(axes: Sequence[str]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(axes))


def activation_fn(name: str) -> Callable[[Array], Array]:
    return {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
    }[name]


def constrain(x: Array, axes: Sequence[str]) -> Array:
    """Logical sharding constraint on an activation (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, tuple(axes))


def dense_init_std(config: ModelConfig, fan_in: int, t5_scale: float = 1.0) -> float:
    """Std of a kernel's normal init: 0.02, or T5's fan_in^-1/2 times `t5_scale`."""
    return fan_in**-0.5 * t5_scale if config.init_scheme == "t5" else INIT_STD


def embedding_init_std(config: ModelConfig, table: str) -> float:
    """Std of an embedding table: 0.02, or under T5 init N(0, 1) tokens and a D^-1/2 relative bias."""
    if config.init_scheme != "t5":
        return INIT_STD
    return {"tokens": 1.0, "relative_bias": config.d_model**-0.5}.get(table, INIT_STD)


def _dense_spec(x_ndim: int, n_in: int, n_out: int) -> str:
    """The einsum of x's last n_in dims against a kernel's first n_in: e.g. 'abc,cd->abd'."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    rows, contracted, out = letters[:x_ndim - n_in], letters[x_ndim - n_in:x_ndim], letters[x_ndim:x_ndim + n_out]
    return f"{rows}{contracted},{contracted}{out}->{rows}{out}"


def _last_dims_by_first(x_ndim: int, n_in: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """dot_general contracting dims: x's last n_in against the kernel's first n_in."""
    return tuple(range(x_ndim - n_in, x_ndim)), tuple(range(n_in))


def einsum_float32_out(spec: str, x: Array, y: Array) -> Array:
    """einsum(spec, x, y) accumulated and returned in float32 (LM heads, attention logits under
    bf16 compute). XLA:CPU's plain dot thunk has no bf16 x bf16 -> float32 kernel: generation's
    one-token steps of a bf16 decoder died with "Unsupported element type for DotThunk::Execute:
    BF16 x BF16 = F32". On CPU the operands go to float32 first: exact, and the same products
    and float32 sums."""
    if jax.default_backend() == "cpu":
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def uses_activations_lhs(config: ModelConfig) -> bool:
    """Whether Dense kernel gradients take the activations_lhs form (ModelConfig.dense_weight_grad).
    auto picks it on CPU only (the re-fusion it avoids is XLA:CPU's), and only without remat: the
    remat policies (save_dots keeps dot_general outputs) were measured and tested with autodiff's
    matmuls, not inside a custom_vjp. A custom_vjp has no forward-mode rule: jax.jvp through the
    model needs dense_weight_grad='autodiff'."""
    if config.dense_weight_grad == "auto":
        return jax.default_backend() == "cpu" and config.remat == "none"
    return config.dense_weight_grad == "activations_lhs"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def activations_lhs_product(x: Array, kernel: Array, n_in: int) -> Array:
    """x [..., in...] times kernel [in..., out...] over x's last n_in dims, whose kernel gradient
    is X^T dY with X on the left.

    Why: JAX's transpose rule forms the kernel gradient as dot(dY, X) over the rows, then
    transposes the result. XLA:CPU's matmul wants the left operand's contracted rows minor, so it
    materialises dY transposed, and fuses the whole elementwise chain that produces dY (the
    residual stream's gradient, through every layer norm above) into that copy, recomputing it
    for each layer's kernel gradient. With X on the left the transposed copy is of a saved
    activation. Compiled train steps of the scaling ladder's models (16 x 64 tokens), both forms
    in one process, 10 alternating rounds, median ms per step (2026-12-04, 2-core CPU): 1e6
    parameters (D144 L4) 88.1 against 112.0; 1e5 (D64 L2) 13.1 against 15.4; 1e4 (D28 L1) 5.07
    against 5.59; 1e3 (D8 L1) 2.06 against 2.11."""
    return jax.lax.dot_general(x, kernel, (_last_dims_by_first(x.ndim, n_in), ((), ())))


def _activations_lhs_forward(x: Array, kernel: Array, n_in: int):
    return activations_lhs_product(x, kernel, n_in), (x, kernel)


def _activations_lhs_backward(n_in: int, saved: tuple[Array, Array], grad_y: Array):
    x, kernel = saved
    n_out, n_rows = kernel.ndim - n_in, x.ndim - n_in
    out_dims = (tuple(range(grad_y.ndim - n_out, grad_y.ndim)), tuple(range(n_in, kernel.ndim)))
    grad_x = jax.lax.dot_general(grad_y, kernel, (out_dims, ((), ())))
    rows = tuple(range(n_rows))
    grad_kernel = jax.lax.dot_general(x, grad_y, ((rows, rows), ((), ())))
    return grad_x, grad_kernel


activations_lhs_product.defvjp(_activations_lhs_forward, _activations_lhs_backward)


class Dense(nn.Module):
    """DenseGeneral over the last `len(in_axes)` dims with logical axis names.

    kernel shape = in_shape + features; e.g. q projection 'BTD,DHK->BTHK'. t5_init_scale
    multiplies the fan-in std under init_scheme='t5' (T5 folds 1/sqrt(Dh) into the query).
    """

    features: tuple[int, ...]
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    config: ModelConfig
    use_bias: bool = False
    t5_init_scale: float = 1.0
    float32_output: bool = False  # accumulate and return float32 (LM heads under bf16 compute)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        n_in = len(self.in_axes)
        fan_in = math.prod(x.shape[-n_in:])
        std = dense_init_std(cfg, fan_in, self.t5_init_scale)
        kernel = self.param("kernel", kernel_init(self.in_axes + self.out_axes, std),
                            tuple(x.shape[-n_in:]) + tuple(self.features), cfg.weight_dtype)
        x, kernel = x.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype)
        if uses_activations_lhs(cfg) and not self.float32_output:
            y = activations_lhs_product(x, kernel, n_in)
        elif self.float32_output:
            y = einsum_float32_out(_dense_spec(x.ndim, n_in, kernel.ndim - n_in), x, kernel)
        else:
            y = jax.lax.dot_general(x, kernel, (_last_dims_by_first(x.ndim, n_in), ((), ())))
        if self.use_bias:
            bias = self.param("bias", zeros_init(self.out_axes), tuple(self.features), cfg.weight_dtype)
            y = y + bias.astype(y.dtype)
        return y


class Norm(nn.Module):
    """LayerNorm (with bias when config.use_bias) or scale-only RMSNorm, in float32."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        # Statistics in float32 even under bf16 compute: norms are where precision is lost.
        x32 = x.astype(jnp.float32)
        if cfg.norm == "rmsnorm":
            y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + cfg.norm_eps)
        else:
            mean = jnp.mean(x32, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        scale = self.param("scale", ones_init(("embed",)), (x.shape[-1],), cfg.weight_dtype)
        y = y * scale.astype(jnp.float32)
        if cfg.norm == "layernorm" and cfg.use_bias:
            bias = self.param("bias", zeros_init(("embed",)), (x.shape[-1],), cfg.weight_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(cfg.compute_dtype)


class Mlp(nn.Module):
    """Feed-forward block: act(x W_in) W_out, or the gated act(x W_0) * (x W_1) W_out."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        act = activation_fn(cfg.activation)
        dense = lambda f, i, o, name: Dense((f,), i, o, cfg, use_bias=cfg.use_bias, name=name)
        if cfg.gated_mlp:
            h_BTF = act(dense(cfg.d_ff, ("embed",), ("mlp",), "wi_0")(x_BTD)) * dense(
                cfg.d_ff, ("embed",), ("mlp",), "wi_1")(x_BTD)
        else:
            h_BTF = act(dense(cfg.d_ff, ("embed",), ("mlp",), "wi")(x_BTD))
        h_BTF = constrain(h_BTF, ("activation_batch", "activation_length", "activation_mlp"))
        h_BTF = nn.Dropout(cfg.dropout_rate)(h_BTF, deterministic=deterministic)
        return dense(cfg.d_model, ("mlp",), ("embed",), "wo")(h_BTF)


class Embed(nn.Module):
    """A lookup table [N, D]; `attend` gives logits against it for tied LM heads."""

    num_embeddings: int
    config: ModelConfig
    axes: tuple[str, str] = ("vocab", "embed")
    init_std: float = INIT_STD

    def setup(self):
        cfg = self.config
        self.embedding = self.param("embedding", kernel_init(self.axes, self.init_std), (self.num_embeddings, cfg.d_model),
                                    cfg.weight_dtype)

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.config.compute_dtype)

    def attend(self, x_BTD: Array) -> Array:
        """'BTD,VD->BTV' against the table: logits accumulated and returned in float32."""
        cfg = self.config
        return einsum_float32_out("BTD,VD->BTV", x_BTD.astype(cfg.compute_dtype), self.embedding.astype(cfg.compute_dtype))


# Activations named with jax.ad_checkpoint.checkpoint_name in attention.py.
SAVED_NAMES = ("query_proj", "key_proj", "value_proj", "attention_out")


def remat_policy(name: str):
    """The jax.checkpoint policy of a config.remat name (None = no remat)."""
    if name == "offload":
        if jax.default_backend() == "cpu":
            from research.models.config import ConfigError
            raise ConfigError("remat='offload' moves saved activations to host memory, which needs a GPU or "
                              "TPU; use remat='minimal' on CPU.")
        return jax.checkpoint_policies.save_and_offload_only_these_names(
            names_which_can_be_saved=(), names_which_can_be_offloaded=SAVED_NAMES,
            offload_src="device", offload_dst="pinned_host")
    return {
        "none": None,
        "full": jax.checkpoint_policies.nothing_saveable,
        "save_dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        "minimal": jax.checkpoint_policies.save_only_these_names(*SAVED_NAMES),
    }[name]
