"""Named model configs: published sizes, a scaling ladder, and tiny test presets.

`get_config("gpt2-small", dropout_rate=0.1)` returns a validated ModelConfig; an unknown
name fails with the nearest known names suggested.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable

from research.models.config import ConfigError, ModelConfig

_PRESETS: dict[str, Callable[[], ModelConfig]] = {}


def _register(name: str, **fields: Any) -> None:
    _PRESETS[name] = lambda: ModelConfig(name=name, **fields)


# --- GPT-2 (Radford et al. 2019); sizes from the released checkpoints -----------------
_GPT2 = dict(family="decoder", vocab_size=50257, max_len=1024, position="learned", norm="layernorm",
             norm_eps=1e-5, activation="gelu_tanh", use_bias=True, tie_embeddings=True)
for _name, (_d, _l, _h) in {"small": (768, 12, 12), "medium": (1024, 24, 16), "large": (1280, 36, 20),
                            "xl": (1600, 48, 25)}.items():
    _register(f"gpt2-{_name}", d_model=_d, num_layers=_l, num_heads=_h, d_ff=4 * _d, **_GPT2)
_register("gpt2-tiny", d_model=64, num_layers=2, num_heads=4, d_ff=256, **{**_GPT2, "vocab_size": 512,
                                                                             "max_len": 128})

# --- LLaMA style (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, GQA, untied head ------------
_LLAMA = dict(family="decoder", vocab_size=32000, position="rope", norm="rmsnorm", activation="silu",
              gated_mlp=True, use_bias=False, tie_embeddings=False)
_register("llama-7b", d_model=4096, num_layers=32, num_heads=32, d_ff=11008, max_len=2048, norm_eps=1e-6, **_LLAMA)
_register("llama-13b", d_model=5120, num_layers=40, num_heads=40, d_ff=13824, max_len=2048, norm_eps=1e-6,
          **_LLAMA)
_register("llama2-7b", d_model=4096, num_layers=32, num_heads=32, d_ff=11008, max_len=4096, norm_eps=1e-5,
          **_LLAMA)
_register("tinyllama-1.1b", d_model=2048, num_layers=22, num_heads=32, num_kv_heads=4, d_ff=5632,
          max_len=2048, norm_eps=1e-5, **_LLAMA)
# A small LLaMA-style ladder for research runs (d_ff = 8/3 D rounded up to 64, GQA 4:1).
for _name, (_d, _l, _h) in {"llama-20m": (256, 6, 8), "llama-60m": (512, 8, 8), "llama-150m": (768, 12, 12),
                            "llama-350m": (1024, 24, 16)}.items():
    _register(_name, d_model=_d, num_layers=_l, num_heads=_h, num_kv_heads=max(1, _h // 4),
              d_ff=64 * math.ceil(8 * _d / 3 / 64), max_len=2048, norm_eps=1e-5, **_LLAMA)
_register("llama-tiny", d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=192, max_len=128,
          norm_eps=1e-5, **{**_LLAMA, "vocab_size": 512})

# --- BERT (Devlin et al. 2019; Turc et al. 2019 for the small ones) ------------------------
_BERT = dict(family="encoder", vocab_size=30522, max_len=512, type_vocab_size=2, pooler=True, position="learned",
             norm="layernorm", norm_eps=1e-12, norm_placement="post", activation="gelu", use_bias=True,
             tie_embeddings=True)
for _name, (_d, _l, _h) in {"tiny": (128, 2, 2), "mini": (256, 4, 4), "small": (512, 4, 8), "medium": (512, 8, 8),
                            "base": (768, 12, 12), "large": (1024, 24, 16)}.items():
    _register(f"bert-{_name}", d_model=_d, num_layers=_l, num_heads=_h, d_ff=4 * _d, **_BERT)
_register("bert-test", d_model=64, num_layers=2, num_heads=4, d_ff=128, **{**_BERT, "vocab_size": 512,
                                                                             "max_len": 128})

# --- T5 (Raffel et al. 2020) and T5 v1.1 ---------------------------------------------------
_T5 = dict(family="encoder_decoder", vocab_size=32128, max_len=512, position="relative", norm="rmsnorm",
           norm_eps=1e-6, use_bias=False, scale_attention_logits=False, head_dim=64, init_scheme="t5")
_T5_V10 = dict(activation="relu", gated_mlp=False, tie_embeddings=True, scale_tied_logits=True, **_T5)
_T5_V11 = dict(activation="gelu_tanh", gated_mlp=True, tie_embeddings=False, **_T5)
for _name, (_d, _f, _l, _h) in {"small": (512, 2048, 6, 8), "base": (768, 3072, 12, 12),
                                "large": (1024, 4096, 24, 16)}.items():
    _register(f"t5-{_name}", d_model=_d, d_ff=_f, num_layers=_l, num_heads=_h, **_T5_V10)
for _name, (_d, _f, _l, _h) in {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12)}.items():
    _register(f"t5-v1_1-{_name}", d_model=_d, d_ff=_f, num_layers=_l, num_heads=_h, **_T5_V11)
_register("t5-tiny", d_model=64, d_ff=128, num_layers=2, num_heads=4, **{**_T5_V10, "vocab_size": 512,
                                                                          "head_dim": 16, "max_len": 128})
_register("t5-v1_1-tiny", d_model=64, d_ff=96, num_layers=2, num_heads=4,
          **{**_T5_V11, "vocab_size": 512, "head_dim": 16, "max_len": 128})


# --- Scaling ladder: GPT-2-style decoders at a fixed aspect ratio D / L ----------------------
LADDER_ASPECT = 32  # d_model per layer; Kaplan et al. 2020 find loss flat over a wide range


def scaling_ladder_config(non_embedding_params: float, *, aspect: int = LADDER_ASPECT,
                          vocab_size: int = 50257, max_len: int = 1024, name: str | None = None) -> ModelConfig:
    """A GPT-2-style decoder with about `non_embedding_params` (12 L D^2) at D = aspect * L.

    D is rounded to a multiple of its head width (4 below D=64, 16 below D=256, else 64): at
    the 1e4 end a coarser step cannot land within 25% of the target.
    """
    if non_embedding_params < 1e3:
        raise ConfigError(f"non_embedding_params={non_embedding_params:g} is too small for a ladder model (>= 1e3).")
    num_layers = max(1, round((non_embedding_params / (12 * aspect**2)) ** (1 / 3)))
    d_exact = math.sqrt(non_embedding_params / (12 * num_layers))
    head_dim = 4 if d_exact < 64 else 16 if d_exact < 256 else 64
    d_model = max(head_dim, head_dim * round(d_exact / head_dim))
    return ModelConfig(name=name or f"ladder-{non_embedding_params:.0e}", d_model=d_model, num_layers=num_layers,
                       num_heads=d_model // head_dim, d_ff=4 * d_model,
                       **{**_GPT2, "vocab_size": vocab_size, "max_len": max_len})


SCALING_LADDER = tuple(f"scale-{m}e{e}" for e in range(4, 10) for m in (1, 3) if not (e == 9 and m == 3))
for _preset in SCALING_LADDER:
    _PRESETS[_preset] = (lambda n=float(_preset.split("-")[1]), p=_preset: scaling_ladder_config(n, name=p))


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The preset `name`, with `overrides` applied to its fields."""
    if name not in _PRESETS:
        near = difflib.get_close_matches(name, _PRESETS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else f" Known: {', '.join(preset_names())}."
        raise ConfigError(f"unknown model preset {name!r}.{hint}")
    config = _PRESETS[name]()
    return config.replace(**overrides) if overrides else config
