"""Checks of a fine-tuning config that need no model or data: run before the workdir is claimed.

Every bad value a user can give on the command line fails here in one line naming the value
and the fix, before any loading or compilation, instead of after training (export_dir on a
head model, data.num_eval=0), as a NaN or an OOM (seq_len past the model's max_len, checked
when the base model's config is known: `check_seq_len`) or silently (a SimPO reference, a
LoRA dropout at rank 0).
"""
from __future__ import annotations

from typing import Any, Mapping

from research.models.config import ConfigError, ModelConfig

# Paths whose model carries a head with no Hugging Face layout here (trainer._export).
NO_EXPORT_PATHS = ("reward", "token_classification")


def config_section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """config[name] (a ConfigDict or mapping) as a plain dict; {} when absent or None."""
    value = config.get(name) or {}
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def check_config(config: Mapping[str, Any]) -> None:
    """ConfigError (one line) for a value no run of this config could use (see module docstring)."""
    path = config.get("path")
    data = config_section(config, "data")
    for split in ("train", "eval"):
        key = f"num_{split}"
        if key in data and data.get("synthetic") and not data.get(f"{split}_file") and int(data[key]) <= 0:
            raise ConfigError(f"data.{key}={data[key]} must be positive: it is the size of the synthetic {split} set "
                              f"(e.g. --config.data.{key}=128), or give data.{split}_file.")
    tokens, prompts = config.get("generation_tokens", 16), config.get("generation_prompts", 32)
    if int(tokens) <= 0:
        raise ConfigError(f"generation_tokens={tokens} must be positive: it is how many tokens each evaluation "
                          "completion may have (e.g. --config.generation_tokens=16).")
    if int(prompts) < 0:
        raise ConfigError(f"generation_prompts={prompts} must be >= 0: how many evaluation prompts are completed "
                          "(0 = none).")
    if path == "preference":
        preference = config_section(config, "preference")
        if preference.get("reference") and preference.get("loss") == "simpo":
            raise ConfigError(f"preference.reference={preference['reference']!r} is unused: SimPO needs no reference "
                              "model; unset --config.preference.reference (or use loss 'dpo' / 'ipo').")
    from research.finetune.trainer import lora_config
    lora_config(config)  # LoraConfig's one-line errors, and a dropout with rank 0 (full fine-tuning)
    if config.get("export_dir") and path in NO_EXPORT_PATHS:
        raise ConfigError(f"export_dir={config['export_dir']!r}: path={path!r} trains a model with a task head, "
                          "which has no Hugging Face export here; unset export_dir.")


def check_seq_len(seq_len: int, model: ModelConfig) -> None:
    """train.seq_len must fit the model's position range (learned positions end at max_len)."""
    if not 0 < int(seq_len) <= model.max_len:
        raise ConfigError(f"train.seq_len={seq_len} must lie in [1, {model.max_len}], the max_len of {model.name}; "
                          f"set --config.train.seq_len={min(max(int(seq_len), 1), model.max_len)} or less.")
