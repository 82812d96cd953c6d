"""Emergence study configs: a ladder of decoders trained on the stdlib corpus mixed with task
training data, evaluated on held-out task instances (experiments/emergence.py).

Launch (cpu_tiny: 5 sizes, 1e4 to 1e6 non-embedding parameters, 400 steps each; copying evaluated
at every checkpoint, addition of 2 to 6 digits (1000 items each) at the end):

    python -m experiments.emergence --config=experiments/configs/emergence.py:cpu_tiny --workdir=/tmp/emergence

`micro` (2 sizes, a handful of steps) runs end to end in under a minute; tests use it.
Override any field, e.g. `--config.train.num_steps=800 --config.eval.num_test=200`.
Rerunning the same command skips finished training and finished evaluations.

Fields:
  sizes         model presets of the ladder (research.models: "scale-1e4", ...), small to large
  model         ModelConfig overrides applied to every size (vocab_size must hold the tokenizer)
  mixture       corpus_fraction: share of the training characters taken from the corpus
                (the rest are task documents); tasks: {task name: problems drawn for training};
                examples_per_document: (fewest, most) problems per training document
  tokenizer     research.data.TokenizerConfig fields; trained once on the mixture
  train / opt / checkpoint / mesh   as in experiments/configs/pretrain.py, shared by all sizes
  eval          held-out evaluation: tasks, shots, num_test documents per task (every checkpoint),
                final_tasks / final_shots / final_num_test (final checkpoint only), few-shot pool
                (num_train), seed; cot_description: the line that opens chain-of-thought
                prompts (and their training documents), so a zero-shot prompt says which
                format is wanted
  report        metrics summarised and plotted; transition_task: the task whose curve along
                training is tabled and plotted (transition.png)
"""
from __future__ import annotations

import ml_collections

from research.sharding import DEFAULT_RULES

PRESETS = ("cpu_tiny", "gpu_host", "micro")


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # 1e4 and 3e4 have 1 layer, 1e5 2 and 3e5 3 (the copying transition needs >= 2). scale-1e6
    # (4 layers) would take about as long as the other four together on 2 CPU cores.
    config.sizes = ("scale-1e4", "scale-3e4", "scale-1e5", "scale-3e5")
    # float32 compute: on CPU bf16 is emulated and slower.
    config.model = ml_collections.ConfigDict(dict(vocab_size=512, max_len=256, dtype="float32",
                                                  param_dtype="float32", dropout_rate=0.0))
    # Addition of 2 to 6 digits (answers of 2 to 7 digit tokens) for the mirage, and copying
    # (induction, Olsson et al. 2022) for a genuine transition: a 1-layer model cannot form an
    # induction head, a 2-layer one can (scale-1e4 and 3e4 have 1 layer, 1e5 and up 2 or more).
    # A tenth of corpus text: the models' few steps go to the tasks.
    config.mixture = ml_collections.ConfigDict(dict(
        corpus_fraction=0.1, examples_per_document=(1, 16), seed=1,
        tasks={**{f"addition_{k}digit": 8_000 for k in range(2, 7)}, "copying": 10_000}))
    config.tokenizer = ml_collections.ConfigDict(dict(vocab_size=512, max_training_chars=2_000_000))
    config.train = ml_collections.ConfigDict(dict(
        num_steps=1200, batch_size=16, seq_len=128, microbatches=1, seed=0, z_loss=1e-4,
        log_every_steps=50, eval_every_steps=100, eval_batches=4, stop_after_steps=0, peak_flops=0.0,
        progress_bar=False))
    # Learning rate per size by a width transfer rule (muP-like, as the scaling study's
    # sweep.lr_reference_width): learning_rate x lr_reference_width / d_model, so 1e-2 at d_model 48
    # (scale-3e4), 1.7e-2 at 28 (1e4), 7.5e-3 at 64 (1e5), 5e-3 at 96 (3e5). Measured at 400 steps:
    # one 3e-3 for every size left all of them near chance (addition per-digit p 0.15-0.27, copying
    # 0.03-0.05); 1e-2 for all had trained the 1e4 model better and the larger ones worse.
    # 0 turns the rule off (every size at opt.learning_rate). The rates are logged and in results.
    config.lr_reference_width = 48
    config.opt = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-2, schedule="cosine", warmup_steps=60, decay_fraction=0.2,
        min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))
    # Every checkpoint is kept: each is evaluated, giving the curves along training.
    # every 50 steps: 24 points along training for the copying curve (about 1 s to evaluate each).
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=50, async_save=True))
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    # eval.tasks at every checkpoint (the curve along training); eval.final_tasks at the end
    # only, with final_num_test items each (>= 1000: bootstrap intervals of a few points).
    config.eval = ml_collections.ConfigDict(dict(
        tasks=("copying",), shots=(0,), num_test=200, num_train=64,
        final_tasks=tuple(f"addition_{k}digit" for k in range(2, 7)), final_shots=(0,), final_num_test=1000,
        seed=0, batch_size=100, min_bucket=64, cot_description="Work it out step by step.\n"))
    # For --dry_run's time estimate: the devices' peak FLOP/s and an assumed MFU (2 shared CPU
    # cores: ~50 GFLOP/s float32 matmul peak measured by research.training.metrics.measure_peak_flops;
    # 10% MFU assumed: the loop reached ~6% on 1e4-parameter models (issue 8), more on larger ones).
    config.estimate = ml_collections.ConfigDict(dict(peak_flops=50e9, mfu=0.1))
    config.report = ml_collections.ConfigDict(dict(
        metrics=("exact_match", "teacher_forced_accuracy", "teacher_forced_prob", "target_log_prob",
                 "token_edit_distance", "token_accuracy", "brier_score"),
        plot_metrics=("exact_match", "teacher_forced_accuracy", "target_log_prob"),
        transition_task="copying"))
    return config


def get_config(arg: str = "cpu_tiny") -> ml_collections.ConfigDict:
    """The preset `arg` (one of PRESETS)."""
    config = _base()
    if arg == "cpu_tiny":
        pass
    elif arg == "gpu_host":
        # One 8-GPU host: a 7-size ladder 1e5 .. 1e8 non-embedding parameters, 20000 steps of
        # 128 x 256 tokens in bf16. `--dry_run` prints the training FLOPs and the time at
        # config.estimate's peak and MFU. The MFU is an assumption, not a measurement (no
        # accelerator was lent to the session that wrote this); use the `mfu` research.training
        # logs on the host.
        config.sizes = tuple(f"scale-{m}e{e}" for e in range(5, 9) for m in (1, 3) if (m, e) != (3, 8))
        config.model.update(dict(dtype="bfloat16", max_len=256))
        config.train.update(dict(num_steps=20000, batch_size=128, seq_len=256, eval_every_steps=1000))
        config.opt.update(dict(learning_rate=1e-3, warmup_steps=200))
        config.lr_reference_width = 0  # one rate for every size (the width rule is tuned for d_model <= 96)
        config.checkpoint.every_steps = 2000
        config.estimate.update(dict(peak_flops=8 * 989e12, mfu=0.3))  # 8 x H100 SXM bf16 dense; MFU assumed
        config.mixture.tasks = {**{f"addition_{k}digit": 200_000 for k in range(2, 7)}, "copying": 200_000}
        config.eval.update(dict(num_test=1000, batch_size=500))
    elif arg == "micro":
        config.sizes = ("scale-1e4", "scale-3e4")
        config.model.max_len = 128
        config.mixture.tasks = {"addition_1digit": 400, "addition_1digit_cot": 100}
        config.mixture.examples_per_document = (1, 8)
        config.tokenizer.vocab_size = 384
        config.tokenizer.max_training_chars = 100_000
        config.train.update(dict(num_steps=4, batch_size=8, seq_len=64, log_every_steps=2, eval_every_steps=2,
                                 eval_batches=1, peak_flops=1e9))
        config.opt.warmup_steps = 1
        config.checkpoint.every_steps = 2
        config.eval.update(dict(tasks=("addition_1digit", "addition_1digit_cot"), shots=(0, 1), num_test=4,
                                num_train=8, batch_size=4, min_bucket=128, final_tasks=("addition_2digit",),
                                final_num_test=8))
        config.report.transition_task = "addition_1digit"
    else:
        raise ValueError(f"unknown emergence preset {arg!r}; choose one of {PRESETS}.")
    return config
