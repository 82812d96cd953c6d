"""Where a fine-tuning run starts: a seeded init, a training run's checkpoint, or a Hugging Face folder.

    config.init = "random"              the preset config.model (with overrides), initialised from train.seed
    config.init = "checkpoint:<workdir>"  a research.training run (latest step), its own tokenizer;
                                         or a fine-tuning run's (a LoRA run's adapters merged into
                                         the base step it was trained on, which its run.json
                                         records). Not a reward or tagging run: a head on a body.
    config.init = "hf:<folder>"          a Hugging Face checkpoint folder, its own tokenizer

config.tokenizer ("char", a SentencePiece .model, an HF folder; "" = the run's own) picks
the tokenizer; it must fit the model's vocabulary. Left at the presets' "char" for an init
trained with another tokenizer, it is refused (check_default_tokenizer).
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

import jax
import ml_collections
from flax.core import meta

from research.training.checkpoint_loading import load_checkpoint, load_hf
from research.evaluation.tokenizer_loading import CHAR, check_vocabulary, has_hf_tokenizer, load_tokenizer
from research.models import get_config, layout
from research.models.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


class BaseModel(NamedTuple):
    config: ModelConfig
    params: Any  # host numpy arrays; None for init="random" (the job initialises from the seed)
    tokenizer: Any
    source: str


def _overrides(section: Any) -> dict[str, Any]:
    fields = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
    return {k: v for k, v in fields.items() if v is not None}


def load_base_model(init: str, model_section: Any, tokenizer_spec: str = "", *, step: int | None = None) -> BaseModel:
    """The starting model named by `init` (see module docstring); model_section's fields other
    than `preset` override the loaded config (e.g. dropout_rate, num_labels). step: the step of a
    'checkpoint:' run to load (default its latest): the one a LoRA run on it recorded."""
    overrides = _overrides(model_section)
    preset = overrides.pop("preset", None)
    if init == "random":
        if not preset:
            raise ConfigError("init='random' needs config.model.preset (e.g. gpt2-tiny).")
        model_config = get_config(preset, **overrides)
        tokenizer = load_tokenizer(tokenizer_spec or "char")
        source, params = f"random init of {preset}", None
    elif init.startswith(("checkpoint:", "hf:")):
        kind, path = init.split(":", 1)
        if kind == "checkpoint":
            refuse_head_run(path, "init")
        if kind == "checkpoint" and not tokenizer_spec:
            tokenizer_spec = finetune_run_tokenizer(path)
        if kind == "checkpoint" and lora_run_config(path) is not None:
            merged = load_lora_run(path, step)
            model_config, params, source = merged.config, merged.params, merged.source
            tokenizer = lora_run_tokenizer(path, tokenizer_spec) if tokenizer_spec else merged.tokenizer
        elif kind == "checkpoint":
            loaded = load_checkpoint(path, step=step, tokenizer=tokenizer_spec or None)
            model_config, tokenizer = loaded.model.config, loaded.tokenizer
            params, source = loaded.params, loaded.source
        else:
            loaded = load_hf(path, tokenizer=tokenizer_spec or None)
            model_config, tokenizer = loaded.model.config, loaded.tokenizer
            params, source = loaded.params, loaded.source
        loaded_config = model_config
        model_config = model_config.replace(**overrides) if overrides else model_config
        params = relayout_layers(params, loaded_config, model_config)
    else:
        raise ConfigError(f"init={init!r} must be 'random', 'checkpoint:<run workdir>' or 'hf:<folder>'.")
    check_vocabulary(tokenizer, model_config.vocab_size, model_config.name)
    return BaseModel(model_config, params, tokenizer, source)


def relayout_layers(params: Any, loaded: ModelConfig, wanted: ModelConfig) -> Any:
    """`params` laid out for `wanted.scan_layers` (one stacked "layers" tree, or layers_0, layers_1,
    ...): a config override of scan_layers (the GPU presets set it) met the loaded model's own
    layout, and the first step died on mismatched trees."""
    if params is None or loaded.scan_layers == wanted.scan_layers:
        return params
    names = ("encoder_layers", "decoder_layers") if wanted.family == "encoder_decoder" else ("layers",)
    for name in names:
        params = (layout.stack_layers if wanted.scan_layers else layout.unstack_layers)(params, name)
    return params


def base_model_config(init: str, model_section: Any, depth: int = 0) -> ModelConfig | None:
    """The ModelConfig `load_base_model(init, model_section)` loads, read without any weights (the
    preset, a run's saved config, a Hugging Face config.json), so checks that need only the model's
    shape run before the workdir is claimed; None where this cannot tell (load_base_model then
    loads it, or says in one line why it cannot)."""
    overrides = _overrides(model_section)
    preset = overrides.pop("preset", None)
    if init == "random":
        return get_config(preset, **overrides) if preset else None
    kind, _, path = init.partition(":")
    if kind == "checkpoint":
        from research.training.checkpoint_loading import model_config_from_run, run_config
        refuse_head_run(path, "init")  # before the workdir is claimed, where a check asks (LoRA targets)
        saved = lora_run_config(path)
        if saved is None:
            try:
                model_config = model_config_from_run(run_config(path))
            except ConfigError:
                return None  # not a run: load_checkpoint says why, in its place
        elif depth < 8:  # a LoRA run: the base it was trained on (load_lora_run)
            from research.finetune.run_identity import run_init_spec
            model_config = base_model_config(run_init_spec(path, saved), saved.get("model", {}), depth + 1)
        else:
            return None
    elif kind == "hf":
        from research.models.hf import hf_model_config
        try:
            model_config = hf_model_config(path)
        except (OSError, ValueError):  # no folder or config.json (ConfigError is a ValueError): load_hf says
            return None
    else:
        return None
    return model_config.replace(**overrides) if overrides and model_config is not None else model_config


def job_base_model(config: ml_collections.ConfigDict) -> BaseModel:
    """The base model of a fine-tuning job (config.init / model / tokenizer), with train.seq_len
    checked against its max_len before any data is tokenized or anything compiled."""
    from research.finetune.checks import check_seq_len
    check_default_tokenizer(config.init, config.get("tokenizer", ""))
    base = load_base_model(config.init, config.model, config.get("tokenizer", ""))
    check_seq_len(config.train.seq_len, base.config)
    return base


def check_default_tokenizer(init: str, tokenizer_spec: str) -> None:
    """ConfigError (one line, before any weights load) when config.tokenizer is the presets' default
    "char" but `init` was trained with another tokenizer (a checkpoint's recorded one, a Hugging
    Face folder's own): its character ids meant other pieces to the model, and it trained on them
    silently (check_vocabulary passes, 99 ids <= 512)."""
    if tokenizer_spec != CHAR:  # "" (the init's own) or one given on purpose
        return
    kind, _, path = init.partition(":")
    if kind == "checkpoint":
        try:
            own = finetune_run_tokenizer(path)  # "" for a pretraining run: its own SentencePiece model
        except ConfigError:  # not a run, or a damaged latest step: load_base_model says so, or falls back
            return
        if own == CHAR:
            return
        trained_with = own or "its own SentencePiece model"
    elif kind == "hf" and has_hf_tokenizer(path):
        trained_with = f"the tokenizer in {path!r}"
    else:
        return
    raise ConfigError(f"config.tokenizer='char' is the presets' default, but init={init!r} was trained with "
                      f"{trained_with}, whose ids mean other tokens; pass --config.tokenizer= for its own.")


def finetune_run_tokenizer(path: str, depth: int = 0, saved: dict[str, Any] | None = None) -> str:
    """The tokenizer spec a fine-tuning run in `path` trained with ("" for a pretraining run,
    whose own SentencePiece model load_checkpoint finds): its config.tokenizer, or when that
    was "" (the base's own) the tokenizer of the run it started from."""
    from research.finetune.run_identity import run_init_spec, run_tokenizer_spec
    from research.training.checkpoint_loading import checkpoint_root, run_config, run_tokenizer_path, run_workdir
    saved = run_config(path) if saved is None else saved  # the step being loaded, else the latest
    if "path" not in saved or "init" not in saved:  # a pretraining run
        # A parent's own model by path: "" would send its fine-tuned child's load_checkpoint to
        # look for the child's (a fine-tuning run trains no tokenizer), and find none.
        return run_tokenizer_path(saved, run_workdir(checkpoint_root(path))) if depth else ""
    if depth > 8:
        return ""
    # The chain is followed through run.json's absolute paths (run_identity.run_init_spec).
    if tokenizer := run_tokenizer_spec(path, saved):
        return tokenizer
    kind, _, parent = run_init_spec(path, saved).partition(":")
    if kind == "checkpoint":
        return finetune_run_tokenizer(parent, depth + 1)
    return parent if kind == "hf" else "char"  # init="random" trains with load_base_model's default


# The paths whose job ends a generated turn at its chat template's turn end (FinetuneJob.stop_ids,
# which its export's generation_config.json lists); the others train no turns.
_CHAT_PATHS = ("sft", "preference", "grpo")


def finetune_run_stop_ids(saved: dict[str, Any], tokenizer: Any) -> tuple[int, ...]:
    """The ids the fine-tuning run whose saved config is `saved` was trained to end a turn at, as
    its job's stop_ids (and so its export's generation_config.json): a chat path's turn_end_ids of
    its data.chat_template (chatml's <|im_end|>: no eos), () for any other path or run."""
    from research.data.chat_templates import get_chat_template, turn_end_ids
    if saved.get("path") not in _CHAT_PATHS:
        return ()
    return turn_end_ids(get_chat_template(dict(saved.get("data") or {}).get("chat_template", "plain")), tokenizer)


def lora_run_tokenizer(path: str, spec: str) -> Any:
    """Tokenizer `spec` for the LoRA run in `path`, loaded as any fine-tuning run's checkpoint loads
    one (checkpoint_loading's run tokenizer: a SentencePiece file with the T5 sentinels of the run's
    chain). Loaded without them, a T5 LoRA run given its own .model, or used as an init with
    tokenizer '', had vocabulary 412 for 512."""
    from research.training.checkpoint_loading import run_config, run_tokenizer
    return run_tokenizer(run_config(path), path, spec)


def finetune_run_sentinels(path: str, depth: int = 0, saved: dict[str, Any] | None = None) -> int:
    """The T5 sentinels (data.tokenizer.num_extra_ids) of the pretraining run at the root of the
    run in `path`'s chain of checkpoint inits: a fine-tuning run's config has no data.tokenizer,
    and its SentencePiece model (its ancestor's) lost the sentinels that run appended. saved: the
    config of the step being loaded (default the latest's: a damaged latest step must not stop
    loading an earlier one)."""
    from research.finetune.run_identity import run_init_spec
    from research.training.checkpoint_loading import run_config
    saved = run_config(path) if saved is None else saved
    if "path" not in saved or "init" not in saved:  # a pretraining run
        return int(saved.get("data", {}).get("tokenizer", {}).get("num_extra_ids", 0) or 0)
    kind, _, parent = run_init_spec(path, saved).partition(":")
    return finetune_run_sentinels(parent, depth + 1) if kind == "checkpoint" and depth < 8 else 0


def load_reference(spec: str) -> tuple[ModelConfig, Any]:
    """(config, host params) of a frozen reference model: "checkpoint:<run workdir>" or "hf:<folder>"."""
    import os

    from research.training.checkpoint_loading import (checkpoint_root, checkpoint_steps_in, model_config_from_run,
                                                        restore_params, run_config)
    kind, _, path = spec.partition(":")
    if kind == "checkpoint":
        refuse_head_run(path, "preference.reference")
    if kind == "checkpoint" and lora_run_config(path) is not None:
        merged = load_lora_run(path)
        return merged.config, merged.params
    if kind == "checkpoint":
        root = checkpoint_root(path)
        step = checkpoint_steps_in(root)[-1]
        return model_config_from_run(run_config(root, step)), restore_params(os.path.join(root, str(step)))
    if kind == "hf":
        from research.models import from_hf
        if not os.path.isdir(path):
            raise ConfigError(f"reference Hugging Face folder {path!r} does not exist.")
        model, params = from_hf(path)
        return model.config, params
    raise ConfigError(f"preference.reference={spec!r} must be '' (the initial policy), 'checkpoint:<run workdir>' "
                      "or 'hf:<folder>'.")


def check_same_vocabulary(policy: ModelConfig, reference: ModelConfig, what: str = "reference") -> None:
    """Log-prob ratios compare the same token ids: the two models must share a vocabulary."""
    if policy.vocab_size != reference.vocab_size:
        raise ConfigError(f"the {what} model {reference.name!r} has vocabulary size {reference.vocab_size} but the "
                          f"policy {policy.name!r} has {policy.vocab_size}; use a {what} trained with the policy's "
                          "tokenizer (or leave it empty to use the initial policy).")


def abstract_and_init(model: Any, example_args: tuple, example_kwargs: dict | None = None):
    """(boxed abstract params, seed -> unboxed params) of `model` on example inputs."""
    kwargs = dict(example_kwargs or {})

    def init(key):
        return model.init({"params": key}, *example_args, **kwargs)["params"]

    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    return boxed, (lambda seed: meta.unbox(jax.jit(init)(jax.random.fold_in(jax.random.PRNGKey(seed), 0))))


# Paths whose model is a zoo model (a LoRA run of theirs merges into a usable base); the reward
# and tagging paths put a head on a body, which no other path loads.
_ZOO_MODEL_PATHS = ("sft", "preference", "grpo", "domain", "classification", "text_to_text")
# Their checkpoints hold {"body", "head"} (heads.path_model), not a zoo model's tree: loaded as one
# they died in a device_put or flax traceback, and a tagging run as a further tagger's init was
# told its body "lacks" the very modules it has. A classification run is a zoo model: it loads.
_HEAD_PATHS = {"reward": "a scalar reward head", "token_classification": "a per-token tagging head"}


def refuse_head_run(path: str, what: str | None) -> None:
    """ConfigError (one line) when the run in `path` is one of a head path (see _HEAD_PATHS), which
    no loader here rebuilds as a model (nor merges a LoRA one into); `what` names the setting that
    gave it ("init", "preference.reference"), None a checkpoint loaded to evaluate or generate."""
    from research.training.checkpoint_loading import run_config
    try:
        saved = run_config(path)
    except ConfigError:  # not a run, or a damaged latest step: the loader says so, or falls back
        return
    kind = saved.get("path")
    if kind not in _HEAD_PATHS:
        return
    from research.finetune.run_identity import run_init_spec
    given = f"{what}=checkpoint:{path}" if what else f"checkpoint {path!r}"
    use = f"start from its base ({run_init_spec(path, saved)})"
    use += f" or score with it (grpo.reward=reward_model:{path})" if kind == "reward" else ""
    raise ConfigError(f"{given} is a path={kind!r} run: {_HEAD_PATHS[kind]} on its body, not a model this loads; "
                      f"give a pretraining run or a fine-tuning run of path {', '.join(_ZOO_MODEL_PATHS)}: {use}.")


def lora_run_config(path: str) -> dict[str, Any] | None:
    """The saved config of the fine-tuning LoRA run in `path` (latest step); None for any other run."""
    from research.training.checkpoint_loading import run_config
    try:
        saved = run_config(path)
    except ConfigError:
        return None  # not a run (load_checkpoint says why, in one line)
    return saved if "path" in saved and (saved.get("lora") or {}).get("rank") else None


def lora_base_step(path: str, base_init: str) -> int | None:
    """The step of its 'checkpoint:' base `base_init` that the LoRA run in `path` trained on (run.json's
    init_checkpoint_step; every step of the run has the same: a resume on a moved base is refused).
    Merged into the base's latest step instead, the model changed silently whenever the base run
    was continued. None for a base that is no run, or, with a warning, a run recorded before."""
    from research.finetune.run_identity import recorded_init_steps
    from research.training.checkpoint_loading import checkpoint_root, checkpoint_steps, run_workdir
    kind, _, base = base_init.partition(":")
    if kind != "checkpoint":
        return None
    workdir = run_workdir(checkpoint_root(path))
    recorded = recorded_init_steps(workdir)
    if not recorded:
        log.warning("LoRA run %s: its run.json records no base step (written before it did), so its adapters are "
                    "merged into the latest step of its base %s, which may not be the one they were trained on.",
                    workdir, base)
        return None
    held = checkpoint_steps(base)
    if recorded[0] not in held:
        raise ConfigError(f"LoRA run {workdir!r} was trained on step {recorded[0]} of its base {base!r}, which no "
                          f"longer holds it (steps {held}): restore that step there, or train the LoRA run again "
                          "on the base as it is now (a new --workdir).")
    return recorded[0]


def load_lora_run(path: str, step: int | None = None) -> BaseModel:
    """A LoRA run's model at `step` (default its latest): its checkpoint holds only the adapters
    (and fresh heads), so the base step it was trained on (lora_base_step: run.json's init and
    init_checkpoint_step) is loaded and they are merged in."""
    import os

    import numpy as np

    from research.finetune.lora import BASE, LoraConfig, merged_params
    from research.finetune.run_identity import check_init_files, run_init_spec, run_tokenizer_spec
    from research.models import build_model
    from research.training.checkpoint_loading import checkpoint_root, checkpoint_steps_in, restore_params, run_workdir
    root = checkpoint_root(path)
    held = checkpoint_steps_in(root)
    if step is not None and step not in held:
        raise ConfigError(f"checkpoint step {step} is not in {root!r}; it holds steps {held}.")
    step = held[-1] if step is None else step
    saved = lora_run_config(path) or {}
    if saved.get("path") not in _ZOO_MODEL_PATHS:
        raise ConfigError(f"checkpoint:{path} is a LoRA run of path={saved.get('path')!r}, whose task head no other "
                          "path loads; start from its base model (its config.init) instead.")
    base_init = run_init_spec(root, saved)
    check_init_files(run_workdir(root))  # an hf: base rewritten since: the adapters fit its old weights
    base = load_base_model(base_init, saved.get("model", {}), run_tokenizer_spec(root, saved),
                           step=lora_base_step(root, base_init))
    params = base.params
    if params is None:  # init='random': the seeded init the LoRA run started from (fold_in(seed, 0))
        ones = np.ones((1, 8), np.int32)
        model = build_model(base.config)
        _, init = abstract_and_init(model, (ones, ones) if base.config.family == "encoder_decoder" else (ones,))
        params = init(int(saved.get("train", {}).get("seed", 0)))
    section = dict(saved["lora"])
    lora = LoraConfig(**{**section, "targets": tuple(section.get("targets", ()))})
    saved_params = restore_params(os.path.join(root, str(step)))
    merged = jax.device_get(jax.jit(lambda p: merged_params(p, lora))({**saved_params, BASE: params}))
    return BaseModel(base.config, merged, base.tokenizer, f"LoRA run {root} step {step} merged into {base.source}")
