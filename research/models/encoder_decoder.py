"""Encoder-decoder language models: T5 (v1.0) and T5 v1.1 as options of one module.

Both: a token embedding shared by encoder, decoder and (when tied) the LM head;
pre-RMSNorm blocks without biases; unscaled attention logits plus a relative position
bias whose table is shared by all layers of a stack (one bidirectional table for the
encoder, one causal table for the decoder; cross-attention has none).
v1.0: ReLU MLP, tied head applied to the decoder output scaled by D**-0.5.
v1.1: gated-GELU (tanh) MLP, untied head ("lm_head").

Parameters (unrolled layout; scan_layers stacks each "*_layers" on a leading axis):
    token_embed, encoder_relative_bias, encoder_layers_{i}, encoder_norm,
    decoder_relative_bias, decoder_layers_{i}, decoder_norm, lm_head (untied only).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.attention import (Attention, AttentionMask, LayerCache, RelativePositionBias, check_cache_room,
                                       segment_attention_mask, segment_mask)
from research.models.config import ConfigError, ModelConfig
from research.models.decoder import DecoderCache, init_decoder_cache
from research.models.layers import Dense, Embed, Mlp, Norm, constrain, embedding_init_std
from research.models.stack import run_stack

Array = jax.Array
ACT_BTD = ("activation_batch", "activation_length", "activation_embed")


def init_encoder_decoder_cache(config: ModelConfig, batch: int, max_len: int) -> DecoderCache:
    """An empty decoder self-attention cache for `batch` rows of up to `max_len` target tokens.

    The first `decode` call with it projects the cross-attention keys/values from
    encoded_BSD and stores them in the returned cache (cross_attention); later calls reuse
    them instead of re-projecting S source tokens per layer at every step.
    """
    return init_decoder_cache(config, batch, max_len)


class EncoderBlock(nn.Module):
    """Bidirectional self-attention + MLP, each pre-RMSNorm with a residual."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BSD: Array, cache: None, mask_BSS: AttentionMask, bias_BHSS: Array) -> tuple[Array, None]:
        cfg = self.config
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
        x_BSD = constrain(x_BSD, ACT_BTD)
        y_BSD, _ = Attention(cfg, name="attention")(Norm(cfg, name="attention_norm")(x_BSD), mask_BSS,
                                                    bias_BHTS=bias_BHSS, deterministic=self.deterministic)
        x_BSD = x_BSD + drop(y_BSD)
        y_BSD = Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x_BSD), deterministic=self.deterministic)
        return x_BSD + drop(y_BSD), cache


class DecoderBlock(nn.Module):
    """Causal self-attention (with KV cache) + cross-attention over the encoder + MLP."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BTD: Array, cache: tuple[LayerCache, LayerCache | None] | None,
                 self_mask_BTS: AttentionMask, self_bias_BHTS: Array, encoded_BSD: Array,
                 cross_mask_BTS: AttentionMask, cache_index: Array | None):
        """cache: (self-attention cache, cross-attention keys/values or None) when decoding."""
        cfg = self.config
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
        self_cache, cross_kv = (None, None) if cache is None else cache
        x_BTD = constrain(x_BTD, ACT_BTD)
        y_BTD, self_cache = Attention(cfg, name="self_attention")(
            Norm(cfg, name="self_attention_norm")(x_BTD), self_mask_BTS, bias_BHTS=self_bias_BHTS, cache=self_cache,
            cache_index=cache_index, deterministic=self.deterministic)
        x_BTD = x_BTD + drop(y_BTD)
        y_BTD, cross_kv = Attention(cfg, name="cross_attention")(
            Norm(cfg, name="cross_attention_norm")(x_BTD), cross_mask_BTS, kv_BSD=encoded_BSD, static_kv=cross_kv,
            deterministic=self.deterministic)
        x_BTD = x_BTD + drop(y_BTD)
        y_BTD = Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x_BTD), deterministic=self.deterministic)
        return x_BTD + drop(y_BTD), (None if cache is None else (self_cache, cross_kv))


class EncoderDecoder(nn.Module):
    """(source tokens [B, S], target tokens [B, T]) -> logits [B, T, V].

    Segment ids: 0 marks padding; equal non-zero ids attend each other, so packed rows
    work, and a target segment attends only the source tokens of the same id (ids default
    to all ones). Positions: index of each token within its segment (default 0..len-1);
    only key - query offsets matter (relative bias).
    """

    config: ModelConfig

    def __call__(self, encoder_tokens_BS: Array, decoder_tokens_BT: Array, *,
                 encoder_segment_ids_BS: Array | None = None, decoder_segment_ids_BT: Array | None = None,
                 encoder_positions_BS: Array | None = None, decoder_positions_BT: Array | None = None,
                 deterministic: bool = True) -> Array:
        """Teacher-forced forward pass -> logits_BTV."""
        return self._run(encoder_tokens_BS, decoder_tokens_BT, None, encoder_segment_ids_BS=encoder_segment_ids_BS,
                         decoder_segment_ids_BT=decoder_segment_ids_BT, encoder_positions_BS=encoder_positions_BS,
                         decoder_positions_BT=decoder_positions_BT, cache=None, deterministic=deterministic)

    def encode(self, encoder_tokens_BS: Array, *, encoder_segment_ids_BS: Array | None = None,
               encoder_positions_BS: Array | None = None, deterministic: bool = True) -> Array:
        """Source tokens -> encoded_BSD (after the final encoder norm)."""
        return self._run(encoder_tokens_BS, None, None, encoder_segment_ids_BS=encoder_segment_ids_BS,
                         decoder_segment_ids_BT=None, encoder_positions_BS=encoder_positions_BS,
                         decoder_positions_BT=None, cache=None, deterministic=deterministic)

    def decode(self, encoded_BSD: Array, decoder_tokens_BT: Array, *, encoder_segment_ids_BS: Array | None = None,
               decoder_segment_ids_BT: Array | None = None, decoder_positions_BT: Array | None = None,
               cache: DecoderCache | None = None, deterministic: bool = True):
        """Target tokens over `encoded_BSD` -> logits_BTV, or (logits_BTV, new cache) given a cache.

        With a cache (init_encoder_decoder_cache), tokens fill slots [cache.index, cache.index + T)
        and self-attention offsets are slot offsets, which equal position offsets within
        each contiguous segment; decoder_positions_BT is then not needed and is ignored.
        encoded_BSD may have fewer rows than the targets: W consecutive target rows (beams)
        per encoder row, so beams never copy the encoder output.
        """
        return self._run(None, decoder_tokens_BT, encoded_BSD, encoder_segment_ids_BS=encoder_segment_ids_BS,
                         decoder_segment_ids_BT=decoder_segment_ids_BT, encoder_positions_BS=None,
                         decoder_positions_BT=decoder_positions_BT, cache=cache, deterministic=deterministic)

    @nn.compact
    def _run(self, encoder_tokens_BS, decoder_tokens_BT, encoded_BSD, *, encoder_segment_ids_BS,
             decoder_segment_ids_BT, encoder_positions_BS, decoder_positions_BT, cache, deterministic):
        # One compact method holds every submodule so that encode / decode / __call__ share
        # one flat parameter tree; the public methods pick which half runs.
        cfg = self.config
        if cfg.family != "encoder_decoder":
            raise ConfigError(f"{cfg.name}: EncoderDecoder needs family='encoder_decoder', got {cfg.family!r}; "
                              "use research.models.build_model(config).")
        token_embed = Embed(cfg.vocab_size, cfg, init_std=embedding_init_std(cfg, "tokens"), name="token_embed")
        source = encoder_tokens_BS if encoder_tokens_BS is not None else encoded_BSD
        if encoder_segment_ids_BS is None:
            encoder_segment_ids_BS = jnp.ones(source.shape[:2], jnp.int32)
        if encoder_tokens_BS is not None:
            encoded_BSD = self._encode(token_embed, encoder_tokens_BS, encoder_segment_ids_BS, encoder_positions_BS,
                                       deterministic)
        if decoder_tokens_BT is None:
            return encoded_BSD
        return self._decode(token_embed, encoded_BSD, decoder_tokens_BT, encoder_segment_ids_BS,
                            decoder_segment_ids_BT, decoder_positions_BT, cache, deterministic)

    @nn.nowrap
    def _encode(self, token_embed: Embed, tokens_BS: Array, segment_ids_BS: Array, positions_BS: Array | None,
                deterministic: bool) -> Array:
        cfg = self.config
        s = tokens_BS.shape[1]
        if positions_BS is None:
            positions_BS = jnp.arange(s, dtype=jnp.int32)
        bias_BHSS = RelativePositionBias(cfg, bidirectional=True, name="encoder_relative_bias")(positions_BS,
                                                                                                 positions_BS)
        mask_BSS = segment_attention_mask(segment_ids_BS, segment_ids_BS, causal=False)
        x_BSD = nn.Dropout(cfg.dropout_rate)(token_embed(tokens_BS), deterministic=deterministic)
        x_BSD, _ = run_stack(EncoderBlock, cfg, cfg.encoder_layers, x_BSD, None, mask_BSS, bias_BHSS,
                             deterministic=deterministic, name="encoder_layers")
        x_BSD = Norm(cfg, name="encoder_norm")(x_BSD)
        return nn.Dropout(cfg.dropout_rate)(x_BSD, deterministic=deterministic)

    @nn.nowrap
    def _decode(self, token_embed: Embed, encoded_BSD: Array, tokens_BT: Array, encoder_segment_ids_BS: Array,
                segment_ids_BT: Array | None, positions_BT: Array | None, cache: DecoderCache | None,
                deterministic: bool):
        cfg = self.config
        b, t = tokens_BT.shape
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)
        relative_bias = RelativePositionBias(cfg, bidirectional=False, name="decoder_relative_bias")
        source_rows = encoder_segment_ids_BS.shape[0]
        if b % source_rows:
            raise ValueError(f"{b} decoder rows cannot share {source_rows} encoder rows; give one encoder row per "
                             "decoder row, or W consecutive decoder rows (beams) per encoder row.")
        # Beams: W consecutive decoder rows per encoder row attend it as one row of W * T queries.
        cross_q_segment = segment_ids_BT.reshape(source_rows, (b // source_rows) * t)
        cross_mask_BTS = segment_attention_mask(cross_q_segment, encoder_segment_ids_BS, causal=False)
        x_BTD = nn.Dropout(cfg.dropout_rate)(token_embed(tokens_BT), deterministic=deterministic)

        if cache is None:
            if positions_BT is None:
                positions_BT = jnp.arange(t, dtype=jnp.int32)
            self_mask_BTT = segment_attention_mask(segment_ids_BT, segment_ids_BT, causal=True)
            x_BTD, _ = run_stack(DecoderBlock, cfg, cfg.num_layers, x_BTD, None, self_mask_BTT,
                                 relative_bias(positions_BT, positions_BT), encoded_BSD, cross_mask_BTS, None,
                                 deterministic=deterministic, name="decoder_layers")
            new_cache = None
        else:
            max_len = cache.segment_BS.shape[1]
            check_cache_room(max_len, cache.index, t)
            slots_S = jnp.arange(max_len, dtype=jnp.int32)
            q_slots_T = cache.index + jnp.arange(t, dtype=jnp.int32)
            segment_BS = jax.lax.dynamic_update_slice_in_dim(cache.segment_BS, segment_ids_BT.astype(jnp.int32),
                                                             cache.index, axis=1)
            # Earlier-or-equal slots of the same segment; empty slots hold segment 0.
            self_mask_BTS = AttentionMask(segment_mask(segment_ids_BT, segment_BS, causal=False) & (
                slots_S[None, None, :] <= q_slots_T[None, :, None]))
            cross = cache.cross_attention
            if cfg.scan_layers:
                layer_caches = (cache.layers, cross)
            else:
                layer_caches = [(c, None if cross is None else cross[i]) for i, c in enumerate(cache.layers)]
            x_BTD, layer_caches = run_stack(DecoderBlock, cfg, cfg.num_layers, x_BTD, layer_caches, self_mask_BTS,
                                            relative_bias(q_slots_T, slots_S), encoded_BSD, cross_mask_BTS,
                                            cache.index, deterministic=deterministic, name="decoder_layers")
            if cfg.scan_layers:
                layers, cross = layer_caches
            else:
                layers, cross = [c[0] for c in layer_caches], [c[1] for c in layer_caches]
            new_cache = DecoderCache(layers, segment_BS, cache.index + t, cross)
            if isinstance(cache.index, jax.core.Tracer):  # as decoder.py: a clamped write under jit is NaN
                x_BTD = jnp.where(cache.index + t > max_len, jnp.nan, x_BTD).astype(x_BTD.dtype)

        x_BTD = Norm(cfg, name="decoder_norm")(x_BTD)
        x_BTD = nn.Dropout(cfg.dropout_rate)(x_BTD, deterministic=deterministic)
        if cfg.tie_embeddings:
            if cfg.scale_tied_logits:
                # Mesh TF T5 rescales before the tied head so logits stay O(1) with N(0, 1) embeddings.
                x_BTD = x_BTD * cfg.d_model**-0.5
            logits_BTV = token_embed.attend(x_BTD)
        else:
            logits_BTV = Dense((cfg.vocab_size,), ("embed",), ("vocab",), cfg, use_bias=False, float32_output=True,
                               name="lm_head")(x_BTD)
        logits_BTV = constrain(logits_BTV, ("activation_batch", "activation_length", "activation_vocab"))
        return logits_BTV if cache is None else (logits_BTV, new_cache)
