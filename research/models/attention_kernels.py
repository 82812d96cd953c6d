"""Attention kernels behind one function, chosen by ModelConfig.attention_kernel.

    xla                    the reference: einsums with float32 logits and a dense [B, T, S]
                           mask; the only one with attention-probability dropout.
    dot_product_attention  jax.nn.dot_product_attention: cuDNN flash attention on GPU
                           (bf16 / fp16), its XLA implementation elsewhere.
    splash                 Pallas splash attention on TPU (segment ids + causal mask, no bias);
                           on CPU it runs in Pallas interpret mode (for tests only: slow).
                           Under a multi-device mesh it runs per shard (shard_map over
                           the rows' and heads' mesh axes), never on gathered operands.
    auto                   the fastest that supports the call, per platform (logged once).

Every kernel takes q [B, T, H, Dh], k / v [B, S, K, Dh] (grouped-query: H = K * G) and an
AttentionMask, and returns [B, T, H, Dh]. Kernels that cannot take a dense mask (splash)
read the mask's segment ids and causal flag instead; the dense mask stays the source of
truth that every kernel is tested against.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from research.models.config import ConfigError, ModelConfig
from research.models.layers import einsum_float32_out

Array = jax.Array
ResolvedKernel = Literal["xla", "dot_product_attention", "splash"]
NEG_INF = -1e30  # large finite value: a fully masked row (padding query) stays NaN-free
_LOGGED: set[str] = set()


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query may attend.

    dense_BTS: True = may attend. When q_segment_BT / kv_segment_BS are set, dense_BTS is
    exactly "same segment, key not padding (0), s <= t if causal, and s > t - window if
    window", so kernels may use the segment ids instead (padding queries, whose outputs no
    loss reads, may then differ).
    """

    dense_BTS: Array
    q_segment_BT: Array | None = None
    kv_segment_BS: Array | None = None
    causal: bool = flax.struct.field(pytree_node=False, default=False)
    window: int | None = flax.struct.field(pytree_node=False, default=None)  # config.sliding_window

    @property
    def has_segments(self) -> bool:
        return self.q_segment_BT is not None


def segment_mask(q_segment_BT: Array, kv_segment_BS: Array, causal: bool, window: int | None = None) -> Array:
    """[B, T, S] mask: same segment, key not padding (segment 0), s <= t if causal, and
    s > t - window if window (Mistral's sliding window; causal masks only)."""
    mask = (q_segment_BT[:, :, None] == kv_segment_BS[:, None, :]) & (kv_segment_BS[:, None, :] != 0)
    if causal:
        t, s = q_segment_BT.shape[1], kv_segment_BS.shape[1]
        mask &= causal_window_mask(jnp.arange(t), jnp.arange(s), window)[None]
    elif window is not None:
        raise ValueError("a sliding window applies to causal masks only.")
    return mask


def causal_window_mask(q_index_T: Array, kv_index_S: Array, window: int | None) -> Array:
    """[T, S]: key index <= query index, and within the last `window` indices when set
    (transformers' rule: query q sees key k iff k <= q and k > q - window)."""
    mask = kv_index_S[None, :] <= q_index_T[:, None]
    if window is not None:
        mask &= kv_index_S[None, :] > q_index_T[:, None] - window
    return mask


def segment_attention_mask(q_segment_BT: Array, kv_segment_BS: Array, causal: bool,
                           window: int | None = None) -> AttentionMask:
    """The AttentionMask of segment ids (0 = padding), optionally causal (and windowed)."""
    return AttentionMask(segment_mask(q_segment_BT, kv_segment_BS, causal, window), q_segment_BT, kv_segment_BS,
                         causal, window)


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logging.getLogger(__name__).info(message)


def _cudnn_max_head_dim() -> int:
    """jax's H_max: 256 on a CUDA GPU of compute capability 9.0 (Hopper) or later, else 128.
    Read from the device's public attribute (absent on CPU, where a test fakes platform='gpu')."""
    try:
        capability = tuple(int(x) for x in str(jax.devices()[0].compute_capability).split("."))
    except (AttributeError, ValueError):
        return 128
    return 256 if capability >= (9, 0) else 128


def _cudnn_head_dim_refusal(head_dim: int) -> str | None:
    """Why jax's cuDNN flash attention refuses this head_dim in every call, or None. Mirrors
    check_is_flash_attention (jax/_src/cudnn/fused_attention_stablehlo.py, jax 0.10), which runs
    only on a GPU: bf16 / fp16 heads must be a multiple of 8 and at most H_max."""
    limit = _cudnn_max_head_dim()
    if head_dim % 8 or head_dim > limit:
        return f"head_dim a multiple of 8 and at most {limit}, got head_dim={head_dim}"
    return None


def resolve_kernel(config: ModelConfig, *, has_bias: bool, has_segments: bool, dropout: bool, q_len: int,
                   kv_len: int, platform: str | None = None) -> ResolvedKernel:
    """The kernel that runs one attention call (trace time). Raises ConfigError when an
    explicitly chosen kernel cannot run the call; `auto` falls back and logs why."""
    platform = platform or jax.default_backend()
    choice = config.attention_kernel
    half = config.dtype in ("bfloat16", "float16")
    # jax_dot_product_attention's cuDNN path, and what jax's check refuses there. The dense mask
    # reaches cuDNN as a bias, and with a bias its backward pass needs even T and S: only `auto`
    # avoids that too, since the call cannot tell a training step from an inference one.
    cudnn = platform == "gpu" and half
    head_refusal = _cudnn_head_dim_refusal(config.dim_per_head) if cudnn else None
    cudnn_refusal = head_refusal or (f"even T and S for its backward pass, got T={q_len}, S={kv_len}"
                                     if cudnn and (q_len % 2 or kv_len % 2) else None)
    # Splash's blocks are multiples of 128 lanes, in interpret mode too.
    splash_ok = has_segments and not has_bias and q_len % 128 == 0 and kv_len % 128 == 0
    if choice == "auto":
        if dropout:
            kernel, why = "xla", "attention dropout is active (only the reference applies it)"
        elif cudnn and cudnn_refusal:
            kernel, why = "xla", f"cuDNN flash attention needs {cudnn_refusal}"
        elif cudnn:
            kernel, why = "dot_product_attention", "cuDNN flash attention on GPU"
        elif platform == "tpu" and splash_ok:
            kernel, why = "splash", "splash attention on TPU"
        else:
            kernel, why = "xla", f"no fused kernel for this call on {platform} (dtype {config.dtype})"
        _log_once(f"{config.name}: attention_kernel=auto -> {kernel} for T={q_len}, S={kv_len}: {why}")
        return kernel
    if choice == "xla":
        return "xla"
    if dropout:
        raise ConfigError(f"{config.name}: attention_kernel={choice!r} has no attention-probability dropout but "
                          f"dropout_rate={config.dropout_rate}; use attention_kernel='xla' (or 'auto'), or "
                          "dropout_rate=0.")
    if choice == "dot_product_attention":
        if platform == "cpu" and config.dtype == "float16":
            # jax's XLA path asks for float32 logits of float16 operands: XLA:CPU has no such dot
            # under jit ("precision 'F16_F16_F32' is not supported"); only eager calls fell back.
            raise ConfigError(f"{config.name}: attention_kernel='dot_product_attention' cannot run dtype='float16' "
                              "under jit on CPU; use attention_kernel='xla' or 'auto', or dtype='bfloat16'.")
        if head_refusal:
            raise ConfigError(f"{config.name}: attention_kernel='dot_product_attention' runs cuDNN flash attention "
                              f"on GPU, which needs {head_refusal}; use attention_kernel='auto' (falls back to "
                              "'xla') or 'xla', or change head_dim.")
    if choice == "splash":
        if has_bias:
            raise ConfigError(f"{config.name}: attention_kernel='splash' takes no additive bias (T5 relative "
                              "bias); use 'dot_product_attention', 'xla' or 'auto'.")
        if not has_segments:
            # Prefix-LM masks and cached decoding steps have no segment/causal form.
            _log_once(f"{config.name}: splash cannot express this mask (prefix LM or KV-cache step); "
                      "using the xla reference for it.")
            return "xla"
        if not splash_ok:
            raise ConfigError(f"{config.name}: splash attention needs T and S divisible by 128, got "
                              f"T={q_len}, S={kv_len}; pad the sequence or use attention_kernel='auto'.")
    return choice


@jax.custom_jvp
def softmax_last_axis(logits: Array) -> Array:
    """jax.nn.softmax over the last axis, the same forward, differentiated as y * (dx - sum(y * dx)):
    jax's own rule behind its jax_softmax_custom_jvp flag, which jax 0.10 leaves off. Off, autodiff
    differentiates exp(x - max) / sum through the division, keeping both as residuals, and on
    XLA:CPU that backward was a quarter of a small model's train step (1e4-parameter ladder model:
    1.17 of 4.99 ms per step in its fused op, 0.17 with this rule). Gradients differ by rounding."""
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    unnormalized = jnp.exp(shifted)
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


@softmax_last_axis.defjvp
def _softmax_last_axis_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (logits,), (logits_dot,) = primals, tangents
    probs = softmax_last_axis(logits)
    return probs, probs * (logits_dot - jnp.sum(probs * logits_dot, axis=-1, keepdims=True))


def reference_attention(q_BTHd: Array, k_BSKd: Array, v_BSKd: Array, mask_BTS: Array, *, scale: float,
                        bias_BHTS: Array | None = None, dropout: Callable[[Array], Array] | None = None) -> Array:
    """Einsum attention: float32 logits and softmax, probabilities in the compute dtype."""
    b, t, h, dh = q_BTHd.shape
    k = k_BSKd.shape[2]
    dtype = q_BTHd.dtype
    # Group query heads over their shared kv head: H = K * G.
    q_BTKGd = q_BTHd.reshape(b, t, k, h // k, dh)
    logits_BKGTS = einsum_float32_out("BTKGd,BSKd->BKGTS", q_BTKGd, k_BSKd.astype(dtype))
    if scale != 1.0:
        logits_BKGTS = logits_BKGTS * scale
    if bias_BHTS is not None:
        logits_BKGTS = logits_BKGTS + bias_BHTS.reshape(bias_BHTS.shape[0], k, h // k, *bias_BHTS.shape[2:])
    logits_BKGTS = jnp.where(mask_BTS[:, None, None, :, :], logits_BKGTS, NEG_INF)
    probs_BKGTS = softmax_last_axis(logits_BKGTS).astype(dtype)
    if dropout is not None:
        probs_BKGTS = dropout(probs_BKGTS)
    out_BTKGd = einsum_float32_out("BKGTS,BSKd->BTKGd", probs_BKGTS, v_BSKd.astype(dtype))
    return out_BTKGd.reshape(b, t, h, dh).astype(dtype)


def jax_dot_product_attention(q_BTHd: Array, k_BSKd: Array, v_BSKd: Array, mask: AttentionMask, *, scale: float,
                              bias_BHTS: Array | None = None, platform: str | None = None) -> Array:
    """jax.nn.dot_product_attention: cuDNN on GPU for half precision, else its XLA implementation."""
    platform = platform or jax.default_backend()
    dtype = q_BTHd.dtype
    implementation = "cudnn" if platform == "gpu" and dtype in (jnp.bfloat16, jnp.float16) else "xla"
    bias = None if bias_BHTS is None else bias_BHTS.astype(dtype)
    # The xla implementation calls jax.nn.softmax, which jax 0.10 differentiates through the
    # division unless jax_softmax_custom_jvp is on (softmax_last_axis says why that is slow); the
    # flag is part of jit's cache key and trace context, so turning it on here changes this call
    # only. Same forward; the CPU train step of the 1e3 / 1e4 / 1e5 ladder models with this kernel
    # took 0.71 / 0.76 / 0.89 of its time without it (same process, alternating, 2026-12-08).
    with jax.softmax_custom_jvp(True):
        # is_causal lets cuDNN skip the blocks above the diagonal; the dense mask also holds it.
        return jax.nn.dot_product_attention(q_BTHd, k_BSKd.astype(dtype), v_BSKd.astype(dtype), bias=bias,
                                            mask=mask.dense_BTS[:, None], scale=scale,
                                            is_causal=mask.causal and q_BTHd.shape[1] == k_BSKd.shape[1],
                                            implementation=implementation)


def _splash_block(length: int) -> int:
    """The largest of 512, 256, 128 dividing `length` (resolve_kernel checks that 128 does)."""
    return next(b for b in (512, 256, 128) if length % b == 0)


def splash_attention(q_BTHd: Array, k_BSKd: Array, v_BSKd: Array, mask: AttentionMask, *, scale: float,
                     platform: str | None = None) -> Array:
    """Pallas splash attention (TPU; interpret mode elsewhere) with segment ids and GQA."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    platform = platform or jax.default_backend()
    b, t, h, dh = q_BTHd.shape
    s = k_BSKd.shape[1]
    dtype = q_BTHd.dtype
    if mask.causal and mask.window is not None:
        # Keys t - (window - 1) .. t: causal and windowed in one lazy mask, so splash skips
        # the blocks outside the band instead of computing and discarding them.
        base = splash.LocalMask((t, s), window_size=(mask.window - 1, 0), offset=0)
    else:
        base = splash.CausalMask((t, s)) if mask.causal else splash.FullMask((t, s))
    bq, bk = _splash_block(t), _splash_block(s)
    blocks = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                               block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    shards = _shard_specs(h, k_BSKd.shape[2])
    local_heads = h // shards[2] if shards else h
    kernel = splash.make_splash_mha(splash.MultiHeadMask([base] * local_heads), block_sizes=blocks, head_shards=1,
                                    q_seq_shards=1, interpret=platform != "tpu")
    # splash does not scale the logits: fold the scale into q (in float32, then back).
    q_BHTd = jnp.transpose((q_BTHd.astype(jnp.float32) * scale).astype(dtype), (0, 2, 1, 3))
    k_BKSd = jnp.transpose(k_BSKd.astype(dtype), (0, 2, 1, 3))
    v_BKSd = jnp.transpose(v_BSKd.astype(dtype), (0, 2, 1, 3))

    def local(q_BHTd, k_BKSd, v_BKSd, q_segment_BT, kv_segment_BS):
        segments = splash.SegmentIds(q=q_segment_BT, kv=kv_segment_BS)
        return jax.vmap(kernel)(q_BHTd, k_BKSd, v_BKSd, segment_ids=segments)

    if shards:
        # A Pallas kernel is a custom call that XLA's SPMD partitioner cannot split: under a
        # sharded jit its operands would be gathered whole onto every device. Each device runs
        # it on its own rows and heads instead.
        batch_axes, head_axes, _ = shards
        heads, rows = P(batch_axes, head_axes, None, None), P(batch_axes, None)
        local = jax.shard_map(local, mesh=jax.sharding.get_abstract_mesh(), in_specs=(heads, heads, heads, rows, rows),
                              out_specs=heads, check_vma=False)
    out_BHTd = local(q_BHTd, k_BKSd, v_BKSd, mask.q_segment_BT.astype(jnp.int32), mask.kv_segment_BS.astype(jnp.int32))
    return jnp.transpose(out_BHTd, (0, 2, 1, 3)).astype(dtype)


def _shard_specs(num_heads: int, num_kv_heads: int) -> tuple[Any, Any, int] | None:
    """(mesh axes of the rows, of the heads, head shards) for splash under a multi-device mesh
    (None without one): the axes the logical-axis rules in force give activation_batch and
    activation_heads (research.sharding). Heads are split only when both the query and the
    key/value heads divide evenly; a GQA group then stays on one shard, since query head i
    reads kv head i // (H / K). Otherwise every shard keeps all heads: correct, less parallel."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    batch_axes, head_axes = nn.logical_to_mesh_axes(("activation_batch", "activation_heads"))
    names = () if head_axes is None else (head_axes,) if isinstance(head_axes, str) else tuple(head_axes)
    head_shards = math.prod(mesh.shape[a] for a in names)
    if num_heads % head_shards or num_kv_heads % head_shards:
        return batch_axes, None, 1
    return batch_axes, head_axes, head_shards


def attend(kernel: ResolvedKernel, q_BTHd: Array, k_BSKd: Array, v_BSKd: Array, mask: AttentionMask, *,
           scale: float, bias_BHTS: Array | None = None,
           dropout: Callable[[Array], Array] | None = None) -> Array:
    """Run `kernel` (from resolve_kernel) -> [B, T, H, Dh] in q's dtype."""
    if kernel == "xla":
        return reference_attention(q_BTHd, k_BSKd, v_BSKd, mask.dense_BTS, scale=scale, bias_BHTS=bias_BHTS,
                                   dropout=dropout)
    if kernel == "dot_product_attention":
        return jax_dot_product_attention(q_BTHd, k_BSKd, v_BSKd, mask, scale=scale, bias_BHTS=bias_BHTS)
    assert bias_BHTS is None and mask.has_segments, "resolve_kernel only picks splash when it can run"
    return splash_attention(q_BTHd, k_BSKd, v_BSKd, mask, scale=scale)


def logit_scale(config: ModelConfig) -> float:
    """1/sqrt(Dh), or 1 for T5, which folds it into the query's init."""
    return 1.0 / math.sqrt(config.dim_per_head) if config.scale_attention_logits else 1.0
