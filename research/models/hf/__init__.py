"""Import and export Hugging Face checkpoints (local folders; nothing is downloaded).

`from_hf(path)` reads config.json, picks the architecture module from its "model_type",
and returns `(model, params)`; `to_hf(model, params, path)` writes a folder that
transformers' `from_pretrained` loads. Each architecture module (gpt2, llama, bert, t5)
provides:

    config_from_hf(hf_config: dict) -> ModelConfig
    config_for_weights(config, state_dict) -> ModelConfig  # the LM head tied or not as the weights have it
    config_to_hf(config) -> dict                    # config.json, with model_type and architectures
    params_from_hf(state_dict, config) -> dict      # our layout: unrolled, or stacked if scan_layers
    params_to_hf(params, config) -> dict[str, np.ndarray]

The helpers below are shared by those modules.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from types import ModuleType
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import layout
from research.models.config import ConfigError, ModelConfig
from research.models.hf.checkpoint_files import (GENERATION_CONFIG_FILE, CheckpointError, StateDict, read_hf_config,
                                                 read_state_dict, read_tensors_ending_with, write_checkpoint,
                                                 write_generation_config)

# Modules are imported on use, so a missing optional one (or its dependencies) only
# matters to checkpoints of that type.
_MODULE_FOR_TYPE = {
    "gpt2": "research.models.hf.gpt2",
    "llama": "research.models.hf.llama",
    "mistral": "research.models.hf.llama",  # LLaMA plus a sliding window (ModelConfig.sliding_window)
    "qwen2": "research.models.hf.llama",  # LLaMA plus query/key/value biases (ModelConfig.qkv_bias)
    "bert": "research.models.hf.bert",
    "t5": "research.models.hf.t5",
}

# Hugging Face `hidden_act` / `activation_function` names of the activations we have.
ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "relu": "relu", "silu": "silu", "swish": "silu"}
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}


def from_hf(path: str, **overrides: Any) -> tuple[nn.Module, dict]:
    """Load the checkpoint folder `path` -> (model, params of plain arrays).

    `overrides` are ModelConfig fields applied after reading config.json, e.g.
    `scan_layers=True`, `dtype="bfloat16"`, `remat="full"`; params are cast to
    `param_dtype`. The config's name defaults to the folder's name.

    As in transformers, an LM head stored with values other than the token embedding's is
    loaded untied even where config.json says tie_word_embeddings=true.
    """
    from research.models import build_model

    module, config = _config_json(path)  # before reading the weights: a bad config.json fails fast
    overrides.setdefault("name", os.path.basename(os.path.normpath(path)))
    state_dict = read_state_dict(path)
    # Overrides come last, so an explicit tie_embeddings=True meets params_from_hf's check.
    config = module.config_for_weights(config, state_dict).replace(**overrides)
    params = module.params_from_hf(state_dict, config)
    return build_model(config), params


def hf_model_config(path: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig `from_hf(path, **overrides)` builds, without loading the model's layers:
    config.json, and when it ties the LM head, the stored head and embedding tensors alone
    (from_hf unties a stored head that differs from the embedding, and only the weights tell)."""
    module, config = _config_json(path)
    overrides.setdefault("name", os.path.basename(os.path.normpath(path)))
    if config.tie_embeddings:
        config = module.config_for_weights(config, read_tensors_ending_with(path, _HEAD_AND_EMBEDDING_NAMES))
    return config.replace(**overrides)


def _config_json(path: str) -> tuple[ModuleType, ModelConfig]:
    """The architecture's converter module and the ModelConfig of `path`/config.json. A value of
    the wrong type that the converter trips over (rope_scaling "linear" for {"type": "linear"},
    feed_forward_proj null) is one line naming the file, not the converter's traceback."""
    hf_config = read_hf_config(path)
    module = _module_for_type(hf_config.get("model_type"), path)
    try:
        return module, module.config_from_hf(hf_config)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, ZeroDivisionError) as e:  # e.g. num_attention_heads 0
        raise ConfigError(f"{os.path.join(path, 'config.json')}: not a readable {hf_config.get('model_type')} "
                          f"config, a value is missing, of the wrong type or out of range ({type(e).__name__}: "
                          f"{e}); compare it with the config.json transformers writes for this architecture.") from None


# The stored names (any prefix) of every architecture's LM head and input embedding, which
# config_for_weights compares (gpt2, llama, t5, bert).
_HEAD_AND_EMBEDDING_NAMES = ("lm_head.weight", "wte.weight", "embed_tokens.weight", "shared.weight",
                             "predictions.decoder.weight", "word_embeddings.weight")


def to_hf(model: nn.Module, params: Any, path: str, *, tokenizer: Any = None, stop_ids: Sequence[int] = ()) -> None:
    """Write `params` of `model` to the folder `path` as config.json + model.safetensors.

    tokenizer: the one the model was trained with (anything with eos_id, pad_id and optionally
    bos_id); its special ids go into config.json and generation_config.json. Without it an
    architecture's defaults stand (GPT-2's 50256), which may lie outside a small vocabulary:
    transformers then warns, and its generate() never stops on the model's real eos.
    stop_ids (with tokenizer): further ids a generated turn ends at, such as a chat template's
    one-id turn end (research.data.chat_templates.turn_end_ids: ChatML's <|im_end|>, which a
    chatml-tuned model ends its turn with, not eos); generation_config.json's eos_token_id lists
    them after eos (a Qwen instruct folder lists <|im_end|> and <|endoftext|> there too), so
    transformers' generate() stops at any of them.
    config.json keeps the tokenizer's one eos."""
    config: ModelConfig = model.config
    module = _module_for_config(config)
    hf_config = module.config_to_hf(config)
    if tokenizer is not None:
        bos = getattr(tokenizer, "bos_id", None)
        hf_config.update(bos_token_id=None if bos is None else int(bos), eos_token_id=int(tokenizer.eos_id),
                         pad_token_id=int(tokenizer.pad_id))
    write_checkpoint(path, hf_config, module.params_to_hf(params, config))
    # Written each time: a file an earlier export left here would speak for this one; without a
    # tokenizer there are no special ids to write, so an earlier file goes (its eos and stop ids
    # were read by transformers and read_generation_stop_ids as this model's).
    if tokenizer is not None:
        write_generation_config(path, hf_config, stop_ids)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(path, GENERATION_CONFIG_FILE))
    # A PEFT adapter an earlier save left here: transformers (and vLLM, lm-eval) load it on top of these
    # weights, so the folder scored as another model (logits 4.07 away from the export's).
    stale = [name for name in _PEFT_ADAPTER_FILES if os.path.isfile(os.path.join(path, name))]
    for name in stale:
        os.remove(os.path.join(path, name))
    if stale:
        logging.getLogger(__name__).warning("removed %s from %s: a PEFT adapter there would be applied on top of the "
                                            "exported weights whenever the folder loads", ", ".join(stale), path)


# The files of a PEFT adapter (peft's save_pretrained) that transformers applies when it loads a folder.
_PEFT_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def check_exportable(config: ModelConfig) -> None:
    """ConfigError (one line) when to_hf cannot write a model of `config`: read from the config alone,
    so a run can be refused before it trains rather than after (its export failed at the end)."""
    _module_for_config(config).config_to_hf(config)


def supported_model_types() -> list[str]:
    return sorted(_MODULE_FOR_TYPE)


def _module_for_type(model_type: Any, path: str) -> ModuleType:
    if model_type not in _MODULE_FOR_TYPE:
        raise ConfigError(f"{os.path.join(path, 'config.json')!r} has model_type={model_type!r}; "
                          f"supported: {', '.join(supported_model_types())}.")
    return importlib.import_module(_MODULE_FOR_TYPE[model_type])


def _module_for_config(config: ModelConfig) -> ModuleType:
    if config.family == "decoder":
        model_type = "gpt2" if config.position == "learned" else "llama"
    else:
        model_type = {"encoder": "bert", "encoder_decoder": "t5"}[config.family]
    return importlib.import_module(_MODULE_FOR_TYPE[model_type])


# --- helpers for the architecture modules -------------------------------------------------

def check_convertible(config: ModelConfig, architecture: str, required: dict[str, Any]) -> None:
    """ConfigError naming every field of `config` that differs from `required`."""
    wrong = [f"{field}={getattr(config, field)!r} (needs {value!r})" for field, value in required.items()
             if getattr(config, field) != value]
    if wrong:
        raise ConfigError(f"{config.name}: cannot be expressed as {architecture}: {', '.join(wrong)}.")


def hf_activation(name: Any, model_type: str) -> str:
    """Our activation for a Hugging Face activation name."""
    if name not in ACTIVATION_FROM_HF:
        raise ConfigError(f"{model_type}: activation {name!r} is not supported; "
                          f"supported: {', '.join(sorted(ACTIVATION_FROM_HF))}.")
    return ACTIVATION_FROM_HF[name]


def untie_distinct_head(config: ModelConfig, state_dict: StateDict, head: str, embedding: str) -> ModelConfig:
    """`config` with tie_embeddings=False when `state_dict` holds a `head` whose values differ
    from `embedding`'s, else `config`.

    transformers (5.x) ties the head to the embedding only when the file's head is absent or
    equal to it; a distinct stored head is kept (with a warning) whatever config.json says, and
    transformers 5 writes tie_word_embeddings=true for every T5, so the weights decide."""
    if config.tie_embeddings and _head_differs(state_dict, head, embedding):
        return config.replace(tie_embeddings=False)
    return config


def check_tied_head(config: ModelConfig, state_dict: StateDict, head: str, embedding: str) -> None:
    """CheckpointError if `config` ties the LM head but `state_dict` stores a different `head`:
    dropping it would silently change the logits."""
    if config.tie_embeddings and _head_differs(state_dict, head, embedding):
        raise CheckpointError(f"{config.name}: config ties the LM head but {head} differs from {embedding}; "
                              "leave tie_embeddings unset (from_hf then unties such a head, as transformers "
                              "does), or pass a config with tie_embeddings=False.")


def _head_differs(state_dict: StateDict, head: str, embedding: str) -> bool:
    return head in state_dict and embedding in state_dict and not np.array_equal(state_dict[head],
                                                                                 state_dict[embedding])


def model_layout(unrolled: dict, config: ModelConfig, layer_names: tuple[str, ...] = ("layers",)) -> dict:
    """Unrolled numpy params -> arrays of `config.param_dtype`, stacked if scan_layers."""
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype=config.weight_dtype), unrolled)
    if config.scan_layers:
        for name in layer_names:
            params = layout.stack_layers(params, name)
    return params


def unrolled_layout(params: Any, config: ModelConfig, layer_names: tuple[str, ...] = ("layers",)) -> dict:
    """Model params (boxed or not, scanned or not) -> unrolled dict of numpy arrays."""
    params = layout.unbox(params)
    if set(params) == {"params"}:  # a whole variables dict
        params = params["params"]
    if config.scan_layers:
        for name in layer_names:
            params = layout.unstack_layers(params, name)
    return jax.tree.map(np.asarray, params)


__all__ = ["ACTIVATION_FROM_HF", "ACTIVATION_TO_HF", "CheckpointError", "check_convertible", "check_tied_head",
           "from_hf", "hf_activation", "model_layout", "supported_model_types", "to_hf", "unrolled_layout",
           "untie_distinct_head"]
