"""Multi-head / grouped-query attention with RoPE, T5 relative bias and a KV cache.

Masks (AttentionMask: a boolean [B, T, S], True = may attend, plus the segment ids and
causal flag it was built from) are built once per stack by the model from segment ids
(0 = padding) and, for decoders, causality. The kernel that applies them is chosen by
config.attention_kernel (research/models/attention_kernels.py). The KV cache is an explicit
pytree passed in and returned, never hidden module state, so decoding stays pure.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from research.models.attention_kernels import (AttentionMask, attend, logit_scale, resolve_kernel,
                                               segment_attention_mask, segment_mask)
from research.models.config import ModelConfig
from research.models.layers import Dense, Embed, constrain, embedding_init_std

Array = jax.Array
__all__ = ["AttentionMask", "Attention", "LayerCache", "RelativePositionBias", "check_cache_room",
           "init_layer_cache", "rotary_embedding", "segment_attention_mask", "segment_mask"]


class LayerCache(NamedTuple):
    """Keys and values of one attention layer for the S cache slots, heads before slots:
    [B, K, S, Dh] is the layout the attention dots read, so a decoding step reads the cache
    in place instead of transposing all of it (on XLA:CPU that transpose cost as much as
    the attention itself at every step)."""

    k_BKSd: Array
    v_BKSd: Array


def _heads_first(x_BSKd: Array) -> Array:
    return jnp.transpose(x_BSKd, (0, 2, 1, 3))


def _slots_first(x_BKSd: Array) -> Array:
    # The kernels take [B, S, K, Dh]; XLA folds this transpose into their dots.
    return jnp.transpose(x_BKSd, (0, 2, 1, 3))


def init_layer_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> LayerCache:
    shape = (batch, config.kv_heads, max_len, config.dim_per_head)
    dtype = config.compute_dtype if dtype is None else dtype
    return LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def check_cache_room(cache_len: int, cache_index: Array | int, num_tokens: int) -> None:
    """Raise if writing `num_tokens` at slot `cache_index` would run past the cache's end.

    dynamic_update_slice clamps an out-of-range start, so an overflowing write would
    silently overwrite the last slots. The length check is static (trace time); the index
    is checked whenever it is concrete (eager calls). Under jit the index is traced, so the
    caller sizes the cache: generate / beam_search build it as prompt + max_new_tokens.
    """
    if num_tokens > cache_len:
        raise ValueError(f"{num_tokens} tokens do not fit a KV cache of {cache_len} slots; build the cache "
                         f"with max_len >= {num_tokens}.")
    if not isinstance(cache_index, jax.core.Tracer):
        end = int(cache_index) + num_tokens
        if end > cache_len:
            raise ValueError(f"writing {num_tokens} tokens at cache slot {int(cache_index)} needs {end} slots but "
                             f"the KV cache has {cache_len}; build the cache with max_len >= {end}.")


def rotary_embedding(x_BTHd: Array, positions_BT: Array, theta: float) -> Array:
    """RoPE in the rotate-half layout (first half / second half of Dh), as LLaMA in HF."""
    dh = x_BTHd.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    angles_BTf = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    angles_BTd = jnp.concatenate([angles_BTf, angles_BTf], axis=-1)[:, :, None, :]
    x32 = x_BTHd.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * jnp.cos(angles_BTd) + rotated * jnp.sin(angles_BTd)).astype(x_BTHd.dtype)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """T5's bucketing of (key - query) offsets: exact for small, logarithmic for large."""
    bucket = jnp.zeros_like(relative_position)
    n = num_buckets
    if bidirectional:
        n //= 2
        bucket += (relative_position > 0).astype(jnp.int32) * n
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = n // 2
    is_small = distance < max_exact
    # max(distance, 1) keeps log finite; those entries take the is_small branch anyway.
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (n - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, n - 1)
    return bucket + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5 relative position bias [B or 1, H, T, S], one table per stack (shared by its layers).

    Positions are [T] / [S] (shared by the batch) or [B, T] / [B, S] (per row, e.g. packed
    rows whose positions restart at each document); the bias depends only on key - query.
    """

    config: ModelConfig
    bidirectional: bool

    @nn.compact
    def __call__(self, q_positions_T: Array, kv_positions_S: Array) -> Array:
        cfg = self.config
        q_positions_BT, kv_positions_BS = jnp.atleast_2d(q_positions_T), jnp.atleast_2d(kv_positions_S)
        buckets_BTS = relative_position_bucket(
            kv_positions_BS[:, None, :] - q_positions_BT[:, :, None], self.bidirectional,
            cfg.relative_buckets, cfg.relative_max_distance)
        table = Embed(cfg.relative_buckets, cfg.replace(d_model=cfg.num_heads),
                      axes=("relpos_buckets", "heads"), init_std=embedding_init_std(cfg, "relative_bias"),
                      name="embedding")
        bias_BTSH = table(buckets_BTS).astype(jnp.float32)
        return jnp.transpose(bias_BTSH, (0, 3, 1, 2))


class Attention(nn.Module):
    """Self- or cross-attention. Returns (output [B,T,D], updated cache or None)."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x_BTD: Array,
        mask: AttentionMask | Array,
        *,
        kv_BSD: Array | None = None,
        positions_BT: Array | None = None,
        bias_BHTS: Array | None = None,
        cache: LayerCache | None = None,
        cache_index: Array | None = None,
        static_kv: LayerCache | None = None,
        deterministic: bool = True,
    ) -> tuple[Array, LayerCache | None]:
        """Self-attention returns its updated cache (or None). Cross-attention (kv_BSD or
        static_kv given) returns its keys/values, which static_kv takes back on later steps so
        that they are projected once per generation. When the keys' batch is smaller than the
        queries' (beams: W consecutive query rows per source row), the rows are folded into the
        query length instead of copying the source W times; `mask` must then be folded too."""
        cfg = self.config
        h, k, dh = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        if not isinstance(mask, AttentionMask):
            mask = AttentionMask(mask)  # a bare dense mask: only kernels that read dense masks apply
        proj = lambda n, name, scale=1.0: Dense((n, dh), ("embed",), ("heads" if n == h else "kv_heads", "kv"),
                                                cfg, use_bias=cfg.use_bias or cfg.qkv_bias, t5_init_scale=scale,
                                                name=name)
        source_BSD = x_BTD if kv_BSD is None else kv_BSD
        # Unscaled logits (T5) take their 1/sqrt(Dh) in the query's init instead.
        q_BTHd = proj(h, "query", 1.0 if cfg.scale_attention_logits else dh**-0.5)(x_BTD)
        if static_kv is not None:
            k_BSKd, v_BSKd = _slots_first(static_kv.k_BKSd), _slots_first(static_kv.v_BKSd)
        else:
            k_BSKd = proj(k, "key")(source_BSD)
            v_BSKd = proj(k, "value")(source_BSD)
        if cfg.position == "rope" and kv_BSD is None:
            q_BTHd = rotary_embedding(q_BTHd, positions_BT, cfg.rope_theta)
            k_BSKd = rotary_embedding(k_BSKd, positions_BT, cfg.rope_theta)
        # Named for the "minimal" / "offload" remat policies (research/models/layers.py).
        q_BTHd = checkpoint_name(q_BTHd, "query_proj")
        k_BSKd = checkpoint_name(k_BSKd, "key_proj")
        v_BSKd = checkpoint_name(v_BSKd, "value_proj")
        q_BTHd = constrain(q_BTHd, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))

        cross = kv_BSD is not None or static_kv is not None
        new_cache = LayerCache(_heads_first(k_BSKd), _heads_first(v_BSKd)) if cross else None
        if cache is not None:
            # Write this step's keys/values at slots [cache_index, cache_index + T).
            cache_axes = ("cache_batch", "cache_heads", "cache_length", "cache_kv")
            k_BKSd = jax.lax.dynamic_update_slice_in_dim(cache.k_BKSd, _heads_first(k_BSKd).astype(cache.k_BKSd.dtype),
                                                         cache_index, axis=2)
            v_BKSd = jax.lax.dynamic_update_slice_in_dim(cache.v_BKSd, _heads_first(v_BSKd).astype(cache.v_BKSd.dtype),
                                                         cache_index, axis=2)
            new_cache = LayerCache(constrain(k_BKSd, cache_axes), constrain(v_BKSd, cache_axes))
            k_BSKd, v_BSKd = _slots_first(new_cache.k_BKSd), _slots_first(new_cache.v_BKSd)

        b, t = q_BTHd.shape[:2]
        if k_BSKd.shape[0] != b:
            q_BTHd = q_BTHd.reshape(k_BSKd.shape[0], (b // k_BSKd.shape[0]) * t, h, dh)
        dropout_active = cfg.dropout_rate > 0 and not deterministic
        kernel = resolve_kernel(cfg, has_bias=bias_BHTS is not None, has_segments=mask.has_segments,
                                dropout=dropout_active, q_len=q_BTHd.shape[1], kv_len=k_BSKd.shape[1])
        dropout = nn.Dropout(cfg.dropout_rate)
        out_BTHd = attend(kernel, q_BTHd, k_BSKd, v_BSKd, mask, scale=logit_scale(cfg), bias_BHTS=bias_BHTS,
                          dropout=(lambda p: dropout(p, deterministic=deterministic)) if dropout_active else None)
        out_BTHd = out_BTHd.reshape(b, t, h, dh)
        out_BTD = Dense((cfg.d_model,), ("heads", "kv"), ("embed",), cfg, use_bias=cfg.use_bias,
                        name="out")(out_BTHd)
        return checkpoint_name(out_BTD, "attention_out"), new_cache
