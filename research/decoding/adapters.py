"""One decoding interface over the decoder-only and encoder-decoder model families.

The search loops (sampling.py, beam_search.py) only ever ask a model four things:
`prepare` its parameters once per generation (outside the token loop), `prefill` the
prompts into a fresh state, `step` one token per row, and `select_rows` of the state (to
copy rows into beams, and to reorder beams after each search step). prefill and step take
what prepare returned. The state is a pytree whose leaves carry the batch on a known axis.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.decoding.prompts import PaddedPrompts, PadSide
from research.models.config import ConfigError
from research.models.decoder import Decoder, DecoderCache, init_decoder_cache
from research.models.layers import einsum_float32_out

Array = jax.Array


class DecoderParams(NamedTuple):
    """A decoder's parameters as its decoding steps read them.

    head_DV: a tied LM head's table transposed to [D, V] in the compute dtype, made once per
    generation; None for untied heads (their kernel is already [D, V]) and for modules that
    are not a research Decoder. Each step's logits read it row-major: against the [V, D]
    embedding, XLA:CPU's batch-8 GPT-2-small LM head took twice as long.
    """

    params: Any
    head_DV: Array | None = None


def tied_logits(hidden_BTD: Array, head_DV: Array) -> Array:
    """Logits of a tied head from its transposed table (Embed.attend's math: float32 out)."""
    return einsum_float32_out("BTD,DV->BTV", hidden_BTD.astype(head_DV.dtype), head_DV)


class DecoderAdapter(NamedTuple):
    """Decoder-only LM (research.models.decoder.Decoder, or any module with its call signature).

    State: the DecoderCache. Prompts are left-padded; the first generated token of example
    b takes position lengths_B[b]. bidirectional_prompt: the prompt is a prefix-LM prefix,
    its tokens attend each other both ways (as the model was trained with prefix_lm).
    """

    model: nn.Module
    pad_side: PadSide = "left"
    bidirectional_prompt: bool = False

    def prepare(self, params: Any) -> DecoderParams:
        config = self.model.config
        if isinstance(self.model, Decoder) and config.tie_embeddings:
            table_VD = nn.unbox(params["token_embed"]["embedding"])  # boxed when init kept logical axes
            return DecoderParams(params, jnp.transpose(table_VD.astype(config.compute_dtype)))
        return DecoderParams(params)

    def _apply(self, prepared: DecoderParams, tokens_BT: Array, **options) -> tuple[Array, DecoderCache]:
        """The model's logits [B, T, V] (float32) and cache, through the prepared head if any."""
        if prepared.head_DV is None:
            logits_BTV, cache = self.model.apply({"params": prepared.params}, tokens_BT, **options)
            return logits_BTV.astype(jnp.float32), cache
        hidden_BTD, cache = self.model.apply({"params": prepared.params}, tokens_BT, return_hidden=True, **options)
        return tied_logits(hidden_BTD, prepared.head_DV), cache

    def prefill(self, prepared: DecoderParams, prompts: PaddedPrompts,
                max_new_tokens: int) -> tuple[Array, DecoderCache, Array]:
        """-> (next-token logits [B, V] in float32, state, position of the first new token [B])."""
        batch, prompt_len = prompts.tokens_BP.shape
        cache = init_decoder_cache(self.model.config, batch, prompt_len + max_new_tokens)
        options = dict(prefix_mask_BT=prompts.segment_ids_BP) if self.bidirectional_prompt else {}
        if isinstance(self.model, Decoder):
            # Left padding puts every prompt's last token in the last column: only its logits are needed.
            options["last_logits_only"] = True
        logits_BPV, cache = self._apply(prepared, prompts.tokens_BP, positions_BT=prompts.positions_BP,
                                        segment_ids_BT=prompts.segment_ids_BP, cache=cache, **options)
        return logits_BPV[:, -1], cache, prompts.lengths_B

    def step(self, prepared: DecoderParams, tokens_B: Array, positions_B: Array,
             cache: DecoderCache) -> tuple[Array, DecoderCache]:
        """Feed one token per row at `positions_B` -> (next-token logits [B, V] float32, state)."""
        logits_B1V, cache = self._apply(prepared, tokens_B[:, None], positions_BT=positions_B[:, None],
                                        segment_ids_BT=jnp.ones_like(tokens_B)[:, None], cache=cache)
        return logits_B1V[:, 0], cache

    def select_rows(self, cache: DecoderCache, rows_R: Array) -> DecoderCache:
        """The state of rows `rows_R` (indices into the batch), e.g. to tile or reorder beams."""
        return _select_cache_rows(cache, rows_R, self.model.config.scan_layers)


class EncoderDecoderState(NamedTuple):
    """The decoder's self-attention cache (rows: one per hypothesis) plus the encoder output
    and its segment ids (rows: one per prompt). The cache also holds the cross-attention
    keys/values, projected once at prefill; W beams of a prompt are W consecutive rows."""

    cache: DecoderCache
    encoded_BSD: Array
    encoder_segment_ids_BS: Array


class EncoderDecoderAdapter(NamedTuple):
    """Encoder-decoder (T5): prompts are the encoder inputs, encoded once and right-padded.

    The decoder starts from config.decoder_start_token_id at position 0, so the first
    generated token takes position 1.
    """

    model: nn.Module
    pad_side: PadSide = "right"

    def prepare(self, params: Any) -> Any:
        return params

    def prefill(self, params: Any, prompts: PaddedPrompts,
                max_new_tokens: int) -> tuple[Array, EncoderDecoderState, Array]:
        from research.models.encoder_decoder import init_encoder_decoder_cache  # lazy: decoder-only users skip T5

        config = self.model.config
        batch = prompts.tokens_BP.shape[0]
        encoded_BSD = self.model.apply({"params": params}, prompts.tokens_BP,
                                       encoder_segment_ids_BS=prompts.segment_ids_BP, method="encode")
        state = EncoderDecoderState(init_encoder_decoder_cache(config, batch, 1 + max_new_tokens), encoded_BSD,
                                    prompts.segment_ids_BP)
        start_B = jnp.full((batch,), config.decoder_start_token_id, jnp.int32)
        logits_BV, state = self.step(params, start_B, jnp.zeros((batch,), jnp.int32), state)
        return logits_BV, state, jnp.ones((batch,), jnp.int32)

    def step(self, params: Any, tokens_B: Array, positions_B: Array,
             state: EncoderDecoderState) -> tuple[Array, EncoderDecoderState]:
        logits_B1V, cache = self.model.apply(
            {"params": params}, state.encoded_BSD, tokens_B[:, None],
            encoder_segment_ids_BS=state.encoder_segment_ids_BS,
            decoder_segment_ids_BT=jnp.ones_like(tokens_B)[:, None], decoder_positions_BT=positions_B[:, None],
            cache=state.cache, method="decode")
        return logits_B1V[:, 0].astype(jnp.float32), state._replace(cache=cache)

    def select_rows(self, state: EncoderDecoderState, rows_R: Array) -> EncoderDecoderState:
        """Rows of the decoder cache only: the encoder side stays one row per prompt, which
        the model's cross-attention shares among a prompt's consecutive rows (rows_R must
        keep each prompt's rows together and in prompt order, as tiling and beam reordering do)."""
        return state._replace(cache=_select_cache_rows(state.cache, rows_R, self.model.config.scan_layers))


def _select_cache_rows(cache: DecoderCache, rows_R: Array, scan_layers: bool) -> DecoderCache:
    # Under scan_layers the per-layer caches are stacked on a leading L axis.
    layer_axis = 1 if scan_layers else 0
    layers = jax.tree.map(lambda x: jnp.take(x, rows_R, axis=layer_axis), cache.layers)
    # Cross-attention keys/values are per prompt, not per row: never gathered.
    return DecoderCache(layers, jnp.take(cache.segment_BS, rows_R, axis=0), cache.index, cache.cross_attention)


Adapter = DecoderAdapter | EncoderDecoderAdapter


def adapter_for(model: nn.Module, bidirectional_prompt: bool = False) -> Adapter:
    """The adapter for `model`, chosen by its config's family."""
    family = model.config.family
    if bidirectional_prompt and family != "decoder":
        raise ConfigError(f"bidirectional_prompt is for prefix-LM decoders; {model.config.name} is {family!r} "
                          "(an encoder-decoder's prompt is its encoder input, already bidirectional).")
    if family == "decoder":
        return DecoderAdapter(model, bidirectional_prompt=bidirectional_prompt)
    if family == "encoder_decoder":
        return EncoderDecoderAdapter(model)
    raise ConfigError(f"{model.config.name} is an {family!r} model; generation needs a decoder or encoder_decoder.")
