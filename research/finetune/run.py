"""`finetune_and_evaluate(config, workdir)`: one entry point for every fine-tuning path.

    config.path   sft | reward | preference | classification | token_classification |
                  text_to_text | grpo | domain (continued pretraining on data.folder)
    config.init   random | checkpoint:<run workdir> | hf:<folder> (research/finetune/base_model.py)
    config.model  preset + ModelConfig overrides; config.tokenizer; config.data (JSONL files or
                  a synthetic rule); config.lora (rank 0 = full fine-tuning); config.preference;
                  config.grpo; config.train / opt / checkpoint / mesh as in pretraining.

Writes metrics.jsonl, tensorboard/ and checkpoints/ in workdir; rerunning resumes.
"""
from __future__ import annotations

from typing import Callable

import ml_collections

from research.finetune.trainer import FinetuneJob, run_job
from research.models.config import ConfigError


# path -> (module, builder) under research.finetune; imported on use.
_BUILDERS = {"sft": ("paths", "sft_job"), "reward": ("paths", "reward_job"),
             "preference": ("paths", "preference_job"), "classification": ("task_paths", "classification_job"),
             "token_classification": ("task_paths", "token_classification_job"),
             "text_to_text": ("task_paths", "text_to_text_job"), "grpo": ("grpo", "grpo_job"),
             "domain": ("domain", "domain_job")}
PATHS = tuple(_BUILDERS)


def build_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    if config.path not in PATHS:
        raise ConfigError(f"path={config.path!r} is not one of {PATHS}.")
    import importlib
    module, builder = _BUILDERS[config.path]
    make: Callable[[ml_collections.ConfigDict], FinetuneJob] = getattr(
        importlib.import_module(f"research.finetune.{module}"), builder)
    return make(config)


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Build the job `config.path` describes and train (or resume) it in `workdir`; returns
    the step-0 evaluation (before_*) and the last train and eval metrics."""
    return run_job(build_job(config), config, workdir)
