"""LLaMA, Mistral and Qwen2 (transformers' LlamaForCausalLM / MistralForCausalLM /
Qwen2ForCausalLM) <-> our decoder with RoPE, RMSNorm and a gated MLP; Mistral's sliding window
is config.sliding_window, Qwen2's query/key/value biases config.qkv_bias.

HF nn.Linear weights are [out, in], so every projection is transposed. Our RoPE uses
the same rotate-half layout as HF LLaMA, so q/k weights need no permutation. A stored
lm_head.weight that differs from embed_tokens is loaded untied whatever
tie_word_embeddings says, as transformers does.
"""
from __future__ import annotations

from typing import Any

from research.models.config import ConfigError, ModelConfig
from research.models.hf import (ACTIVATION_TO_HF, check_convertible, check_tied_head, hf_activation, model_layout,
                                unrolled_layout, untie_distinct_head)
from research.models.hf.checkpoint_files import StateDict, strip_prefix, take

# LlamaConfig's / MistralConfig's defaults: config.json files written by older
# transformers omit them.
_LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
                   "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                   "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "pad_token_id": None}
_MISTRAL_DEFAULTS = {**_LLAMA_DEFAULTS, "intermediate_size": 14336, "num_key_value_heads": 8,
                     "max_position_embeddings": 4096 * 32, "sliding_window": 4096}
# Qwen2Config's: no attention_bias / mlp_bias keys (its q/k/v always carry biases, o and the MLP
# never); a window only where use_sliding_window, and then in layers >= max_window_layers.
_QWEN2_DEFAULTS = {**_LLAMA_DEFAULTS, "vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
                   "max_position_embeddings": 32768, "use_sliding_window": False, "sliding_window": 4096,
                   "max_window_layers": 28, "layer_types": None}
_DEFAULTS = {"llama": _LLAMA_DEFAULTS, "mistral": _MISTRAL_DEFAULTS, "qwen2": _QWEN2_DEFAULTS}
_ROPE_THETA_DEFAULT = 10_000.0
# Non-persistent buffer that old checkpoints saved; recomputed from rope_theta.
_IGNORED = (".rotary_emb.inv_freq",)


def config_from_hf(hf_config: dict[str, Any]) -> ModelConfig:
    """ModelConfig of a LLaMA or Mistral config.json dict."""
    model_type = hf_config.get("model_type", "llama")
    hf = {**_DEFAULTS.get(model_type, _LLAMA_DEFAULTS), **hf_config}
    for flag in ("attention_bias", "mlp_bias"):
        if hf[flag] and model_type != "qwen2":  # Qwen2's modeling code reads neither key
            raise ConfigError(f"{model_type}: {flag}=true is not supported; only bias-free LLaMA blocks convert.")
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf["head_dim"]
    # A null pad id, or LLaMA-1 conversions' -1 (transformers' padding_idx counts it from the end): pad with 0.
    return ModelConfig(
        name=model_type, family="decoder", vocab_size=hf["vocab_size"], d_model=d,
        num_layers=hf["num_hidden_layers"], num_heads=h, num_kv_heads=hf["num_key_value_heads"] or h,
        head_dim=None if head_dim in (None, d // h) else head_dim, d_ff=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"], position="rope", rope_theta=_rope_theta(hf, model_type),
        norm="rmsnorm", norm_eps=hf["rms_norm_eps"], norm_placement="pre",
        activation=hf_activation(hf["hidden_act"], model_type), gated_mlp=True, use_bias=False,
        qkv_bias=model_type == "qwen2",
        tie_embeddings=bool(hf["tie_word_embeddings"]), pad_token_id=max(hf["pad_token_id"] or 0, 0),
        dropout_rate=float(hf["attention_dropout"]), sliding_window=_sliding_window(hf, model_type))


def _sliding_window(hf: dict[str, Any], model_type: str) -> int | None:
    """Mistral's window, as transformers applies it: in every layer, whatever its size (a window
    as long as max_position_embeddings still masks the positions RoPE runs past it). LLaMA's
    modeling code never reads a sliding_window key, so there it means nothing. Qwen2 windows
    the layers its layer_types call "sliding_attention": none, or all of them, convert."""
    window = hf.get("sliding_window") if model_type == "mistral" else None
    if model_type == "qwen2":
        window = _qwen2_window(hf)
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"{model_type}: sliding_window={window!r} must be a positive int (or null for full "
                          "causal attention).")
    return window


def _qwen2_window(hf: dict[str, Any]) -> int | None:
    """Qwen2Config's rule: a window only with use_sliding_window, in the layers layer_types names
    (default: those from max_window_layers on). One window per model is what our decoder holds."""
    layers = hf["num_hidden_layers"]
    window = hf["sliding_window"] if hf["use_sliding_window"] else None
    types = hf["layer_types"] or ["sliding_attention" if window is not None and i >= hf["max_window_layers"]
                                  else "full_attention" for i in range(layers)]
    sliding = sum(kind == "sliding_attention" for kind in types)
    if sliding == 0:
        return None
    if sliding != layers or window is None:
        raise ConfigError(f"qwen2: a sliding window in {sliding} of {layers} layers (use_sliding_window="
                          f"{hf['use_sliding_window']}, max_window_layers={hf['max_window_layers']}) is not supported; "
                          "only a window in every layer or in none converts.")
    return window


def _rope_theta(hf: dict[str, Any], model_type: str) -> float:
    """RoPE base from transformers 5's rope_parameters or 4's rope_theta / rope_scaling, read as
    transformers' convert_rope_params_to_dict does: a non-empty rope_scaling replaces
    rope_parameters whole (no merge: a rope_theta inside rope_parameters is then dropped), and
    the theta is the chosen dict's, else the top-level rope_theta, else 10000."""
    rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    type_4 = rope.pop("type", "default")  # transformers 4 wrote 'type'; 'rope_type' wins over it
    rope_type = rope.pop("rope_type", type_4)
    theta = rope.pop("rope_theta", None)
    theta = hf.get("rope_theta", _ROPE_THETA_DEFAULT) if theta is None else theta
    if rope.get("partial_rotary_factor", 1.0) == 1.0:  # the whole head rotated: plain RoPE
        rope.pop("partial_rotary_factor", None)
    if rope_type != "default" or rope:
        raise ConfigError(f"{model_type}: RoPE scaling {rope_type!r} {rope or ''} is not supported; "
                          "only plain RoPE (rope_type 'default' with rope_theta) converts.")
    return float(theta)


def config_for_weights(config: ModelConfig, state_dict: StateDict) -> ModelConfig:
    """`config` untied when the weights store an lm_head.weight other than embed_tokens.weight."""
    return untie_distinct_head(config, strip_prefix(state_dict, "model."), "lm_head.weight", "embed_tokens.weight")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """LLaMA config.json dict of `config` (Mistral's when it has a sliding window, which LLaMA
    would silently drop; Qwen2's when its q/k/v carry biases); ConfigError if none can express it."""
    check_convertible(config, "LLaMA", dict(family="decoder", position="rope", norm="rmsnorm", norm_placement="pre",
                                            gated_mlp=True, use_bias=False, scale_attention_logits=True,
                                            scale_tied_logits=False))
    window = {} if config.sliding_window is None else {
        "model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": config.sliding_window}
    if config.qkv_bias:  # Qwen2 windows layers >= max_window_layers: 0 puts the window in all of them
        window = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                  "use_sliding_window": config.sliding_window is not None, "max_window_layers": 0,
                  "sliding_window": config.sliding_window}
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.d_ff, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.kv_heads,
        "head_dim": config.dim_per_head, "hidden_act": ACTIVATION_TO_HF[config.activation],
        "max_position_embeddings": config.max_len, "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": config.dropout_rate,
        # transformers >= 5 reads rope_parameters, older versions rope_theta.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "dtype": config.param_dtype,
        **window,
    }


def _hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the HF tensors (without the "model." prefix)."""
    d, f, v = config.d_model, config.d_ff, config.vocab_size
    hd, kd = config.num_heads * config.dim_per_head, config.kv_heads * config.dim_per_head
    shapes = {"embed_tokens.weight": (v, d), "norm.weight": (d,)}
    for i in range(config.num_layers):
        for name, shape in {"self_attn.q_proj.weight": (hd, d), "self_attn.k_proj.weight": (kd, d),
                            "self_attn.v_proj.weight": (kd, d), "self_attn.o_proj.weight": (d, hd),
                            "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
                            "mlp.down_proj.weight": (d, f), "input_layernorm.weight": (d,),
                            "post_attention_layernorm.weight": (d,)}.items():
            shapes[f"layers.{i}.{name}"] = shape
        if config.qkv_bias:
            shapes.update({f"layers.{i}.self_attn.q_proj.bias": (hd,), f"layers.{i}.self_attn.k_proj.bias": (kd,),
                           f"layers.{i}.self_attn.v_proj.bias": (kd,)})
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def params_from_hf(state_dict: StateDict, config: ModelConfig) -> dict:
    """Our params (layout per config.scan_layers, dtype config.param_dtype) from HF LLaMA tensors."""
    # LlamaForCausalLM saves "model.layers.0..."; LlamaModel "layers.0...".
    state_dict = strip_prefix(state_dict, "model.")
    check_tied_head(config, state_dict, "lm_head.weight", "embed_tokens.weight")
    # Tied, a stored head equals embed_tokens (checked above): save_pretrained may write it anyway.
    ignore = _IGNORED + (("lm_head.weight",) if config.tie_embeddings else ())
    sd = take(state_dict, _hf_shapes(config), "llama", ignore=ignore)
    h, k, dh, d = config.num_heads, config.kv_heads, config.dim_per_head, config.d_model
    params: dict = {"token_embed": {"embedding": sd["embed_tokens.weight"]},
                    "final_norm": {"scale": sd["norm.weight"]}}
    for i in range(config.num_layers):
        p = f"layers.{i}."
        def heads(name: str, n: int) -> dict:
            kernel = {"kernel": sd[p + name + ".weight"].T.reshape(d, n, dh)}
            return {**kernel, "bias": sd[p + name + ".bias"].reshape(n, dh)} if config.qkv_bias else kernel
        params[f"layers_{i}"] = {
            "attention_norm": {"scale": sd[p + "input_layernorm.weight"]},
            "attention": {"query": heads("self_attn.q_proj", h), "key": heads("self_attn.k_proj", k),
                          "value": heads("self_attn.v_proj", k),
                          "out": {"kernel": sd[p + "self_attn.o_proj.weight"].T.reshape(h, dh, d)}},
            "mlp_norm": {"scale": sd[p + "post_attention_layernorm.weight"]},
            # act(gate) * up: gate is the activated input projection wi_0.
            "mlp": {"wi_0": {"kernel": sd[p + "mlp.gate_proj.weight"].T},
                    "wi_1": {"kernel": sd[p + "mlp.up_proj.weight"].T},
                    "wo": {"kernel": sd[p + "mlp.down_proj.weight"].T}},
        }
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": sd["lm_head.weight"].T}
    return model_layout(params, config)


def params_to_hf(params: Any, config: ModelConfig) -> StateDict:
    """HF LlamaForCausalLM tensors of our params (boxed or not, scanned or not)."""
    p = unrolled_layout(params, config)
    d = config.d_model
    sd: StateDict = {"model.embed_tokens.weight": p["token_embed"]["embedding"],
                     "model.norm.weight": p["final_norm"]["scale"]}
    for i in range(config.num_layers):
        layer, prefix = p[f"layers_{i}"], f"model.layers.{i}."
        attention, mlp = layer["attention"], layer["mlp"]
        heads = lambda name: attention[name]["kernel"].reshape(d, -1).T
        sd.update({
            prefix + "self_attn.q_proj.weight": heads("query"), prefix + "self_attn.k_proj.weight": heads("key"),
            prefix + "self_attn.v_proj.weight": heads("value"),
            prefix + "self_attn.o_proj.weight": attention["out"]["kernel"].reshape(-1, d).T,
            prefix + "mlp.gate_proj.weight": mlp["wi_0"]["kernel"].T,
            prefix + "mlp.up_proj.weight": mlp["wi_1"]["kernel"].T,
            prefix + "mlp.down_proj.weight": mlp["wo"]["kernel"].T,
            prefix + "input_layernorm.weight": layer["attention_norm"]["scale"],
            prefix + "post_attention_layernorm.weight": layer["mlp_norm"]["scale"],
        })
        if config.qkv_bias:
            for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
                sd[prefix + f"self_attn.{theirs}.bias"] = attention[ours]["bias"].reshape(-1)
    if not config.tie_embeddings:
        sd["lm_head.weight"] = p["lm_head"]["kernel"].T
    return sd
