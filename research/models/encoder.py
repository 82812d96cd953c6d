"""Encoder-only models (BERT): bidirectional post-LayerNorm transformer with task heads.

Body (= Hugging Face `BertModel` without its pooler): word + learned position + token-type
embeddings, LayerNorm ("embed_norm"), dropout, then L post-norm blocks ("layers") that see
the whole sequence. Heads, each under its own top-level parameter key so that sizing and
checkpoint conversion can pick them apart:

    pooler       dense + tanh over token 0 (config.pooler); part of BertModel
    mlm_head     dense + activation + LayerNorm, then logits against the tied word
                 embeddings (or its own "decoder" when not tied) plus an output bias
    classifier   dense to config.num_labels over the pooled output (config.num_labels > 0)

`model.init(rng, tokens_BT)` creates every head the config declares, so one init serves
pre-training and fine-tuning; `model.init(rng, tokens_BT, method="pool")` creates exactly
the BertModel parameters.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models.attention import segment_attention_mask
from research.models.config import ConfigError, ModelConfig
from research.models.decoder import ACT_BTD, DecoderBlock
from research.models.layers import Dense, Embed, Norm, activation_fn, constrain, einsum_float32_out, zeros_init
from research.models.stack import run_stack

Array = jax.Array
HEAD_PARAMS = ("mlm_head", "classifier")  # top-level param keys outside BertModel

# A [D, D] kernel cannot name "embed" twice (one mesh axis per array); its output takes the
# tensor-parallel "mlp" axis, as an MLP input projection does.
_SQUARE_AXES = (("embed",), ("mlp",))


class MlmHead(nn.Module):
    """hidden [B, T, D] -> masked-LM logits [B, T, V]: transform, then the (tied) decoder + bias."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BTD: Array, token_embedding_VD: Array) -> Array:
        cfg = self.config
        h_BTD = Dense((cfg.d_model,), *_SQUARE_AXES, cfg, use_bias=True, name="transform")(x_BTD)
        # Back on the activation layout before the activation: left on the kernel's "mlp" output axis,
        # XLA's partitioner miscompiled the backward pass on a data x fsdp x tensor mesh (2, 2, 2): a
        # one-step gradient off by up to 99% relative in every layer, the loss right (audit repro:
        # sum(sin(einsum(gelu(x @ W), E))) alone shows it, 0.11 relative in dW).
        h_BTD = constrain(h_BTD, ACT_BTD)
        h_BTD = Norm(cfg, name="transform_norm")(activation_fn(cfg.activation)(h_BTD))
        if cfg.tie_embeddings:
            logits_BTV = einsum_float32_out("BTD,VD->BTV", h_BTD, token_embedding_VD.astype(cfg.compute_dtype))
        else:
            logits_BTV = Dense((cfg.vocab_size,), ("embed",), ("vocab",), cfg, use_bias=False, float32_output=True,
                               name="decoder")(h_BTD)
        bias_V = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), cfg.weight_dtype)
        logits_BTV = logits_BTV + bias_V.astype(jnp.float32)
        return constrain(logits_BTV, ("activation_batch", "activation_length", "activation_vocab"))


class Encoder(nn.Module):
    """tokens [B, T] -> MLM logits [B, T, V]; `encode`, `pool`, `classify` give the other outputs.

    All methods take the same inputs:
      token_type_ids_BT: sentence A / B ids in [0, type_vocab_size); default all 0.
      positions_BT: index into the learned position table; default 0..T-1 in every row.
      segment_ids_BT: 0 = padding (attends nowhere, is attended by no one); tokens with equal
        non-zero ids attend each other, so packed rows never mix documents. Default all 1.
      deterministic: False enables dropout (needs a "dropout" rng).
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        if cfg.family != "encoder":
            raise ConfigError(f"{cfg.name}: Encoder needs family='encoder', got {cfg.family!r}.")
        if cfg.position != "learned":
            raise ConfigError(f"{cfg.name}: Encoder (BERT) uses position='learned', got {cfg.position!r}.")
        self.token_embed = Embed(cfg.vocab_size, cfg)
        self.position_embed = Embed(cfg.max_len, cfg, axes=("positions", "embed"))
        if cfg.type_vocab_size:
            self.token_type_embed = Embed(cfg.type_vocab_size, cfg, axes=("token_types", "embed"))
        self.embed_norm = Norm(cfg)
        if cfg.pooler:
            self.pooler = Dense((cfg.d_model,), *_SQUARE_AXES, cfg, use_bias=True)
        self.mlm_head = MlmHead(cfg)
        if cfg.num_labels:
            self.classifier_dropout = nn.Dropout(cfg.dropout_rate)
            self.classifier = Dense((cfg.num_labels,), ("embed",), ("classes",), cfg, use_bias=True)

    def __call__(self, tokens_BT: Array, *, token_type_ids_BT: Array | None = None,
                 positions_BT: Array | None = None, segment_ids_BT: Array | None = None,
                 deterministic: bool = True) -> Array:
        """Masked-LM logits [B, T, V]."""
        x_BTD = self.encode(tokens_BT, token_type_ids_BT=token_type_ids_BT, positions_BT=positions_BT,
                            segment_ids_BT=segment_ids_BT, deterministic=deterministic)
        if self.is_initializing():
            # Create the pooler and classifier too, so one init holds every declared head.
            if self.config.pooler:
                pooled_BD = self._pool_hidden(x_BTD)
                if self.config.num_labels:
                    self._classify_pooled(pooled_BD, deterministic)
        return self.mlm_head(x_BTD, self.token_embed.embedding)

    @nn.compact
    def encode(self, tokens_BT: Array, *, token_type_ids_BT: Array | None = None,
               positions_BT: Array | None = None, segment_ids_BT: Array | None = None,
               deterministic: bool = True) -> Array:
        """Final hidden states [B, T, D] (post-norm, so already normalised)."""
        cfg = self.config
        b, t = tokens_BT.shape
        if t > cfg.max_len:
            raise ValueError(f"{cfg.name}: sequence length {t} exceeds max_len={cfg.max_len}; "
                             "truncate the input or use a config with a larger max_len.")
        if token_type_ids_BT is not None and not cfg.type_vocab_size:
            raise ValueError(f"{cfg.name}: token_type_ids_BT given but type_vocab_size=0; drop them or "
                             "set type_vocab_size.")
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((b, t), jnp.int32)

        x_BTD = self.token_embed(tokens_BT) + self.position_embed(positions_BT)
        if cfg.type_vocab_size:
            if token_type_ids_BT is None:
                token_type_ids_BT = jnp.zeros((b, t), jnp.int32)
            else:
                _check_token_types(cfg, token_type_ids_BT)
            x_BTD = x_BTD + self.token_type_embed(token_type_ids_BT)
        x_BTD = self.embed_norm(x_BTD)
        x_BTD = nn.Dropout(cfg.dropout_rate)(x_BTD, deterministic=deterministic)
        x_BTD = constrain(x_BTD, ACT_BTD)

        mask_BTS = segment_attention_mask(segment_ids_BT, segment_ids_BT, causal=False)
        # DecoderBlock only sees the mask it is given: with a bidirectional mask and
        # norm_placement="post" it is exactly a BERT layer.
        x_BTD, _ = run_stack(DecoderBlock, cfg, cfg.num_layers, x_BTD, None, mask_BTS, positions_BT, None,
                             deterministic=deterministic, name="layers")
        return x_BTD

    def pool(self, tokens_BT: Array, *, token_type_ids_BT: Array | None = None,
             positions_BT: Array | None = None, segment_ids_BT: Array | None = None,
             deterministic: bool = True) -> Array:
        """Pooled sequence representation [B, D]: tanh(dense(hidden of token 0))."""
        self._check_pooler()
        x_BTD = self.encode(tokens_BT, token_type_ids_BT=token_type_ids_BT, positions_BT=positions_BT,
                            segment_ids_BT=segment_ids_BT, deterministic=deterministic)
        return self._pool_hidden(x_BTD)

    def classify(self, tokens_BT: Array, *, token_type_ids_BT: Array | None = None,
                 positions_BT: Array | None = None, segment_ids_BT: Array | None = None,
                 deterministic: bool = True) -> Array:
        """Sequence-classification logits [B, C] with C = config.num_labels."""
        cfg = self.config
        if not cfg.num_labels:
            raise ConfigError(f"{cfg.name}: classify needs num_labels > 0, got {cfg.num_labels}; "
                              "set num_labels in the config.")
        pooled_BD = self.pool(tokens_BT, token_type_ids_BT=token_type_ids_BT, positions_BT=positions_BT,
                              segment_ids_BT=segment_ids_BT, deterministic=deterministic)
        return self._classify_pooled(pooled_BD, deterministic)

    def _check_pooler(self) -> None:
        cfg = self.config
        if not cfg.pooler:
            raise ConfigError(f"{cfg.name}: this encoder has no pooler (pooler=False); set pooler=True "
                              "or use `encode` and pool the hidden states yourself.")

    def _pool_hidden(self, x_BTD: Array) -> Array:
        return jnp.tanh(self.pooler(x_BTD[:, 0]))

    def _classify_pooled(self, pooled_BD: Array, deterministic: bool) -> Array:
        return self.classifier(self.classifier_dropout(pooled_BD, deterministic=deterministic))


def _check_token_types(cfg: ModelConfig, token_type_ids_BT: Array) -> None:
    """Raise if a token type id falls outside the type table: jnp.take would read it as NaN,
    which spreads to every logit (transformers raises IndexError). Checked when the ids are
    concrete (eager calls); under jit they are traced and the caller keeps them in range."""
    if isinstance(token_type_ids_BT, jax.core.Tracer):
        return
    ids = np.asarray(token_type_ids_BT)
    bad = ids[(ids < 0) | (ids >= cfg.type_vocab_size)]
    if bad.size:
        raise ValueError(f"{cfg.name}: token_type_ids_BT holds {int(bad.flat[0])}, outside the token type table "
                         f"(type_vocab_size={cfg.type_vocab_size}, ids 0..{cfg.type_vocab_size - 1}); pass type ids "
                         f"below {cfg.type_vocab_size}.")
