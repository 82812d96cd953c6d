"""Decoder-only language models: GPT-2 style and LLaMA style as options of one module.

GPT-2: learned positions, pre-LayerNorm with biases, GELU (tanh), tied embeddings.
LLaMA: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied LM head, no biases.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.attention import (Attention, AttentionMask, LayerCache, check_cache_room, init_layer_cache,
                                       segment_attention_mask, segment_mask)
from research.models.attention_kernels import causal_window_mask
from research.models.config import ConfigError, ModelConfig
from research.models.layers import Dense, Embed, Mlp, Norm, constrain, embedding_init_std
from research.models.stack import run_stack, stack_caches

Array = jax.Array
ACT_BTD = ("activation_batch", "activation_length", "activation_embed")


class DecoderCache(NamedTuple):
    """Decoding state: per-layer keys/values, the segment id held in each of the S slots
    (0 = empty or padding), and the next slot to write."""

    layers: Any  # list[LayerCache], or one LayerCache stacked on L under scan_layers
    segment_BS: Array
    index: Array  # int32 scalar
    # Encoder-decoder only: cross-attention keys/values per layer (same layout as `layers`),
    # projected from the encoder output at the first decoding step and reused after it.
    # They are per source row, so selecting cache rows (beams) leaves them alone.
    cross_attention: Any = None


def init_decoder_cache(config: ModelConfig, batch: int, max_len: int) -> DecoderCache:
    """An empty cache for `batch` sequences of up to `max_len` tokens in total."""
    layers = [init_layer_cache(config, batch, max_len) for _ in range(config.num_layers)]
    if config.scan_layers:
        layers = stack_caches(layers)
    return DecoderCache(layers, jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((), jnp.int32))


class DecoderBlock(nn.Module):
    """One causal self-attention + MLP block, pre- or post-norm."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD: Array, cache: LayerCache | None, mask_BTS: AttentionMask, positions_BT: Array,
                 cache_index: Array | None) -> tuple[Array, LayerCache | None]:
        cfg = self.config
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
        attention = Attention(cfg, name="attention")
        mlp = Mlp(cfg, name="mlp")
        attention_norm, mlp_norm = Norm(cfg, name="attention_norm"), Norm(cfg, name="mlp_norm")
        x_BTD = constrain(x_BTD, ACT_BTD)
        if cfg.norm_placement == "pre":
            y_BTD, cache = attention(attention_norm(x_BTD), mask_BTS, positions_BT=positions_BT, cache=cache,
                                     cache_index=cache_index, deterministic=self.deterministic)
            x_BTD = x_BTD + drop(y_BTD)
            x_BTD = x_BTD + drop(mlp(mlp_norm(x_BTD), deterministic=self.deterministic))
        else:
            y_BTD, cache = attention(x_BTD, mask_BTS, positions_BT=positions_BT, cache=cache,
                                     cache_index=cache_index, deterministic=self.deterministic)
            x_BTD = attention_norm(x_BTD + drop(y_BTD))
            x_BTD = mlp_norm(x_BTD + drop(mlp(x_BTD, deterministic=self.deterministic)))
        return x_BTD, cache


class Decoder(nn.Module):
    """tokens [B, T] -> logits [B, T, V]; with `cache`, returns (logits, new cache).

    segment_ids_BT: 0 marks padding; packed rows use 1, 2, ... per document so attention
    never crosses documents. positions_BT: position of each token within its document;
    by default 0.. T-1 (after the cache's tokens, with a cache), which learned positions
    refuse (ValueError) past max_len - 1.
    prefix_mask_BT: nonzero on tokens of a prefix-LM prefix, which attend to each other
    bidirectionally (within their document); the rest stays causal. With a cache, the
    prefix tokens of one call (a prompt's prefill) attend each other both ways.
    last_logits_only: logits of the last position only ([B, 1, V]): a prefill needs no more.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT: Array, *, positions_BT: Array | None = None,
                 segment_ids_BT: Array | None = None, prefix_mask_BT: Array | None = None,
                 cache: DecoderCache | None = None,
                 deterministic: bool = True, return_hidden: bool = False, last_logits_only: bool = False):
        cfg = self.config
        b, t = tokens_BT.shape
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)
        if prefix_mask_BT is not None and cfg.sliding_window is not None:
            # transformers has no windowed prefix LM to match: refuse rather than invent one.
            raise ConfigError(f"{cfg.name}: prefix_mask_BT (prefix LM) is not supported with sliding_window="
                              f"{cfg.sliding_window}; drop the prefix mask or use a config without a window.")
        if positions_BT is None:
            start = 0 if cache is None else cache.index
            if cfg.position == "learned":
                _check_position_room(cfg, start, t)
            positions_BT = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))

        token_embed = Embed(cfg.vocab_size, cfg, init_std=embedding_init_std(cfg, "tokens"), name="token_embed")
        x_BTD = token_embed(tokens_BT)
        if cfg.position == "learned":
            x_BTD = x_BTD + Embed(cfg.max_len, cfg, axes=("positions", "embed"), name="position_embed")(positions_BT)
        x_BTD = nn.Dropout(cfg.dropout_rate)(x_BTD, deterministic=deterministic)

        if cache is None:
            mask_BTS = segment_attention_mask(segment_ids_BT, segment_ids_BT, causal=True, window=cfg.sliding_window)
            if prefix_mask_BT is not None:
                # Not expressible as segments + causal: kernels that need that form fall back.
                prefix_BT = prefix_mask_BT != 0
                both_in_prefix_BTS = segment_mask(segment_ids_BT, segment_ids_BT, causal=False) & (
                    prefix_BT[:, :, None] & prefix_BT[:, None, :])
                mask_BTS = AttentionMask(mask_BTS.dense_BTS | both_in_prefix_BTS)
            x_BTD, _ = run_stack(DecoderBlock, cfg, cfg.num_layers, x_BTD, None, mask_BTS, positions_BT, None,
                                 deterministic=deterministic, name="layers")
            new_cache = None
        else:
            check_cache_room(cache.segment_BS.shape[1], cache.index, t)
            slots_S = jnp.arange(cache.segment_BS.shape[1])
            segment_BS = jax.lax.dynamic_update_slice_in_dim(cache.segment_BS, segment_ids_BT, cache.index, axis=1)
            dense_BTS = _causal_segment_mask(segment_ids_BT, segment_BS, cache.index + jnp.arange(t), slots_S,
                                             cfg.sliding_window)
            if prefix_mask_BT is not None:
                # Only this call's own prefix tokens (slots [index, index + T)) are attended both ways.
                prefix_BT = (prefix_mask_BT != 0) & (segment_ids_BT != 0)
                prefix_BS = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(segment_BS, bool), prefix_BT,
                                                                cache.index, axis=1)
                dense_BTS |= (segment_ids_BT[:, :, None] == segment_BS[:, None, :]) & (
                    prefix_BT[:, :, None] & prefix_BS[:, None, :])
            mask_BTS = AttentionMask(dense_BTS)
            x_BTD, layers = run_stack(DecoderBlock, cfg, cfg.num_layers, x_BTD, cache.layers, mask_BTS,
                                      positions_BT, cache.index, deterministic=deterministic, name="layers")
            new_cache = DecoderCache(layers, segment_BS, cache.index + t)

        if last_logits_only:
            x_BTD = x_BTD[:, -1:]
        if cache is not None and isinstance(cache.index, jax.core.Tracer):
            # Under jit check_cache_room cannot see the index: an overflowing write lands on the last
            # slot (dynamic_update_slice clamps) and gave finite, wrong logits. NaN instead (after the
            # slice: a prefill pays for the positions it returns only).
            overflow = cache.index + t > cache.segment_BS.shape[1]
            x_BTD = jnp.where(overflow, jnp.nan, x_BTD).astype(x_BTD.dtype)
        if cfg.norm_placement == "pre":
            x_BTD = Norm(cfg, name="final_norm")(x_BTD)
        if return_hidden:
            return x_BTD if cache is None else (x_BTD, new_cache)
        if cfg.tie_embeddings:
            logits_BTV = token_embed.attend(x_BTD)
        else:
            logits_BTV = Dense((cfg.vocab_size,), ("embed",), ("vocab",), cfg, use_bias=False, float32_output=True,
                               name="lm_head")(x_BTD)
        logits_BTV = constrain(logits_BTV, ("activation_batch", "activation_length", "activation_vocab"))
        return logits_BTV if cache is None else (logits_BTV, new_cache)


def _check_position_room(cfg: ModelConfig, start: Array | int, t: int) -> None:
    """Raise if positions start .. start + t - 1 run past the learned position table.

    Out-of-range rows of the table read as NaN (jnp.take's fill), which would spread to every
    logit. The length check is static (trace time, no runtime cost); the start (a cache index)
    is checked when concrete, as check_cache_room does. Explicit positions_BT are the
    caller's to keep below max_len (generate checks its prompts and max_new_tokens)."""
    end = t if isinstance(start, int) else t + (0 if isinstance(start, jax.core.Tracer) else int(start))
    if end > cfg.max_len:
        raise ValueError(f"{cfg.name}: positions up to {end - 1} exceed the learned position table "
                         f"(max_len={cfg.max_len}, positions 0..{cfg.max_len - 1}); truncate the input to "
                         f"{cfg.max_len} tokens or use a config with a larger max_len.")


def _causal_segment_mask(q_segment_BT: Array, kv_segment_BS: Array, q_slot_T: Array, kv_slot_S: Array,
                         window: int | None = None) -> Array:
    """Attend to earlier-or-equal slots of the same (non-padding) segment, the last `window`
    slots only when set. Slots are written in order (prompts left-padded), so slot distance
    is token distance, as the full forward's index distance is."""
    same = (q_segment_BT[:, :, None] == kv_segment_BS[:, None, :]) & (kv_segment_BS[:, None, :] != 0)
    return same & causal_window_mask(q_slot_T, kv_slot_S, window)[None]
