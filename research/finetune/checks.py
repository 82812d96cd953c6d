"""Checks of a fine-tuning config that need no weights or data: run before the workdir is claimed.

Every bad value a user can give on the command line fails here in one line naming the value
and the fix, before any loading or compilation, instead of after training (export_dir on a
head model, data.num_eval=0), as a NaN or an OOM (seq_len past the model's max_len, checked
when the base model's config is known: `check_seq_len`) or silently (a SimPO reference, a
LoRA dropout at rank 0). The loop's own settings (config.train / opt / checkpoint) are checked
by the pretraining loop's configs (trainer.loop_configs). Because they come before the claim, a
bad value on a workdir that already holds a run is named as such, not refused as "another run"
(whose hint is to delete the workdir). The objective's sections (preference, grpo, lora) are
checked by building their configs; lora.targets are matched against the base model's parameter
paths, read from its config alone (base_model.base_model_config), where that can be read.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from research.atomic_files import unwritable_reason
from research.finetune.preference_data import SyntheticRule
from research.models.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

# Paths whose model carries a head with no Hugging Face layout here (trainer._export).
NO_EXPORT_PATHS = ("reward", "token_classification")
# The paths whose records go through data.chat_template (the classifiers, text-to-text and domain
# runs read plain text).
CHAT_PATHS = ("sft", "preference", "reward", "grpo")
# Paths whose loss has no LM softmax for train.z_loss (PaLM's log Z regulariser of the LM head) to act
# on: a scalar reward head, or a classifier's few classes. It was accepted there and ignored.
NO_Z_LOSS_PATHS = {"reward": "a scalar reward head's Bradley-Terry loss",
                   "classification": "a sequence classifier's cross-entropy over its labels",
                   "token_classification": "a per-token classifier's cross-entropy over its tags"}
# Paths whose evaluation generates no text (a loss, a reward head's accuracy, a classifier's
# labels): generation_tokens / generation_prompts were accepted there and ignored.
NO_GENERATION_PATHS = {"reward": "a reward head's loss and accuracy on pairs",
                       "classification": "a classifier's predicted labels",
                       "token_classification": "a tagger's predicted tags",
                       "domain": "the objective's loss and accuracy"}
# The synthetic sets each path generates (data.synthetic): preference_data's rules, task_paths' sets.
# A classifier or tagger ignored the value, so a typo trained on the sentiment data silently.
_PREFERENCE_RULES = SyntheticRule.__args__
SYNTHETIC_SETS = {"sft": _PREFERENCE_RULES, "reward": _PREFERENCE_RULES, "preference": _PREFERENCE_RULES,
                  "grpo": _PREFERENCE_RULES, "classification": ("sentiment",),
                  "token_classification": ("char_classes",), "text_to_text": ("sentiment", *_PREFERENCE_RULES)}


def config_section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """config[name] (a ConfigDict or mapping) as a plain dict; {} when absent or None."""
    value = config.get(name) or {}
    return value.to_dict() if hasattr(value, "to_dict") else dict(value)


def _check_folder_spec(name: str, spec: Any) -> None:
    """One line when a 'checkpoint:' / 'hf:' / 'reward_model:' spec names a local folder that does not exist."""
    kind, _, where = str(spec or "").partition(":")
    if kind in ("checkpoint", "hf", "reward_model") and "://" not in where and not os.path.isdir(where):
        raise ConfigError(f"{name}={spec!r}: {where!r} is not a folder; give a run workdir (checkpoint:) or a Hugging "
                          "Face folder (hf:) that exists.")


def check_config(config: Mapping[str, Any]) -> None:
    """ConfigError (one line) for a value no run of this config could use (see module docstring)."""
    path = config.get("path")
    data = config_section(config, "data")
    # Paths are checked here, not where they load: by then a workdir holding a finished run had
    # refused the changed config as "another run" and advised deleting it, for a typo in a path.
    folder = data.get("folder")
    if folder and "://" not in str(folder) and not os.path.isdir(str(folder)):
        raise ConfigError(f"data.folder={folder!r} is not a folder; give a folder of .txt / .md files.")
    _check_folder_spec("init", config.get("init"))
    if path == "grpo":
        _check_folder_spec("grpo.reward", config_section(config, "grpo").get("reward"))
    for split in ("train", "eval"):
        file = data.get(f"{split}_file")
        if file and not os.path.isfile(file):
            raise ConfigError(f"data.{split}_file={file!r}: no such JSONL file; check the path.")
        key = f"num_{split}"
        if key in data and data.get("synthetic") and not data.get(f"{split}_file") and int(data[key]) <= 0:
            raise ConfigError(f"data.{key}={data[key]} must be positive: it is the size of the synthetic {split} set "
                              f"(e.g. --config.data.{key}=128), or give data.{split}_file.")
    check_synthetic(path, data)
    tokens, prompts = config.get("generation_tokens", 16), config.get("generation_prompts", 32)
    if path in NO_GENERATION_PATHS:
        warn_unread_settings(path, config)
    else:
        if path == "grpo":
            check_grpo_generation_tokens(tokens, config_section(config, "grpo"))
        elif tokens is None or int(tokens) <= 0:  # None: a grpo or classifier preset's, run on another path
            raise ConfigError(f"generation_tokens={tokens} must be positive: it is how many tokens each evaluation "
                              "completion may have (e.g. --config.generation_tokens=16).")
        if prompts is None or int(prompts) < 0:
            raise ConfigError(f"generation_prompts={prompts} must be >= 0: how many evaluation prompts are "
                              "completed (0 = none; e.g. --config.generation_prompts=32).")
    if path == "grpo":
        warn_unread_settings(path, config)
    from research.data.chat_templates import CHAT_TEMPLATES
    if data.get("chat_template", "plain") not in CHAT_TEMPLATES:
        raise ConfigError(f"data.chat_template={data['chat_template']!r} is not one of {sorted(CHAT_TEMPLATES)} "
                          "(e.g. --config.data.chat_template=plain).")
    if data.get("chat_template", "plain") != "plain" and path not in CHAT_PATHS:
        # It was ignored without a word. Warned, not refused: the value is in the run's identity
        # (run_identity.py), so refusing it would strand a run started with it, and unsetting it
        # would be refused as another run (preference.label_smoothing under IPO is treated alike).
        log.warning("data.chat_template=%r has no effect on path=%r: only %s render chat records; the records are "
                    "read as plain text.", data["chat_template"], path, ", ".join(CHAT_PATHS))
    if path == "preference":
        from research.finetune.preference_losses import PreferenceConfig
        preference = config_section(config, "preference")
        if preference.get("reference") and preference.get("loss") == "simpo":
            raise ConfigError(f"preference.reference={preference['reference']!r} is unused: SimPO needs no reference "
                              "model; unset --config.preference.reference (or use loss 'dpo' / 'ipo').")
        PreferenceConfig(**{k: v for k, v in preference.items() if k != "reference"})
        _check_folder_spec("preference.reference", preference.get("reference"))
        check_reference_model(preference.get("reference"), int(config_section(config, "train").get("seq_len", 0)))
    if path == "grpo":
        from research.finetune.grpo import GrpoConfig, check_prompt_budget
        check_prompt_budget(int(config_section(config, "train").get("seq_len", 0)),
                            GrpoConfig(**config_section(config, "grpo")))
    z_loss = float(config_section(config, "train").get("z_loss", 0.0) or 0.0)
    from research.training.losses import check_z_loss
    check_z_loss(z_loss)  # before "has no effect" below: nan is truthy
    if z_loss and path in NO_Z_LOSS_PATHS:
        raise ConfigError(f"train.z_loss={z_loss} has no effect on path={path!r}: its loss ({NO_Z_LOSS_PATHS[path]}) "
                          "has no LM softmax to regularise; set --config.train.z_loss=0.")
    if path == "text_to_text" and int(config.get("num_beams", 4)) < 1:
        raise ConfigError(f"num_beams={config['num_beams']} must be >= 1: the beams of the evaluation's beam search "
                          "(1 = greedy decoding; e.g. --config.num_beams=4).")
    if path == "domain":  # an objective the base's family cannot train (masked_lm for a decoder)
        from research.finetune.domain import check_domain_objective
        check_domain_objective(config)
    from research.finetune.trainer import dropout_disabled
    lora = config_section(config, "lora")
    if lora.get("rank") and lora.get("dropout") and dropout_disabled(config):
        raise ConfigError(f"lora.dropout={lora['dropout']} has no effect: disable_dropout is on for path={path!r} "
                          "(unset, it is on for preference and reward, as trl's disable_dropout, which zeroes the "
                          "adapters' dropout too); set --config.lora.dropout=0, or --config.disable_dropout=False.")
    check_lora_targets(config)
    if config.get("export_dir") and path in NO_EXPORT_PATHS:
        raise ConfigError(f"export_dir={config['export_dir']!r}: path={path!r} trains a model with a task head, "
                          "which has no Hugging Face export here; unset export_dir.")
    if config.get("export_dir"):
        check_export_dir(str(config["export_dir"]))
        check_export_not_a_base(config)
        check_export_architecture(config)
    # The loop's own settings (opt.warmup_steps past num_steps, a learning rate <= 0, checkpoint.every_steps
    # or train.batch_size 0) were refused only in run_job, after the claim and the job's loading.
    from research.finetune.trainer import loop_configs
    loop_configs(config)


def check_synthetic(path: Any, data: Mapping[str, Any]) -> None:
    """data.synthetic must be a set `path` generates, where it is read (a split without a file,
    or GRPO's rule reward), and data.num_eval within a finite set's held-out items."""
    rule = data.get("synthetic")
    both_files = data.get("train_file") and data.get("eval_file")
    if not rule or path not in SYNTHETIC_SETS or (both_files and path != "grpo"):
        return
    if rule not in SYNTHETIC_SETS[path]:
        raise ConfigError(f"data.synthetic={rule!r} is not a synthetic set of path={path!r}; choose one of "
                          f"{SYNTHETIC_SETS[path]} (e.g. --config.data.synthetic={SYNTHETIC_SETS[path][0]}), or give "
                          "data.train_file and data.eval_file.")
    from research.finetune.preference_data import EVAL_CAPACITY
    capacity, num_eval = EVAL_CAPACITY.get(rule), int(data.get("num_eval", 0) or 0)
    if capacity is not None and not data.get("eval_file") and num_eval > capacity:
        raise ConfigError(f"data.num_eval={num_eval}: the synthetic {rule!r} set holds {capacity} prompts apart from "
                          f"its training prompts; set --config.data.num_eval={capacity} or less, or give "
                          "data.eval_file.")


def warn_unread_settings(path: Any, config: Mapping[str, Any]) -> None:
    """One warning per setting that `path` never reads: generation_* where nothing generates,
    train.eval_batches on GRPO (its evaluation completes prompts; it has no loss batches). Their
    presets leave them None. Warned, not refused: harmless, and a script that sets them for every
    preset (as the tests' tiny_config does) should not fail on the paths that do not read them."""
    if path in NO_GENERATION_PATHS:
        for key in ("generation_tokens", "generation_prompts"):
            if config.get(key) is not None:
                log.warning("%s=%s has no effect on path=%r: its evaluation generates no text (it scores %s); "
                            "ignored (this path's presets leave --config.%s unset).", key, config[key], path,
                            NO_GENERATION_PATHS[path], key)
    if path == "grpo":
        eval_batches = config_section(config, "train").get("eval_batches")
        if eval_batches is not None:
            log.warning("train.eval_batches=%s has no effect on path='grpo': its evaluation scores the greedy "
                        "completions of the first %s eval prompts (generation_prompts, at least 1) and has no loss "
                        "batches; ignored (the grpo presets leave it unset; --config.generation_prompts sets the "
                        "prompts).", eval_batches,
                        max(int(config.get("generation_prompts", 32) or 0), 1))  # as grpo.py


def check_grpo_generation_tokens(tokens: Any, grpo: Mapping[str, Any]) -> None:
    """GRPO's evaluation completes as many tokens as its samples (grpo.max_new_tokens), so the
    reward it reports is of replies like those it trains on: a generation_tokens of its own was
    accepted and silently ignored. Unset (the grpo presets) or equal to grpo.max_new_tokens passes."""
    from research.finetune.grpo import GrpoConfig
    max_new_tokens = grpo.get("max_new_tokens", GrpoConfig.max_new_tokens)
    if tokens is not None and int(tokens) != int(max_new_tokens):
        raise ConfigError(f"generation_tokens={tokens} has no effect on path='grpo': its evaluation completes "
                          f"grpo.max_new_tokens={max_new_tokens} tokens, as its samples; set "
                          f"--config.grpo.max_new_tokens={tokens} instead of --config.generation_tokens.")


def check_export_dir(export_dir: str) -> None:
    """export_dir must be a local writable folder or creatable in one: a file there was found only
    after the last step, as a raw FileExistsError / NotADirectoryError."""
    if "://" in export_dir:
        # The export writes with os and open (models/hf/checkpoint_files.py): 'gs://b/x' became a local
        # folder ./gs:/b/x, and the run logged the export as done.
        raise ConfigError(f"export_dir={export_dir!r} is a URL, which the Hugging Face export cannot write; give a "
                          "local folder, then copy it there (e.g. gcloud storage cp -r DIR URL, or gsutil -m cp -r).")
    if reason := unwritable_reason(export_dir):
        raise ConfigError(f"export_dir={export_dir!r}: {reason}; give a writable folder, or a new path in one, "
                          "for the Hugging Face export.")


def check_export_architecture(config: Mapping[str, Any]) -> None:
    """The trained model must be one a Hugging Face architecture computes, read from the base's config
    where that needs no weights: a model to_hf cannot write (an emergence size as LLaMA) failed after
    all its training, and a decoder trained with data.objective='prefix_lm' (its prompt read both
    ways) was exported as a causal GPT-2 / LLaMA that transformers reads causally (logits 0.02-0.07
    off after a few steps), without a word."""
    from research.finetune.base_model import base_model_config
    model_config = base_model_config(config.get("init", "random"), config.get("model") or {})
    if model_config is None:  # read when the job loads the base; to_hf then names what it cannot write
        return
    from research.models.hf import check_exportable
    try:
        check_exportable(model_config)
    except ConfigError as error:
        raise ConfigError(f"export_dir={config['export_dir']!r}: {error} Unset export_dir; the run's checkpoints still "
                          "load with research.training.load_checkpoint.") from None
    objective = str(config_section(config, "data").get("objective") or "")
    if config.get("path") == "domain" and model_config.family == "decoder" and objective == "prefix_lm":
        raise ConfigError(f"export_dir={config['export_dir']!r}: data.objective='prefix_lm' trains a decoder that "
                          "reads its prompt both ways, which no Hugging Face decoder does (transformers would read "
                          "it causally: another model); unset export_dir and load the run with load_checkpoint.")


def check_export_not_a_base(config: Mapping[str, Any]) -> None:
    """export_dir must not be (nor lie in) a Hugging Face folder the run loads: its hf: init, its
    preference reference, or one at the root of such a run's chain of checkpoint inits. The base is
    reloaded at every resume and LoRA merge, so an export into it merged the adapters again at each
    rerun (another model and eval_loss each time)."""
    from research.finetune.run_identity import recorded_init
    export = os.path.realpath(str(config["export_dir"]))
    specs = [config.get("init")]
    for path, key in (("preference", "reference"), ("grpo", "reward")):
        if config.get("path") == path:
            specs.append(config_section(config, path).get(key))
    for spec in specs:
        given = spec
        for _ in range(8):  # a chain of runs, never a cycle
            kind, _, where = str(spec or "").partition(":")
            if kind not in ("checkpoint", "reward_model") or not (spec := recorded_init(where)):
                break
        if kind == "hf" and "://" not in where and _within(export, os.path.realpath(where)):
            via = "" if spec == given else f" (the base of {given})"
            raise ConfigError(f"export_dir={config['export_dir']!r} lies in the Hugging Face folder {where!r} the run "
                              f"loads{via}: the export would overwrite that model (a rerun would load the export); "
                              "give a folder outside it.")


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def lora_check_tree(config: Mapping[str, Any]) -> Any | None:
    """The abstract parameter tree (shapes only) that LoRA adapts in a run of `config`, built as
    the job builds its model (heads.path_model) and split as trainer.run_job splits it (the fresh
    heads train in full); None where the base model's config cannot be read without its weights."""
    from research.finetune.base_model import abstract_and_init, base_model_config
    from research.finetune.heads import path_model
    from research.finetune.lora import split_trained
    model_config = base_model_config(config.get("init", "random"), config.get("model") or {})
    if model_config is None:
        return None
    # Parameter shapes do not depend on the input length (learned positions are max_len rows).
    model, example, new_modules = path_model(config, model_config, min(8, model_config.max_len))
    boxed, _ = abstract_and_init(model, example)  # shapes only: nothing is computed
    return split_trained(boxed, new_modules)[0]


def check_lora_targets(config: Mapping[str, Any]) -> None:
    """config.lora's values (trainer.lora_config: LoraConfig's errors, a dropout at rank 0) and,
    where the base model's config can be read without its weights, lora.targets against the
    parameters the run adapts (lora.target_paths: a pattern matching nothing, or a parameter LoRA
    does not adapt). The tree is the job's own: a head model's body lacks the zoo model's LM head,
    pooler and MLM head, so a pattern matching only those passed here and failed after the claim."""
    from research.finetune.trainer import lora_config
    lora = lora_config(config)
    if lora is None:
        return
    from research.finetune.lora import target_paths
    tree = lora_check_tree(config)
    if tree is not None:  # otherwise checked when the job builds its model (trainer.run_job), after the claim
        target_paths(tree, lora)


def check_reference_model(spec: Any, seq_len: int) -> None:
    """A preference reference scores the policy's rows token by token, so it must be a decoder (an
    encoder's output at t sees token t + 1: a BERT run of the same vocabulary gave log-ratios that
    mean nothing, and trained on silently) whose positions reach train.seq_len (a shorter max_len
    raised a traceback at the step-0 scoring, after the claim). Read from its config alone; a spec
    this cannot read is left to load_reference."""
    kind, _, path = str(spec or "").partition(":")
    if kind not in ("checkpoint", "hf"):
        return
    from research.finetune.base_model import base_model_config, refuse_head_run
    if kind == "checkpoint":
        refuse_head_run(path, "preference.reference")
    reference = base_model_config(str(spec), {})
    if reference is None:
        return
    if reference.family != "decoder":
        kind_text = {"encoder": "an encoder-only model", "encoder_decoder": "an encoder-decoder model"}.get(
            reference.family, f"a {reference.family} model")
        raise ConfigError(f"preference.reference={spec!r} holds {reference.name!r}, {kind_text}; a reference scores "
                          "replies token by token, so give a decoder-only (GPT/LLaMA) run or Hugging Face folder, or "
                          "leave it empty for the initial policy.")
    if seq_len > reference.max_len:
        raise ConfigError(f"preference.reference={spec!r} holds {reference.name!r} with max_len={reference.max_len} < "
                          f"train.seq_len={seq_len}; set --config.train.seq_len={reference.max_len} or less, or give "
                          "a reference with a longer max_len.")


def check_seq_len(seq_len: int, model: ModelConfig) -> None:
    """train.seq_len must fit the model's position range (learned positions end at max_len)."""
    if not 0 < int(seq_len) <= model.max_len:
        raise ConfigError(f"train.seq_len={seq_len} must lie in [1, {model.max_len}], the max_len of {model.name}; "
                          f"set --config.train.seq_len={min(max(int(seq_len), 1), model.max_len)} or less.")
