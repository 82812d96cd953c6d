"""Load a trained model for inference (evaluation, generation, fine-tuning).

From a training run's checkpoint, or a Hugging Face folder:

    loaded = load_checkpoint("runs/gpt_tiny")              # latest step; the run's own tokenizer
    loaded = load_checkpoint("runs/gpt_tiny", step=200, tokenizer="char")
    loaded = load_hf("hf/gpt2_folder")                      # tokenizer from the same folder if present
    harness = Harness(loaded.model, loaded.params, loaded.tokenizer, stop_ids=loaded.stop_ids,
                      bidirectional_prompt=loaded.bidirectional_prompt)  # as experiments.evaluate builds it

A run directory is what research.training.train_and_evaluate writes: checkpoints/<step>/
{state, data, config} and tokenizers/. Only the parameters are read from `state` (an orbax
partial restore, as host numpy arrays), so neither the optimizer state nor the run's mesh
is needed. The model is rebuilt from the config saved with the checkpoint; the tokenizer
is the run's SentencePiece model (data.tokenizer.model_path, else the one the run trained
and cached under <run>/tokenizers).

Everything a user can get wrong (a directory without checkpoints, a missing step, a
tokenizer that does not fit the model) fails here with one line, before any compilation.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
from typing import Any, Literal, NamedTuple, Union

import flax.linen as nn

from research.evaluation.tokenizer import TextTokenizer
from research.evaluation.tokenizer_loading import check_vocabulary, has_hf_tokenizer, load_tokenizer
from research.models import build_model, get_config
from research.models.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)
CHECKPOINTS_DIR = "checkpoints"  # under a run's workdir (research.training.loop)
# The key of a fine-tuning run's saved config holding its model's full ModelConfig.to_dict().
RESOLVED_MODEL = "resolved_model"
BEST = "best"  # step=BEST: the held step with the lowest saved eval loss (checkpoint.keep_best keeps it)
Step = Union[int, Literal["best"], None]


class LoadedModel(NamedTuple):
    model: nn.Module
    params: Any  # host numpy arrays, unboxed
    tokenizer: TextTokenizer
    source: str  # "checkpoint <dir> step <n>" or "hf <dir>", for reports
    step: int | None  # training step of a checkpoint; None for Hugging Face weights
    # Ids generation stops at besides the tokenizer's eos: a Hugging Face folder's
    # generation_config.json eos_token_id list (e.g. ChatML's <|im_end|>, which to_hf writes there).
    stop_ids: tuple[int, ...] = ()
    # A prefix-LM decoder (trained with its prefix attended both ways, losses' prefix_mask_BT):
    # generation reads the prompt as that prefix (research.decoding's bidirectional_prompt).
    bidirectional_prompt: bool = False


def checkpoint_root(path: str) -> str:
    """The directory holding numbered step directories: `path` itself or `path`/checkpoints."""
    for candidate in (os.path.join(path, CHECKPOINTS_DIR), path):
        if checkpoint_steps_in(candidate):
            return candidate
    if os.path.isfile(path):
        raise ConfigError(f"{path!r} is a file, not a checkpoint directory; give a training run's workdir.")
    if not os.path.isdir(path):
        raise ConfigError(f"checkpoint directory {path!r} does not exist; give a training run's workdir.")
    step_dir = _step_dir_of(path)
    if step_dir is not None:  # a user pointing at one step (or its state/) means that step of its run
        root = os.path.dirname(step_dir)
        step = os.path.basename(step_dir)
        raise ConfigError(f"{path!r} is step {step} of the checkpoints in {root!r}, not a run; give the run's "
                          f"workdir {run_workdir(root)!r} with --step={step} (step={step}).")
    raise ConfigError(f"no checkpoint in {path!r} (nor in {os.path.join(path, CHECKPOINTS_DIR)!r}); give the "
                      "workdir of a run that saved one (experiments.pretrain) or its checkpoints/ folder.")


def _step_dir_of(path: str) -> str | None:
    """The numbered step directory `path` is (<root>/<n>) or lies in (<root>/<n>/state, ...); None otherwise."""
    path = os.path.normpath(os.path.abspath(path))
    for candidate in (path, os.path.dirname(path)):
        name = os.path.basename(candidate)
        root = os.path.dirname(candidate)
        if name.isdigit() and int(name) in checkpoint_steps_in(root):
            return candidate
    return None


def run_workdir(root: str) -> str:
    """The run's workdir for a checkpoint root (its parent when the root is <workdir>/checkpoints)."""
    return os.path.dirname(os.path.normpath(root)) if os.path.basename(os.path.normpath(root)) == CHECKPOINTS_DIR \
        else root


def checkpoint_steps_in(directory: str) -> list[int]:
    """Committed checkpoint steps in `directory`, ascending ([] if none).

    Orbax writes a step into a temporary directory and renames it to the bare number only
    when every item is complete, so numeric names with a `state` item are finished saves.
    """
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name, "state")))


def checkpoint_steps(path: str) -> list[int]:
    """Steps of the run (or checkpoints folder) at `path`; ConfigError when there are none."""
    return checkpoint_steps_in(checkpoint_root(path))


def run_config(path: str, step: Step = None) -> dict[str, Any]:
    """The run config saved with checkpoint `step` (default latest), as a plain dict."""
    root = checkpoint_root(path)
    step = _pick_step(root, step)
    step_dir = os.path.join(root, str(step))
    config_file = os.path.join(step_dir, "config", "metadata")
    if not os.path.isfile(config_file):
        raise DamagedCheckpointError(f"checkpoint {step_dir!r} holds no config item; it is damaged (or was not "
                                     "written by research.training): pick another step (--step=N) or retrain.")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not an object")
    except (OSError, ValueError) as error:  # a truncated file (JSONDecodeError, UnicodeDecodeError are ValueErrors)
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DamagedCheckpointError(f"checkpoint {step_dir!r} cannot be read (its config: {reason}); it is "
                                     "damaged: pick another step (--step=N) or retrain.") from None
    return config


def model_config_from_run(config: dict[str, Any]) -> ModelConfig:
    """The ModelConfig a run trained: the resolved one a fine-tuning run saves (RESOLVED_MODEL),
    else its preset plus the fields it overrode (None keeps the preset's)."""
    resolved = config.get(RESOLVED_MODEL)
    if isinstance(resolved, dict):
        # A fine-tuning run's model section is only a preset and overrides on top of what its
        # init loaded (a checkpoint's or Hugging Face folder's own config), so rebuilding it
        # from the preset alone gave another model. Fields this code no longer has are dropped.
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in resolved.items() if k in known})
    fields = {k: v for k, v in dict(config["model"]).items() if v is not None}
    return get_config(fields.pop("preset"), **fields)


def run_tokenizer_path(config: dict[str, Any], workdir: str) -> str:
    """The SentencePiece model the run trained with: data.tokenizer.model_path, else the one it
    trained and cached in <workdir>/tokenizers (research.data.build_tokenizer)."""
    from research.data.config import DataConfig, DataError
    from research.data.tokenizer import cached_model_path
    tokenizer = dict(config.get("data", {}).get("tokenizer", {}))
    if tokenizer.get("model_path"):
        path = tokenizer["model_path"]
        if "://" not in path and not os.path.exists(path):  # the run recorded the path, not a copy
            raise ConfigError(f"run {workdir!r} was trained with data.tokenizer.model_path={path!r}, which no "
                              "longer exists; give that model's new path as the tokenizer (experiments.generate / "
                              "evaluate: --tokenizer=PATH.model; fine-tuning: --config.tokenizer=PATH.model).")
        return path
    try:
        expected = cached_model_path(DataConfig(**config["data"]), workdir)
    except (DataError, KeyError, TypeError):
        expected = None  # e.g. the corpus has moved; fall back to what the folder holds
    if expected and os.path.isfile(expected):
        return expected
    cached = sorted(glob.glob(os.path.join(workdir, "tokenizers", "*.model")))
    if len(cached) == 1:
        return cached[0]
    raise ConfigError(f"cannot tell which tokenizer run {workdir!r} trained with ({len(cached)} models in "
                      f"{os.path.join(workdir, 'tokenizers')!r}); pass --tokenizer=PATH.model.")


def restore_params(step_dir: str) -> Any:
    """The `params` subtree of the train state saved in `step_dir`, as numpy arrays."""
    import orbax.checkpoint as ocp

    from research.training.checkpointing import quiet_restore

    # Absolute: orbax's metadata() of a relative path comes back empty (item_metadata=None).
    state_dir = os.path.join(os.path.abspath(step_dir), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        with quiet_restore():  # orbax warns that an item folder has no step metadata (it needs none), and more
            return _restore_params(checkpointer, state_dir, step_dir)
    except ConfigError:
        raise
    except Exception as error:  # orbax/tensorstore errors on truncated or missing files: one line, not a traceback
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DamagedCheckpointError(f"checkpoint {step_dir!r} cannot be read ({reason}); it is damaged: pick "
                                     "another step (--step=N) or retrain.") from None


def _restore_params(checkpointer: Any, state_dir: str, step_dir: str) -> Any:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    metadata = checkpointer.metadata(state_dir)
    saved = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
    if saved is None:
        # orbax returns no tree (no exception) when the state's metadata files are missing or
        # truncated: the path is absolute here, so that is damage, said as such (not an AttributeError).
        raise DamagedCheckpointError(f"checkpoint {step_dir!r} cannot be read (orbax finds no tree metadata in "
                                     f"{state_dir!r}); it is damaged: pick another step (--step=N) or retrain.")
    tree = saved.tree
    if "params" not in tree:
        raise ConfigError(f"checkpoint {step_dir!r} has no params in its state (found {sorted(tree)}).")
    item = {"params": jax.tree.map(lambda _: 0, tree["params"])}
    restore_args = {"params": jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree["params"])}
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))
    return restored["params"]


class DamagedCheckpointError(ConfigError):
    """A checkpoint step whose files cannot be read (truncated, missing, corrupted)."""


def load_checkpoint(path: str, *, step: Step = None, tokenizer: str | None = None,
                    **model_overrides: Any) -> LoadedModel:
    """Model, params and tokenizer of a run's checkpoint `step` (default: latest; BEST: the held
    step with the lowest saved eval loss).

    path: the run's workdir (or its checkpoints/ folder). tokenizer: a load_tokenizer spec
    replacing the run's own. model_overrides: ModelConfig fields (e.g. dtype="float32").
    """
    from research.finetune.base_model import lora_run_config, refuse_head_run, relayout_layers  # it imports this module
    root = checkpoint_root(path)
    workdir = run_workdir(root)
    if lora_run_config(root) is not None:  # its checkpoint holds only adapters: merge them into its base
        return _load_lora_run(root, step, tokenizer, model_overrides)
    refuse_head_run(root, None)  # a reward or tagging run's tree is no zoo model: one line, not a traceback
    # The latest step may be damaged (a save killed mid-write, a truncated copy): its config or
    # its params unreadable. Fall back to the newest intact one, as training's resume does, and
    # say so. An explicitly requested step never falls back.
    candidates = [_pick_step(root, step)] if step is not None else sorted(checkpoint_steps_in(root), reverse=True)
    text_tokenizer = None
    for index, candidate in enumerate(candidates):
        try:
            config = run_config(root, candidate)
            saved_config = model_config_from_run(config)
            model_config = saved_config.replace(**model_overrides) if model_overrides else saved_config
            if text_tokenizer is None:  # checked before the params are read: a wrong tokenizer fails at once
                text_tokenizer = run_tokenizer(config, workdir, tokenizer)
            check_vocabulary(text_tokenizer, model_config.vocab_size, model_config.name)
            # An override of scan_layers changes the model's parameter tree too (stacked or per layer).
            params = relayout_layers(restore_params(os.path.join(root, str(candidate))), saved_config, model_config)
        except DamagedCheckpointError as error:
            if index == len(candidates) - 1:
                raise
            log.warning("%s Falling back to an earlier step.", error)
            continue
        step = candidate
        break
    return LoadedModel(build_model(model_config), params, text_tokenizer, f"checkpoint {root} step {step}", step,
                       *_run_generation(config, model_config, text_tokenizer))


def _load_lora_run(root: str, step: Step, tokenizer: str | None,
                   model_overrides: dict[str, Any]) -> LoadedModel:
    """A fine-tuning LoRA run's model: its adapters merged into the base it was trained on."""
    from research.finetune.base_model import load_lora_run, relayout_layers
    from research.finetune.run_identity import base_is_recorded
    latest = _pick_step(root, None)
    picked = latest if step is None else _pick_step(root, step)  # _pick_step names the steps held
    # Every step of a LoRA run was trained on the one base its run.json records (a checkpoint: base's
    # step, an hf: folder's files, checked where it loads; a random init is its seed's), so any step
    # merges into it; without that record the base is read as it is now, which fits the latest only.
    if picked != latest and not base_is_recorded(run_workdir(root)):
        raise ConfigError(f"{root!r} is a LoRA run whose run.json records no base step (nor its hf: folder's files; "
                          f"written before it did): only its latest step {latest} can be merged into its base (read "
                          "as it is now); drop --step, or export that step with the run.")
    merged = load_lora_run(root, picked)
    model_config = merged.config.replace(**model_overrides) if model_overrides else merged.config
    params = relayout_layers(merged.params, merged.config, model_config)
    saved = run_config(root, picked)
    text_tokenizer = run_tokenizer(saved, root, tokenizer) if tokenizer else merged.tokenizer
    check_vocabulary(text_tokenizer, model_config.vocab_size, model_config.name)
    return LoadedModel(build_model(model_config), params, text_tokenizer, merged.source, picked,
                       *_run_generation(saved, model_config, text_tokenizer))


def _run_generation(config: dict[str, Any], model_config: ModelConfig,
                    tokenizer: TextTokenizer) -> tuple[tuple[int, ...], bool]:
    """(stop_ids, bidirectional_prompt) of a run's model, as it was trained (config: the saved one).

    stop_ids: a chat fine-tuning run's turn ends, the ids its export's generation_config.json lists
    (chatml ends a turn with <|im_end|>, never eos: generation from the checkpoint ran on past it).
    bidirectional_prompt: the objective was prefix_lm on a decoder, a pretraining run's `objective`
    or a domain-adaptation run's data.objective (the other fine-tuning paths train causally)."""
    from research.finetune.base_model import finetune_run_stop_ids
    stop_ids = tuple(i for i in finetune_run_stop_ids(config, tokenizer) if i < model_config.vocab_size)
    if "path" in config and "init" in config:  # a fine-tuning run (see run_tokenizer)
        objective = dict(config.get("data") or {}).get("objective") if config.get("path") == "domain" else None
    else:
        objective = config.get("objective")
    return stop_ids, model_config.family == "decoder" and objective == "prefix_lm"


def run_tokenizer(config: dict[str, Any], workdir: str, tokenizer: str | None) -> TextTokenizer:
    """The tokenizer to load a run's checkpoint with: `tokenizer` (a load_tokenizer spec), else the run's own."""
    # The run's SentencePiece model carries its T5 sentinels (data.tokenizer.num_extra_ids):
    # without them the vocabulary looks smaller, so generation would never emit a sentinel and
    # decoding one would be an out-of-range error. That holds for a .model given explicitly too
    # (the "cannot tell which tokenizer" error asks for the run's own that way); "char" and
    # Hugging Face folders have no sentinels to add.
    sentinels = int(config.get("data", {}).get("tokenizer", {}).get("num_extra_ids", 0) or 0)
    if "path" in config and "init" in config:
        # A fine-tuning run's config.tokenizer ("" meaning its init's own), not a pretraining
        # run's data.tokenizer: resolved along its chain of inits, sentinels too.
        from research.finetune.base_model import finetune_run_sentinels, finetune_run_tokenizer
        sentinels = finetune_run_sentinels(workdir, saved=config)
        tokenizer = tokenizer or finetune_run_tokenizer(workdir, saved=config)
    if tokenizer and not os.path.isfile(tokenizer):
        sentinels = 0
    return load_tokenizer(tokenizer or run_tokenizer_path(config, workdir), num_extra_ids=sentinels)


def load_hf(path: str, *, tokenizer: str | None = None, add_bos_token: bool | None = None,
            **model_overrides: Any) -> LoadedModel:
    """A Hugging Face checkpoint folder; the tokenizer defaults to the folder's own.

    add_bos_token: lm-eval's HFLM option (load_tokenizer); False turns off the special
    tokens the evaluation harness otherwise adds to contexts."""
    from research.models import from_hf
    from research.models.hf.checkpoint_files import CheckpointError, read_generation_stop_ids

    if not os.path.isdir(path):
        raise ConfigError(f"Hugging Face folder {path!r} does not exist.")
    if tokenizer is None:
        if not has_hf_tokenizer(path):
            raise ConfigError(f"Hugging Face folder {path!r} holds no tokenizer files; pass --tokenizer (a folder "
                              "with tokenizer.json, a SentencePiece .model, or 'char').")
        tokenizer = path
    text_tokenizer = load_tokenizer(tokenizer, add_bos_token=add_bos_token)
    try:
        model, params = from_hf(path, **model_overrides)
        stop_ids = read_generation_stop_ids(path)
    except (CheckpointError, FileNotFoundError) as e:  # damaged weights, or a file the folder lacks
        raise ConfigError(str(e)) from None
    check_vocabulary(text_tokenizer, model.config.vocab_size, model.config.name)
    return LoadedModel(model, params, text_tokenizer, f"hf {path}", None,
                       tuple(i for i in stop_ids if i < model.config.vocab_size))


def parse_step(text: str | None) -> Step:
    """A --step flag's value: None (the latest), BEST, or a step number; one line otherwise."""
    if text is None or text == BEST:
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--step={text!r} must be a step number or {BEST!r} (the kept step with the lowest eval "
                          "loss); default: the latest.") from None


def saved_eval_loss(step_dir: str) -> float | None:
    """The eval loss a step was saved with (checkpoint.keep_best's ranking), None if it has none."""
    from research.training.checkpointing import BEST_METRIC, METRICS_ITEM
    try:
        with open(os.path.join(step_dir, METRICS_ITEM, METRICS_ITEM), encoding="utf-8") as f:
            loss = json.load(f).get(BEST_METRIC)
    except (OSError, ValueError, AttributeError):  # none saved, or an unreadable record: not ranked
        return None
    return float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else None


def best_step(root: str) -> int:
    """The held step with the lowest saved eval loss (the later step on a tie), as keep_best ranks them."""
    scored = [(loss, -step) for step in checkpoint_steps_in(root)
              if (loss := saved_eval_loss(os.path.join(root, str(step)))) is not None]
    if not scored:
        raise ConfigError(f"no checkpoint in {root!r} was saved with an eval loss (checkpoint.keep_best=0, or no "
                          f"evaluation at its save steps), so none is {BEST!r}; give a step number (--step=N).")
    return -min(scored)[1]


def _pick_step(root: str, step: Step) -> int:
    steps = checkpoint_steps_in(root)
    if not steps:
        raise ConfigError(f"no checkpoint in {root!r}.")
    if step is None:
        return steps[-1]
    if step == BEST:
        return best_step(root)
    if isinstance(step, bool) or not isinstance(step, int):
        raise ConfigError(f"step={step!r} must be a step number, {BEST!r} or None (the latest).")
    if step not in steps:
        raise ConfigError(f"checkpoint step {step} is not in {root!r}; it holds steps {steps}.")
    return step
