"""`finetune_and_evaluate(config, workdir)`: one entry point for every fine-tuning path.

    config.path   sft | reward | preference | classification | token_classification |
                  text_to_text | grpo | domain (continued pretraining on data.folder)
    config.init   random | checkpoint:<run workdir> | hf:<folder> (research/finetune/base_model.py)
    config.model  preset + ModelConfig overrides; config.tokenizer; config.data (JSONL files or
                  a synthetic rule); config.lora (rank 0 = full fine-tuning); config.preference;
                  config.grpo; config.train / opt / checkpoint / mesh as in pretraining.

Writes run.json (the run's identity, research/finetune/run_identity.py), metrics.jsonl,
tensorboard/ and checkpoints/ in workdir; rerunning the same run resumes, another run is refused.
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
    the step-0 evaluation (before_*) and the last train and eval metrics.

    The workdir is claimed first (a workdir holding another run is refused in one line,
    before any loading); a bad input found later withdraws the claim, and removes a workdir
    this call created that holds no checkpoint, so the corrected command starts clean. A stop
    (Ctrl-C, SIGTERM) before the first checkpoint withdraws the claim too: nothing of the run
    exists to resume, so a changed command must not be refused as another run, and its records
    (metrics.jsonl, TensorBoard events) go too."""
    import jax

    from research.data import DataError
    from research.finetune.checks import check_config
    from research.finetune.run_identity import claim_workdir
    from research.training.metrics import MetricWriter
    from research.training import preemption, workdir as workdir_lib, workdir_lock

    check_config(config)  # values no run could use: one line before the workdir is touched
    errors = (ConfigError, DataError)
    with workdir_lib.removed_if_failed(workdir, errors):
        claimed = claim_workdir(workdir, config.to_dict(), record=jax.process_index() == 0)
        writer = None
        try:
            job = build_job(config)
            writer = MetricWriter(workdir)
            return run_job(job, config, workdir, writer)
        except (*errors, KeyboardInterrupt, preemption.Interrupted):  # a bad input, or a Ctrl-C / SIGTERM
            # Only a claim with no checkpoint yet is withdrawn, and with it the records this call
            # wrote (a rerun would show them beside its own); an error there is a warning line, the
            # stop (or the bad input's error) stays what is raised.
            if jax.process_index() == 0 and workdir_lib.unclaim(claimed) and writer is not None:
                writer.discard_or_warn()
            raise
        finally:
            if writer is not None:
                writer.close()
            workdir_lock.release([workdir])  # the run is over: another command may train here
