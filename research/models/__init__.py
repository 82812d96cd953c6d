"""The model zoo: decoder-only (GPT-2, LLaMA), encoder-only (BERT), encoder-decoder (T5).

Dimension legend, used in shape suffixes throughout (`x_BTD`, `logits_BTV`) and in
uppercase einsum strings:

    B batch          T target / query length   S source / key length
    D model width    H query heads             K key-value heads      d (Dh) head width
    G query heads per kv head (H = K * G)      F MLP width            V vocabulary
    L layers

Models are flax.linen modules used purely: `params = model.init(rng, ...)["params"]`,
`model.apply({"params": params}, ...)`. Parameters carry logical axis names
(research/sharding.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

from research.models.config import ConfigError, ModelConfig
from research.models.presets import get_config, preset_names, scaling_ladder_config


def build_model(config: ModelConfig) -> nn.Module:
    """The flax module for `config.family`."""
    if config.family == "decoder":
        from research.models.decoder import Decoder
        return Decoder(config)
    if config.family == "encoder":
        from research.models.encoder import Encoder
        return Encoder(config)
    from research.models.encoder_decoder import EncoderDecoder
    return EncoderDecoder(config)


def from_hf(path: str, **overrides: Any):
    """Load a local Hugging Face checkpoint folder -> (model, params)."""
    from research.models.hf import from_hf as _from_hf
    return _from_hf(path, **overrides)


def to_hf(model: nn.Module, params: Any, path: str, *, tokenizer: Any = None, stop_ids: Sequence[int] = ()) -> None:
    """Write `params` as a Hugging Face checkpoint folder (config.json + model.safetensors), with
    `tokenizer`'s special ids in config.json and generation_config.json when given, the latter
    also stopping at `stop_ids` (research.models.hf.to_hf)."""
    from research.models.hf import to_hf as _to_hf
    return _to_hf(model, params, path, tokenizer=tokenizer, stop_ids=stop_ids)


__all__ = ["ConfigError", "ModelConfig", "build_model", "from_hf", "get_config", "preset_names",
           "scaling_ladder_config", "to_hf"]
