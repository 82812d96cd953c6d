"""T5 / T5 v1.1 <-> Hugging Face T5ForConditionalGeneration (config.json and state dict).

One table (`_weight_map`) lists every tensor as (HF key, our param path, how to convert, HF shape),
and both directions read it, so import and export cannot drift apart.

Tied heads: transformers < 5 ties `lm_head` to `shared` and scales the decoder output by
D**-0.5 exactly when tie_word_embeddings (v1.0), and unties without scaling when it is false
(v1.1). transformers 5 always writes tie_word_embeddings=true and records the scaling as
scale_decoder_outputs; when that key is present we read it as the scaling. Like
transformers 5, we load an lm_head.weight that differs from shared.weight untied whatever
tie_word_embeddings says (`config_for_weights`), so a v1.1 model re-saved by transformers 5
(tie_word_embeddings=true, scale_decoder_outputs=false, its own lm_head) loads untied.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from research.models.config import ConfigError, ModelConfig
from research.models.hf import (ACTIVATION_TO_HF, CheckpointError, check_convertible, check_tied_head, hf_activation,
                                model_layout, unrolled_layout, untie_distinct_head)

ARCHITECTURE = "T5ForConditionalGeneration"
LAYER_NAMES = ("encoder_layers", "decoder_layers")
# Copies of shared.weight that HF state dicts carry; read nothing from them.
_SHARED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Old checkpoints carry this tensor although HF never uses it (cross-attention has no bias).
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def config_from_hf(hf_config: dict) -> ModelConfig:
    """A T5ForConditionalGeneration config.json dict -> ModelConfig."""
    model_type = hf_config.get("model_type", "t5")
    if model_type != "t5":
        raise ConfigError(f"model_type={model_type!r} is not 't5'; pick the converter of that architecture.")
    if not hf_config.get("is_encoder_decoder", True):
        raise ConfigError("t5: is_encoder_decoder=false (T5EncoderModel) is not supported; "
                          "only T5ForConditionalGeneration checkpoints are.")
    proj = hf_config.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ConfigError(f"t5: feed_forward_proj={proj!r} is not 'ACT' or 'gated-ACT' (e.g. 'relu', 'gated-gelu').")
    # HF maps "gated-gelu" to the tanh approximation (gelu_new) for backwards compatibility.
    activation = "gelu_tanh" if proj == "gated-gelu" else hf_activation(parts[-1], "t5")
    tied = bool(hf_config.get("tie_word_embeddings", True))
    scaled = bool(hf_config.get("scale_decoder_outputs", tied))
    if scaled and not tied:
        raise ConfigError("t5: scale_decoder_outputs=true with an untied lm_head is not supported; "
                          "only v1.0 (tied, scaled) and v1.1 (untied or tied, unscaled) heads are.")
    num_layers = hf_config.get("num_layers", 6)
    return ModelConfig(
        name=hf_config.get("_name_or_path") or "hf-t5",
        family="encoder_decoder",
        vocab_size=hf_config.get("vocab_size", 32128),
        d_model=hf_config.get("d_model", 512),
        num_layers=hf_config.get("num_decoder_layers") or num_layers,
        num_encoder_layers=num_layers,
        num_heads=hf_config.get("num_heads", 8),
        head_dim=hf_config.get("d_kv", 64),
        d_ff=hf_config.get("d_ff", 2048),
        max_len=hf_config.get("n_positions", 512),
        position="relative",
        relative_buckets=hf_config.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf_config.get("relative_attention_max_distance", 128),
        norm="rmsnorm",
        norm_eps=hf_config.get("layer_norm_epsilon", 1e-6),
        activation=activation,
        gated_mlp=gated,
        use_bias=False,
        scale_attention_logits=False,
        init_scheme="t5",
        tie_embeddings=tied,
        scale_tied_logits=scaled,
        pad_token_id=hf_config.get("pad_token_id", 0) or 0,
        decoder_start_token_id=hf_config.get("decoder_start_token_id", 0) or 0,
        dropout_rate=float(hf_config.get("dropout_rate", 0.1)),
    )


def config_for_weights(config: ModelConfig, state_dict: dict[str, np.ndarray]) -> ModelConfig:
    """`config` untied when the weights store an lm_head.weight other than shared.weight."""
    config = untie_distinct_head(config, state_dict, "lm_head.weight", "shared.weight")
    if config.scale_tied_logits and not config.tie_embeddings:
        # transformers 5 would scale the decoder output, then apply the distinct head; we cannot.
        raise ConfigError("t5: lm_head.weight differs from shared.weight (an untied head) but config.json scales the "
                          "decoder output (scale_decoder_outputs, or tie_word_embeddings without it); a scaled "
                          "untied head is not supported: if the model is T5 v1.1, set scale_decoder_outputs=false.")
    return config


def config_to_hf(config: ModelConfig) -> dict:
    """ModelConfig -> config.json dict for T5ForConditionalGeneration."""
    check_convertible(config, "T5", dict(family="encoder_decoder", position="relative", norm="rmsnorm",
                                         norm_placement="pre", use_bias=False, qkv_bias=False,
                                         scale_attention_logits=False,
                                         num_kv_heads=None if config.num_kv_heads is None else config.num_heads))
    if config.scale_tied_logits and not config.tie_embeddings:
        raise ConfigError(f"{config.name}: scale_tied_logits=True needs tie_embeddings=True to be expressed as T5.")
    if config.gated_mlp and config.activation == "gelu_tanh":
        proj = "gated-gelu"
    elif config.gated_mlp and config.activation == "gelu":
        # transformers reads "gated-gelu" as the tanh GELU (gelu_new); gelu_python is its exact (erf) one.
        proj = "gated-gelu_python"
    else:
        proj = ("gated-" if config.gated_mlp else "") + ACTIVATION_TO_HF[config.activation]
    return {
        "model_type": "t5",
        "architectures": [ARCHITECTURE],
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.dim_per_head,
        "d_ff": config.d_ff,
        "num_layers": config.encoder_layers,
        "num_decoder_layers": config.num_layers,
        "num_heads": config.num_heads,
        "n_positions": config.max_len,
        "relative_attention_num_buckets": config.relative_buckets,
        "relative_attention_max_distance": config.relative_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": proj,
        "is_encoder_decoder": True,
        # transformers < 5 reads both tying and scaling from this key; 5 reads the scaling below.
        "tie_word_embeddings": config.tie_embeddings,
        "scale_decoder_outputs": config.scale_tied_logits,
        "pad_token_id": config.pad_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
    }


def params_from_hf(state_dict: dict[str, np.ndarray], config: ModelConfig) -> dict:
    """HF T5 state dict -> our params (plain arrays of config.param_dtype; stacked if scan_layers)."""
    entries = _weight_map(config)
    missing = [entry.key for entry in entries if entry.key not in state_dict]
    if missing:
        raise CheckpointError(f"{config.name}: T5 state dict lacks {len(missing)} tensor(s): {', '.join(missing)}.")
    known = {entry.key for entry in entries} | set(_SHARED_COPIES) | set(_IGNORED)
    if config.tie_embeddings:
        known.add("lm_head.weight")
    unexpected = sorted(set(state_dict) - known)
    if unexpected:
        raise CheckpointError(f"{config.name}: T5 state dict has {len(unexpected)} tensor(s) the config does not "
                              f"describe (wrong layer counts or head?): {', '.join(unexpected)}.")
    check_tied_head(config, state_dict, "lm_head.weight", "shared.weight")
    params: dict = {}
    for entry in entries:
        value = np.asarray(state_dict[entry.key])
        if value.shape != entry.hf_shape:
            raise CheckpointError(f"{config.name}: {entry.key} has shape {value.shape} but the config implies "
                                  f"{entry.hf_shape}; config.json does not match the weights.")
        node = params
        for name in entry.path[:-1]:
            node = node.setdefault(name, {})
        node[entry.path[-1]] = entry.convert[0](value)
    return model_layout(params, config, LAYER_NAMES)


def params_to_hf(params: Any, config: ModelConfig) -> dict[str, np.ndarray]:
    """Our params (boxed or not, scanned or not) -> T5ForConditionalGeneration state dict."""
    params = unrolled_layout(params, config, LAYER_NAMES)
    state_dict = {}
    for entry in _weight_map(config):
        value = params
        for name in entry.path:
            value = value[name]
        state_dict[entry.key] = np.array(entry.convert[1](value), order="C")  # a writable, contiguous copy
    for key in _SHARED_COPIES + (("lm_head.weight",) if config.tie_embeddings else ()):
        state_dict[key] = state_dict["shared.weight"].copy()
    return state_dict


# --- the weight table -----------------------------------------------------------------------

Convert = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


class _Entry(NamedTuple):
    key: str  # HF state dict key
    path: tuple[str, ...]  # our param path (unrolled layout)
    convert: Convert  # (to ours, to HF)
    hf_shape: tuple[int, ...]


def _weight_map(config: ModelConfig) -> list[_Entry]:
    """Every tensor of the model, with its conversion and its shape on the HF side."""
    d, h, dh, f, v = config.d_model, config.num_heads, config.dim_per_head, config.d_ff, config.vocab_size
    same: Convert = (lambda x: x, lambda x: x)
    linear: Convert = (lambda x: x.T, lambda x: x.T)  # torch Linear is [out, in]; our kernels [in, out]
    # q/k/v: [H*Dh, D] <-> [D, H, Dh]; o: [D, H*Dh] <-> [H, Dh, D].
    qkv: Convert = (lambda x: x.T.reshape(d, h, dh), lambda x: x.reshape(d, h * dh).T)
    out: Convert = (lambda x: x.T.reshape(h, dh, d), lambda x: x.reshape(h * dh, d).T)

    entries = [_Entry("shared.weight", ("token_embed", "embedding"), same, (v, d))]

    def attention(hf: str, ours: tuple[str, ...]) -> None:
        for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value")):
            entries.append(_Entry(f"{hf}.{hf_name}.weight", ours + (name, "kernel"), qkv, (h * dh, d)))
        entries.append(_Entry(f"{hf}.o.weight", ours + ("out", "kernel"), out, (d, h * dh)))

    def norm(hf: str, ours: tuple[str, ...]) -> None:
        entries.append(_Entry(hf, ours + ("scale",), same, (d,)))

    def mlp(hf: str, ours: tuple[str, ...]) -> None:
        for name in ("wi_0", "wi_1") if config.gated_mlp else ("wi",):
            entries.append(_Entry(f"{hf}.DenseReluDense.{name}.weight", ours + ("mlp", name, "kernel"), linear, (f, d)))
        entries.append(_Entry(f"{hf}.DenseReluDense.wo.weight", ours + ("mlp", "wo", "kernel"), linear, (d, f)))
        norm(f"{hf}.layer_norm.weight", ours + ("mlp_norm",))

    for stack, num_layers in (("encoder", config.encoder_layers), ("decoder", config.num_layers)):
        entries.append(_Entry(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                              (f"{stack}_relative_bias", "embedding", "embedding"), same, (config.relative_buckets, h)))
        for i in range(num_layers):
            hf, ours = f"{stack}.block.{i}.layer", (f"{stack}_layers_{i}",)
            self_name = "attention" if stack == "encoder" else "self_attention"
            attention(f"{hf}.0.SelfAttention", ours + (self_name,))
            norm(f"{hf}.0.layer_norm.weight", ours + (f"{self_name}_norm",))
            if stack == "decoder":
                attention(f"{hf}.1.EncDecAttention", ours + ("cross_attention",))
                norm(f"{hf}.1.layer_norm.weight", ours + ("cross_attention_norm",))
            mlp(f"{hf}.{2 if stack == 'decoder' else 1}", ours)
        norm(f"{stack}.final_layer_norm.weight", (f"{stack}_norm",))
    if not config.tie_embeddings:
        entries.append(_Entry("lm_head.weight", ("lm_head", "kernel"), linear, (v, d)))
    return entries
