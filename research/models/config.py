"""ModelConfig: one frozen, typed description of any model in the zoo.

The three families share most hyper-parameters; the few that belong to one family
(token types and pooler for BERT, relative buckets for T5, RoPE for LLaMA) default to
"off" and are validated in `__post_init__` so that a bad config fails with one line,
before anything is traced or compiled.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Literal

import jax.numpy as jnp

Family = Literal["decoder", "encoder", "encoder_decoder"]
PositionEmbedding = Literal["learned", "rope", "relative"]
Norm = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
# Remat policies (research/models/layers.py remat_policy): what a block keeps for the backward
# pass. none: everything; save_dots: every matmul output; dots_with_no_batch_dims: matmuls
# without batch dims (projections, not attention logits); minimal: only the named q/k/v and
# attention output projections; offload: those names moved to host memory (GPU/TPU);
# full: nothing (the whole block is recomputed).
Remat = Literal["none", "full", "save_dots", "dots_with_no_batch_dims", "minimal", "offload"]
AttentionKernelName = Literal["auto", "xla", "dot_product_attention", "splash"]
# How a Dense layer's backward pass computes its kernel gradient (research/models/layers.py).
DenseWeightGrad = Literal["auto", "autodiff", "activations_lhs"]
# Fields that change only how gradients are computed: never a forward pass, a checkpoint's
# meaning or a cached evaluation. Resume checks and evaluation caches leave them out.
GRADIENT_ONLY_FIELDS = ("dense_weight_grad",)
DType = Literal["float32", "bfloat16", "float16"]
InitScheme = Literal["normal", "t5"]

_CHOICES = {
    "family": Family,
    "position": PositionEmbedding,
    "norm": Norm,
    "norm_placement": NormPlacement,
    "activation": Activation,
    "remat": Remat,
    "attention_kernel": AttentionKernelName,
    "dense_weight_grad": DenseWeightGrad,
    "dtype": DType,
    "param_dtype": DType,
    "init_scheme": InitScheme,
}


# Numeric fields by their annotation (a string: `from __future__ import annotations`).
_NUMBER_FIELDS = {"int": numbers.Integral, "int | None": numbers.Integral, "float": numbers.Real}
_KIND_NAMES = {numbers.Integral: "a whole number", numbers.Real: "a number"}


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the value and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Hyper-parameters of one transformer. Dimension letters follow research/models/__init__.py."""

    name: str = "custom"
    family: Family
    vocab_size: int  # V
    d_model: int  # D
    num_layers: int  # L: decoder layers (decoder, encoder_decoder) or encoder layers (encoder)
    num_heads: int  # H
    d_ff: int  # F
    num_kv_heads: int | None = None  # K; None means K = H (multi-head attention)
    head_dim: int | None = None  # Dh; None means D // H
    num_encoder_layers: int | None = None  # encoder_decoder only; None means L
    max_len: int = 512  # longest sequence; size of the learned position table

    position: PositionEmbedding = "learned"
    rope_theta: float = 10_000.0
    # Mistral-style local attention (decoder-only RoPE models): query t sees key s only when
    # t - sliding_window < s <= t, transformers' Mistral rule (indices in the row, so left
    # padding and packed documents keep their distances). None: full causal attention.
    sliding_window: int | None = None
    relative_buckets: int = 32
    relative_max_distance: int = 128

    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: NormPlacement = "pre"  # post = BERT (norm after each residual add)
    activation: Activation = "gelu"
    gated_mlp: bool = False  # SwiGLU / gated-GELU: two input projections
    use_bias: bool = True
    # Biases on the query, key and value projections alone (Qwen2); use_bias puts them everywhere.
    qkv_bias: bool = False
    scale_attention_logits: bool = True  # T5 folds 1/sqrt(Dh) into its init instead
    tie_embeddings: bool = True  # LM head shares the token embedding
    scale_tied_logits: bool = False  # T5 v1.0: multiply by D**-0.5 before the tied head

    type_vocab_size: int = 0  # BERT token types; 0 = none
    pooler: bool = False  # BERT tanh pooler over the first token
    num_labels: int = 0  # sequence-classification head size; 0 = none
    pad_token_id: int = 0
    decoder_start_token_id: int = 0  # T5 starts decoding with pad

    # From-scratch init. normal: N(0, 0.02) everywhere (GPT-2, BERT, LLaMA). t5: Mesh TF T5,
    # kernels N(0, fan_in^-1/2) (the query also times Dh^-1/2 when logits are unscaled),
    # token embeddings N(0, 1), relative bias N(0, D^-1/2). Imported weights ignore it.
    init_scheme: InitScheme = "normal"

    dropout_rate: float = 0.0
    dtype: DType = "float32"  # activation / compute dtype
    param_dtype: DType = "float32"  # master weights
    scan_layers: bool = False  # nn.scan over layers: one compiled block, params stacked on "layers"
    remat: Remat = "none"  # rematerialization policy of each block
    # research/models/attention_kernels.py; auto = cuDNN on GPU (half precision), splash on
    # TPU, the xla reference einsum otherwise, and wherever a fused kernel cannot run the call.
    attention_kernel: AttentionKernelName = "auto"
    # Kernel gradients of Dense layers. autodiff: JAX's own transpose rule, dW = (dY^T X)^T.
    # activations_lhs: dW = X^T dY with the saved input X as the matmul's left operand
    # (research/models/layers.py says why XLA:CPU runs it faster). Same values up to float32
    # rounding, not the same bits. auto: activations_lhs on CPU without remat, else autodiff.
    dense_weight_grad: DenseWeightGrad = "auto"

    def __post_init__(self):
        # Types first: a config.json holding "2" or null where a count belongs (or 16.0 for a
        # width) gave a TypeError in the checks below, or a model that failed deep in Flax.
        # sliding_window has its own check below.
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), _NUMBER_FIELDS.get(field.type)
            if kind is None or field.name == "sliding_window" or (value is None and field.type.endswith("| None")):
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ConfigError(f"{self.name}: {field.name}={value!r} must be {_KIND_NAMES[kind]}"
                                  f"{' (or None)' if field.type.endswith('| None') else ''}.")
        for field, choice in _CHOICES.items():
            allowed = choice.__args__
            value = getattr(self, field)
            if value not in allowed:
                raise ConfigError(f"{self.name}: {field}={value!r} is not one of {allowed}.")
        for field in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_len", "relative_buckets",
                      "relative_max_distance"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{self.name}: {field}={getattr(self, field)} must be positive.")
        for field in ("head_dim", "num_encoder_layers"):  # None: derived (D // H; num_layers)
            if getattr(self, field) is not None and getattr(self, field) <= 0:
                raise ConfigError(f"{self.name}: {field}={getattr(self, field)} must be positive (or None for "
                                  "the default).")
        for field in ("num_labels", "type_vocab_size"):
            if getattr(self, field) < 0:
                raise ConfigError(f"{self.name}: {field}={getattr(self, field)} must be >= 0 (0: none).")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ConfigError(
                f"{self.name}: num_heads={self.num_heads} does not divide d_model={self.d_model}; "
                "choose a divisor or set head_dim explicitly."
            )
        if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
            raise ConfigError(
                f"{self.name}: num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}; "
                "grouped-query attention needs num_heads to be a multiple of num_kv_heads."
            )
        if self.position == "rope" and self.dim_per_head % 2:
            raise ConfigError(f"{self.name}: RoPE needs an even head_dim, got {self.dim_per_head}.")
        if self.family == "encoder_decoder" and self.position != "relative":
            raise ConfigError(f"{self.name}: encoder_decoder models use position='relative' (T5).")
        if self.family != "encoder_decoder" and self.position == "relative":  # it built no positions at all
            raise ConfigError(f"{self.name}: position='relative' (T5's bucketed bias) is built by encoder_decoder "
                              f"models only; a {self.family} uses 'learned' or 'rope'.")
        if self.family == "encoder_decoder":
            # relative_position_bucket (attention.py) keeps n // 2 exact buckets, with n = relative_buckets
            # in the causal decoder and half of them per direction in the bidirectional encoder, and
            # divides by log(max_distance / exact): 0 exact buckets (relative_buckets < 4) raised
            # ZeroDivisionError, and max_distance <= exact gave NaN logits or negative buckets.
            if self.relative_buckets < 4:
                raise ConfigError(f"{self.name}: relative_buckets={self.relative_buckets} is too few: the encoder's "
                                  "bidirectional bias needs at least 1 exact bucket per direction; use "
                                  "relative_buckets >= 4.")
            exact = self.relative_buckets // 2  # the decoder's; the encoder has half as many
            if self.relative_max_distance <= exact:
                raise ConfigError(f"{self.name}: relative_max_distance={self.relative_max_distance} must exceed the "
                                  f"{exact} exact distances of relative_buckets={self.relative_buckets} (buckets // "
                                  f"2); use relative_max_distance >= {exact + 1}.")
        # What each family builds: T5 blocks are pre-norm; BERT's are post-norm (a pre-norm
        # encoder had no final norm, so its output was not normalised as encode() says).
        required = {"encoder_decoder": "pre", "encoder": "post"}.get(self.family)
        if required and self.norm_placement != required:
            raise ConfigError(f"{self.name}: norm_placement={self.norm_placement!r} is not built for {self.family} "
                              f"models, whose blocks are {required}-norm; set norm_placement={required!r}.")
        if self.family != "encoder" and (self.type_vocab_size or self.pooler):
            raise ConfigError(f"{self.name}: type_vocab_size and pooler belong to encoder (BERT) models.")
        if self.family != "encoder_decoder" and self.scale_tied_logits:  # only T5's head reads it: ignored
            raise ConfigError(f"{self.name}: scale_tied_logits belongs to encoder_decoder (T5 v1.0) models; a "
                              f"{self.family} does not scale its logits, so drop it.")
        if self.sliding_window is not None:
            if isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int) \
                    or self.sliding_window < 1:
                raise ConfigError(f"{self.name}: sliding_window={self.sliding_window!r} must be a positive int "
                                  "(or None for full causal attention).")
            if self.family != "decoder" or self.position != "rope":
                raise ConfigError(f"{self.name}: sliding_window belongs to decoder models with position='rope' "
                                  f"(Mistral), not a {self.family} with position={self.position!r}.")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"{self.name}: dropout_rate={self.dropout_rate} must be in [0, 1).")
        # Both gave all-NaN logits: theta ** (-2i / Dh) of a theta <= 0 is NaN or inf, and a
        # negative eps takes rsqrt below zero wherever the variance is smaller. (`not >`: NaN too.)
        if self.position == "rope" and not self.rope_theta > 0:
            raise ConfigError(f"{self.name}: rope_theta={self.rope_theta} must be positive (RoPE's base, 10000 "
                              "for LLaMA).")
        if not self.norm_eps >= 0:
            raise ConfigError(f"{self.name}: norm_eps={self.norm_eps} must be >= 0 (typically 1e-5 or 1e-6).")
        # Both ids are looked up in the token embedding (padded prompt columns, T5's first decoder
        # input): jnp.take fills a row the table lacks with NaN, so a padded row of a ragged batch
        # generated token 0 at NaN log-probs (transformers refuses such a LLaMA config.json).
        for field in ("pad_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, field) < self.vocab_size:
                raise ConfigError(f"{self.name}: {field}={getattr(self, field)} is not a token of vocab_size="
                                  f"{self.vocab_size}; give an id in [0, {self.vocab_size}), e.g. 0.")

    # Derived sizes, named by their dimension letters.
    @property
    def kv_heads(self) -> int:
        """K: number of key/value heads."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def dim_per_head(self) -> int:
        """Dh: width of one attention head."""
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def encoder_layers(self) -> int:
        return self.num_layers if self.num_encoder_layers is None else self.num_encoder_layers

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    def replace(self, **overrides: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"{self.name}: unknown config field(s) {unknown}.")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
