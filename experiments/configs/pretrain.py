"""Pretraining configs: one preset per model family, each a complete run on the stdlib corpus.

Launch (each tiny preset trains in about a minute on a 2-core CPU and checkpoints on the way):

    python -m experiments.pretrain --config=experiments/configs/pretrain.py:gpt_tiny --workdir=/tmp/gpt_tiny
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:bert_tiny --workdir=/tmp/bert_tiny
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:t5_tiny --workdir=/tmp/t5_tiny
    # 3 learning rates of gpt_tiny as one compiled program, into /tmp/lr_sweep/opt.learning_rate=<lr>:
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:gpt_tiny_lr_sweep --workdir=/tmp/lr_sweep

Override any field on the command line, e.g. `--config.opt.learning_rate=1e-3
--config.train.num_steps=500 --config.mesh.shape='(1,-1,1)' --config.model.dtype=bfloat16`.
Rerunning the same command resumes from the latest checkpoint in the workdir.
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from research.sharding import DEFAULT_RULES

PRESETS = ("gpt_tiny", "bert_tiny", "t5_tiny")
# Presets that train several models in one program (config.batched); each model is a PRESETS run.
BATCHED_PRESETS = ("gpt_tiny_lr_sweep",)


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # A ModelConfig preset plus field overrides; None keeps the preset's value.
    # bf16 compute keeps float32 master weights.
    config.model = ml_collections.ConfigDict(dict(
        preset="gpt2-tiny", dtype="bfloat16", param_dtype="float32", dropout_rate=0.0,
        num_layers=placeholder(int), d_model=placeholder(int), num_heads=placeholder(int), d_ff=placeholder(int),
        max_len=placeholder(int), scan_layers=placeholder(bool), remat=placeholder(str)))
    config.objective = "causal_lm"
    config.objective_options = ml_collections.ConfigDict()  # e.g. mask_rate, noise_density
    config.data = ml_collections.ConfigDict(dict(
        source="stdlib", validation_fraction=0.05, max_documents=placeholder(int),  # None: every document
        # model_path None trains a tokenizer on the train split (cached in the workdir).
        tokenizer=dict(model_path=placeholder(str), vocab_size=512, max_training_chars=2_000_000,
                       num_extra_ids=0)))
    config.train = ml_collections.ConfigDict(dict(
        num_steps=300, batch_size=16, seq_len=128, microbatches=1, seed=0, z_loss=1e-4,
        log_every_steps=10, eval_every_steps=100, eval_batches=8, stop_after_steps=0, peak_flops=0.0,
        progress_bar=True, steps_per_call=0))  # steps per compiled call; 0: chosen from the model's FLOPs
    # Train one model per value of `field` (seed or an optimizer number) in one program, each into
    # <workdir>/<field>=<value>: e.g. --config.batched.field=opt.learning_rate --config.batched.values='(1e-3,3e-3)'.
    config.batched = ml_collections.ConfigDict(dict(field="", values=()))
    config.opt = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=3e-3, schedule="cosine", warmup_steps=30, decay_fraction=0.2,
        min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep_last=2, keep_best=1, async_save=True))
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    return config


def get_config(arg: str = "gpt_tiny") -> ml_collections.ConfigDict:
    """The preset `arg` (one of PRESETS)."""
    if arg not in PRESETS + BATCHED_PRESETS:
        raise ValueError(f"unknown pretrain preset {arg!r}; choose one of {PRESETS + BATCHED_PRESETS}.")
    config = _base()
    # The tiny presets are CPU runs: CPUs have no bf16 matmul units, so float32 is both
    # faster and exact there. Accelerator runs keep the bf16 default (--config.model.dtype).
    config.model.dtype = "float32"
    if arg == "bert_tiny":
        # A masked LM learns from the 15% masked tokens only: it needs ~2x the steps of a GPT.
        config.model.preset = "bert-test"
        config.objective = "masked_lm"
        config.train.num_steps = 600
        config.opt.warmup_steps = 60
        config.checkpoint.every_steps = 200
        config.train.eval_every_steps = 200
    elif arg == "gpt_tiny_lr_sweep":
        # get_sweep()'s learning rates, trained together (research.training.train_together).
        config.batched.update(dict(field="opt.learning_rate", values=tuple(
            override["config.opt.learning_rate"] for override in get_sweep())))
    elif arg == "t5_tiny":
        config.model.preset = "t5-tiny"
        config.objective = "span_corruption"
        config.train.num_steps = 400
        config.opt.warmup_steps = 40
        # T5 sentinels sit above the SentencePiece pieces: 412 pieces + 100 extra ids = V 512.
        config.data.tokenizer.vocab_size = 412
        config.data.tokenizer.num_extra_ids = 100
    return config


def get_sweep() -> list[dict]:
    """A learning-rate sweep over the GPT preset (overrides for launch/)."""
    return [{"config.opt.learning_rate": lr} for lr in (1e-3, 3e-3, 1e-2)]
