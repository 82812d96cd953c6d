"""GPT-2 (transformers' GPT2LMHeadModel) <-> our decoder with learned positions.

HF GPT-2 uses Conv1D layers whose weight is [in, out] (the transpose of nn.Linear), a
fused query/key/value projection `c_attn` [D, 3D] split as q | k | v with heads
contiguous inside each part, and an LM head tied to `wte` unless tie_word_embeddings
is false or the file stores an lm_head.weight that differs from `wte` (transformers then
keeps it untied, and so do we).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from research.models.config import ConfigError, ModelConfig
from research.models.hf import (ACTIVATION_FROM_HF, ACTIVATION_TO_HF, check_convertible, check_tied_head,
                                hf_activation, model_layout, unrolled_layout, untie_distinct_head)
from research.models.hf.checkpoint_files import StateDict, strip_prefix, take

MODEL_TYPE = "gpt2"
# GPT2Config's defaults: config.json files written by older transformers omit them.
_HF_DEFAULTS = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
                "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False,
                "tie_word_embeddings": True, "pad_token_id": None}
# Buffers some checkpoints carry (causal mask, masked fill value): no weights in them.
_IGNORED = (".attn.bias", ".attn.masked_bias")


def config_from_hf(hf_config: dict[str, Any]) -> ModelConfig:
    """ModelConfig of a GPT-2 config.json dict."""
    hf = {**_HF_DEFAULTS, **hf_config}
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf[flag]:
            raise ConfigError(f"gpt2: {flag}=true is not supported; only standard GPT-2 blocks convert.")
    # A null pad id (GPT-2's), a -1 some conversions write, or one past the vocabulary (GPT-2 has no
    # padding_idx, so transformers loads it): pad with 0 (padded columns are masked).
    pad = hf["pad_token_id"] if hf["pad_token_id"] is not None and 0 <= hf["pad_token_id"] < hf["vocab_size"] else 0
    return ModelConfig(
        name="gpt2", family="decoder", vocab_size=hf["vocab_size"], d_model=hf["n_embd"],
        num_layers=hf["n_layer"], num_heads=hf["n_head"], d_ff=hf["n_inner"] or 4 * hf["n_embd"],
        max_len=hf["n_positions"], position="learned", norm="layernorm", norm_eps=hf["layer_norm_epsilon"],
        norm_placement="pre", activation=hf_activation(hf["activation_function"], MODEL_TYPE), gated_mlp=False,
        use_bias=True, scale_attention_logits=bool(hf["scale_attn_weights"]),
        tie_embeddings=bool(hf["tie_word_embeddings"]), pad_token_id=pad,
        dropout_rate=float(hf["resid_pdrop"]))


def config_for_weights(config: ModelConfig, state_dict: StateDict) -> ModelConfig:
    """`config` untied when the weights store an lm_head.weight other than wte.weight."""
    return untie_distinct_head(config, strip_prefix(state_dict, "transformer."), "lm_head.weight", "wte.weight")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """GPT-2 config.json dict of `config`; ConfigError if GPT-2 cannot express it."""
    check_convertible(config, "GPT-2", dict(family="decoder", position="learned", norm="layernorm",
                                            norm_placement="pre", gated_mlp=False, use_bias=True,
                                            num_kv_heads=None if config.num_kv_heads is None else config.num_heads,
                                            dim_per_head=config.d_model // config.num_heads,
                                            scale_tied_logits=False))
    activation = "gelu_new" if config.activation == "gelu_tanh" else ACTIVATION_TO_HF[config.activation]
    assert ACTIVATION_FROM_HF[activation] == config.activation
    return {
        "model_type": MODEL_TYPE, "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
        "n_positions": config.max_len, "n_embd": config.d_model, "n_layer": config.num_layers,
        "n_head": config.num_heads, "n_inner": config.d_ff, "activation_function": activation,
        "layer_norm_epsilon": config.norm_eps, "resid_pdrop": config.dropout_rate,
        "embd_pdrop": config.dropout_rate, "attn_pdrop": config.dropout_rate,
        "scale_attn_weights": config.scale_attention_logits, "tie_word_embeddings": config.tie_embeddings,
        "dtype": config.param_dtype,
    }


def _hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the HF tensors (without the "transformer." prefix)."""
    d, f, v = config.d_model, config.d_ff, config.vocab_size
    shapes = {"wte.weight": (v, d), "wpe.weight": (config.max_len, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(config.num_layers):
        for name, shape in {"ln_1.weight": (d,), "ln_1.bias": (d,), "attn.c_attn.weight": (d, 3 * d),
                            "attn.c_attn.bias": (3 * d,), "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
                            "ln_2.weight": (d,), "ln_2.bias": (d,), "mlp.c_fc.weight": (d, f), "mlp.c_fc.bias": (f,),
                            "mlp.c_proj.weight": (f, d), "mlp.c_proj.bias": (d,)}.items():
            shapes[f"h.{i}.{name}"] = shape
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def params_from_hf(state_dict: StateDict, config: ModelConfig) -> dict:
    """Our params (layout per config.scan_layers, dtype config.param_dtype) from HF GPT-2 tensors."""
    # GPT2LMHeadModel saves "transformer.h.0..."; GPT2Model (e.g. the original "gpt2") "h.0...".
    state_dict = strip_prefix(state_dict, "transformer.")
    check_tied_head(config, state_dict, "lm_head.weight", "wte.weight")
    # Tied, a stored head equals wte (checked above): transformers' save_pretrained may write it anyway.
    ignore = _IGNORED + (("lm_head.weight",) if config.tie_embeddings else ())
    sd = take(state_dict, _hf_shapes(config), MODEL_TYPE, ignore=ignore)
    h, dh, d = config.num_heads, config.dim_per_head, config.d_model
    norm = lambda prefix: {"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]}
    params: dict = {"token_embed": {"embedding": sd["wte.weight"]},
                    "position_embed": {"embedding": sd["wpe.weight"]}, "final_norm": norm("ln_f")}
    for i in range(config.num_layers):
        p = f"h.{i}."
        q, k, v = np.split(sd[p + "attn.c_attn.weight"], 3, axis=1)
        qb, kb, vb = np.split(sd[p + "attn.c_attn.bias"], 3)
        dense = lambda w, b: {"kernel": w.reshape(d, h, dh), "bias": b.reshape(h, dh)}
        params[f"layers_{i}"] = {
            "attention_norm": norm(p + "ln_1"),
            "attention": {"query": dense(q, qb), "key": dense(k, kb), "value": dense(v, vb),
                          "out": {"kernel": sd[p + "attn.c_proj.weight"].reshape(h, dh, d),
                                  "bias": sd[p + "attn.c_proj.bias"]}},
            "mlp_norm": norm(p + "ln_2"),
            "mlp": {"wi": {"kernel": sd[p + "mlp.c_fc.weight"], "bias": sd[p + "mlp.c_fc.bias"]},
                    "wo": {"kernel": sd[p + "mlp.c_proj.weight"], "bias": sd[p + "mlp.c_proj.bias"]}},
        }
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": sd["lm_head.weight"].T}
    return model_layout(params, config)


def params_to_hf(params: Any, config: ModelConfig) -> StateDict:
    """HF GPT2LMHeadModel tensors of our params (boxed or not, scanned or not)."""
    p = unrolled_layout(params, config)
    d = config.d_model
    sd: StateDict = {"transformer.wte.weight": p["token_embed"]["embedding"],
                     "transformer.wpe.weight": p["position_embed"]["embedding"],
                     "transformer.ln_f.weight": p["final_norm"]["scale"],
                     "transformer.ln_f.bias": p["final_norm"]["bias"]}
    for i in range(config.num_layers):
        layer, prefix = p[f"layers_{i}"], f"transformer.h.{i}."
        attention, mlp = layer["attention"], layer["mlp"]
        qkv = [attention[name] for name in ("query", "key", "value")]
        sd.update({
            prefix + "ln_1.weight": layer["attention_norm"]["scale"],
            prefix + "ln_1.bias": layer["attention_norm"]["bias"],
            prefix + "attn.c_attn.weight": np.concatenate([x["kernel"].reshape(d, d) for x in qkv], axis=1),
            prefix + "attn.c_attn.bias": np.concatenate([x["bias"].reshape(d) for x in qkv]),
            prefix + "attn.c_proj.weight": attention["out"]["kernel"].reshape(d, d),
            prefix + "attn.c_proj.bias": attention["out"]["bias"],
            prefix + "ln_2.weight": layer["mlp_norm"]["scale"], prefix + "ln_2.bias": layer["mlp_norm"]["bias"],
            prefix + "mlp.c_fc.weight": mlp["wi"]["kernel"], prefix + "mlp.c_fc.bias": mlp["wi"]["bias"],
            prefix + "mlp.c_proj.weight": mlp["wo"]["kernel"], prefix + "mlp.c_proj.bias": mlp["wo"]["bias"],
        })
    if not config.tie_embeddings:
        sd["lm_head.weight"] = p["lm_head"]["kernel"].T
    return sd
