"""Hugging Face checkpoint folders on local disk: config.json plus weight files.

Reads model.safetensors, sharded safetensors (model.safetensors.index.json), or
pytorch_model.bin (sharded too; needs PyTorch). Writes config.json + model.safetensors.
Tensors are numpy arrays keyed by their Hugging Face names, e.g.
"model.layers.0.self_attn.q_proj.weight".
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Any, Iterable

import numpy as np

from research.models.config import ConfigError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# config.json's fields that transformers' GenerationConfig.from_model_config carries into the
# generation config of a folder without one (the only generation fields our config.json holds).
_GENERATION_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")

StateDict = dict[str, np.ndarray]


class CheckpointError(ValueError):
    """Weights that do not match their config.json (missing, unexpected or misshapen tensors)."""


def read_hf_config(path: str) -> dict[str, Any]:
    """The parsed config.json of the checkpoint folder `path`."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Hugging Face checkpoint folder {path!r} does not exist; "
                                "pass a local folder holding config.json and model weights.")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path!r} is missing; a Hugging Face checkpoint folder needs a config.json.")
    with open(config_path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_path!r} is not valid JSON ({e}).") from None


def read_state_dict(path: str) -> StateDict:
    """All tensors of the checkpoint folder `path` as numpy arrays."""
    for name, reader in ((SAFETENSORS_FILE, _read_safetensors), (SAFETENSORS_INDEX, _read_index),
                         (TORCH_FILE, _read_torch), (TORCH_INDEX, _read_index)):
        file_path = os.path.join(path, name)
        if os.path.isfile(file_path):
            return reader(file_path)
    raise FileNotFoundError(
        f"no weights in {path!r}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} (sharded), "
        f"{TORCH_FILE} or {TORCH_INDEX}.")


def read_tensors_ending_with(path: str, suffixes: tuple[str, ...]) -> StateDict:
    """The tensors of the checkpoint folder `path` whose names end with one of `suffixes`:
    only those are read from safetensors files (a model's head and embeddings, not its
    layers); a PyTorch .bin is a pickle, read whole."""
    single, index = os.path.join(path, SAFETENSORS_FILE), os.path.join(path, SAFETENSORS_INDEX)
    if os.path.isfile(single):
        names_by_file = {single: None}
    elif os.path.isfile(index):
        weight_map = _weight_map(index)
        names_by_file = {}
        for name, shard in weight_map.items():
            if name.endswith(suffixes):
                names_by_file.setdefault(os.path.join(path, shard), []).append(name)
    else:
        return {n: v for n, v in read_state_dict(path).items() if n.endswith(suffixes)}
    from safetensors import SafetensorError, safe_open
    tensors: StateDict = {}
    for file_path, names in names_by_file.items():
        try:
            with safe_open(file_path, framework="numpy") as f:
                for name in (names if names is not None else [n for n in f.keys() if n.endswith(suffixes)]):
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError) as e:  # a missing shard, a truncated or damaged download
            raise CheckpointError(f"{file_path!r} is not a readable safetensors file ({e}); copy or export it "
                                  "again.") from None
    return tensors


def write_checkpoint(path: str, hf_config: dict[str, Any], state_dict: StateDict) -> None:
    """Write `path`/config.json and `path`/model.safetensors (creating the folder)."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    # safetensors stores raw bytes, so transposed views must be made contiguous first;
    # transformers refuses files whose metadata does not name a framework.
    tensors = {name: np.ascontiguousarray(array) for name, array in state_dict.items()}
    save_file(tensors, os.path.join(path, SAFETENSORS_FILE), metadata={"format": "pt"})


def write_generation_config(path: str, hf_config: dict[str, Any], stop_ids: Iterable[int] = ()) -> None:
    """Write `path`/generation_config.json: what transformers derives from `hf_config` without one,
    with eos_token_id the config's eos followed by `stop_ids` (a list when that makes several ids:
    generate() stops at any of them)."""
    fields = {k: hf_config[k] for k in _GENERATION_FIELDS if hf_config.get(k) is not None}
    eos = list(dict.fromkeys([*([int(fields["eos_token_id"])] if "eos_token_id" in fields else []),
                              *(int(i) for i in stop_ids)]))
    if eos:
        fields["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    with open(os.path.join(path, GENERATION_CONFIG_FILE), "w") as f:
        json.dump(fields, f, indent=2, sort_keys=True)


def read_generation_stop_ids(path: str) -> tuple[int, ...]:
    """The eos_token_id(s) of `path`/generation_config.json (one id or a list; () without the
    file or the field): every id transformers' generate() stops at for this folder, e.g. an
    instruct model's end of turn beside its tokenizer's eos."""
    try:
        with open(os.path.join(path, GENERATION_CONFIG_FILE)) as f:
            eos = json.load(f).get("eos_token_id")
    except FileNotFoundError:
        return ()
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{os.path.join(path, GENERATION_CONFIG_FILE)} is not a JSON object ({error}); "
                              "fix or delete it.") from None
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"{os.path.join(path, GENERATION_CONFIG_FILE)}: eos_token_id={eos!r} is not a token "
                              "id or a list of them; fix or delete it.")
    return tuple(dict.fromkeys(ids))


def take(state_dict: StateDict, shapes: dict[str, tuple[int, ...]], model_type: str,
         ignore: Iterable[str] = ()) -> StateDict:
    """The tensors named in `shapes`, checked against them; clear errors for missing,
    misshapen or unexpected tensors (those whose name ends with one of `ignore` excepted,
    e.g. cached attention masks that carry no weights)."""
    missing = [n for n in shapes if n not in state_dict]
    if missing:
        raise CheckpointError(f"{model_type} checkpoint is missing tensors {_some(missing)}; "
                              "does config.json describe these weights?")
    wrong = [f"{n} {tuple(state_dict[n].shape)} (expected {tuple(s)})" for n, s in shapes.items()
             if tuple(state_dict[n].shape) != tuple(s)]
    if wrong:
        raise CheckpointError(f"{model_type} checkpoint has misshapen tensors {_some(wrong)}; "
                              "does config.json (or an override) describe these weights?")
    ignore = tuple(ignore)
    unexpected = sorted(n for n in state_dict if n not in shapes and not n.endswith(ignore))
    if unexpected:
        raise CheckpointError(f"{model_type} checkpoint has tensors this config does not use: {_some(unexpected)}; "
                              "does config.json describe these weights?")
    return {n: state_dict[n] for n in shapes}


def _some(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def strip_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """Drop `prefix` from names that have it (base-model checkpoints are saved without it)."""
    return {(n[len(prefix):] if n.startswith(prefix) else n): v for n, v in state_dict.items()}


def _read_safetensors(file_path: str) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return load_file(file_path)
    except SafetensorError as e:  # a truncated or damaged download
        raise CheckpointError(f"{file_path!r} is not a readable safetensors file ({e}); copy or export it "
                              "again.") from None


def _read_torch(file_path: str) -> StateDict:
    from research.optional_imports import import_optional
    torch = import_optional("torch", f"reading {file_path!r} (safetensors checkpoints need no torch)")
    # weights_only: a .bin is a pickle, and unrestricted unpickling runs arbitrary code.
    try:
        tensors = torch.load(file_path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # truncated, damaged, not a state dict
        raise CheckpointError(f"{file_path!r} is not a readable PyTorch checkpoint ({str(e).splitlines()[0]}); "
                              "copy or export it again.") from None
    # numpy has no bfloat16: widen it (exactly) to float32. detach: a file saved from named_parameters()
    # holds nn.Parameters, whose numpy() raised (transformers loads such a file).
    return {name: (t.float() if t.dtype == torch.bfloat16 else t).detach().numpy() for name, t in tensors.items()}


def _weight_map(index_path: str) -> dict[str, str]:
    """An index file's {tensor name: shard file}; a CheckpointError (one line) when the file is not
    JSON or has no weight_map (both were tracebacks)."""
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path!r} is not a valid checkpoint index ({type(error).__name__}: "
                              f"{str(error)[:80]}); copy it again from the original checkpoint.") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path!r}: weight_map is not a mapping of tensor names to shard files; copy "
                              "it again from the original checkpoint.")
    return weight_map


def _read_index(index_path: str) -> StateDict:
    weight_map = _weight_map(index_path)
    folder = os.path.dirname(index_path)
    reader = _read_safetensors if index_path.endswith(SAFETENSORS_INDEX) else _read_torch
    state_dict: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"{index_path!r} lists shard {shard!r}, which is missing from {folder!r}.")
        state_dict.update(reader(shard_path))
    return state_dict
