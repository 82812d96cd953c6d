"""Pretraining configs: one CPU preset per model family on the stdlib corpus, and real-data
presets for one accelerator host.

Launch (each tiny preset trains in about a minute on a 2-core CPU and checkpoints on the way):

    python -m experiments.pretrain --config=experiments/configs/pretrain.py:gpt_tiny --workdir=/tmp/gpt_tiny
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:bert_tiny --workdir=/tmp/bert_tiny
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:t5_tiny --workdir=/tmp/t5_tiny
    # 3 learning rates of gpt_tiny as one compiled program, into /tmp/lr_sweep/opt.learning_rate=<lr>:
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:gpt_tiny_lr_sweep --workdir=/tmp/lr_sweep

Override any field on the command line, e.g. `--config.opt.learning_rate=1e-3
--config.train.num_steps=500 --config.mesh.shape='(1,-1,1)' --config.model.dtype=bfloat16`.
Rerunning the same command resumes from the latest checkpoint in the workdir; a workdir
holding another run is refused; Ctrl-C or SIGTERM saves at the end of the current block of
steps (train.steps_per_call) and exits 130 / 143.

Real data from flags alone (a SentencePiece tokenizer is trained on the train split unless
--config.data.tokenizer.model_path is given):

    # any TFDS dataset prepared as array_record (`tfds build NAME --file_format=array_record`)
    --config.data.source=tfds --config.data.tfds_name=wikipedia/20230601.en --config.data.data_dir=/data/tfds \\
        --config.data.train_split='train[1%:]' --config.data.validation_split='train[:1%]'
    # local files: .txt/.md/.py one document per file, .jsonl one per line (its text_field)
    --config.data.source=files --config.data.file_patterns='corpus/**/*.jsonl' --config.data.text_field=body
    # several globs: --config.data.file_patterns="('a/*.txt','b/*.jsonl')"

Accelerator presets (C4 via TFDS, `tfds build c4/en --file_format=array_record`; mesh over
all local devices; bf16 compute, float32 master weights). Expected time is computed, not
measured: train FLOPs = research.models.sizing's per-token training FLOPs (6N + attention,
unembedding included) x tokens, divided by 8 x 312e12 FLOP/s (8x A100 bf16 dense peak)
at an *assumed* 40% MFU; scale by your host's peak and the MFU the console line shows.

    gpt2_small_c4  GPT-2 small's shape with V=32768 (111M parameters, 85M non-embedding; GPT-2's
                   124M is at V=50257), T=1024, 256 x 1024 tokens/step, 10,000 steps = 2.6e9
                   tokens (~24 per parameter), 7.2e8 FLOPs/token,
                   1.9e18 FLOPs: about 0.5 h on 8x A100 at 40% MFU.
    llama_1b_c4    TinyLlama-1.1B shape (LLaMA: RoPE, RMSNorm, SwiGLU, GQA 32:4), T=2048,
                   256 x 2048 tokens/step, FSDP over the host, layers scanned and rematerialized,
                   40,000 steps = 2.1e10 tokens (~19 per parameter), 6.8e9 FLOPs/token,
                   1.4e20 FLOPs: about 40 h on 8x A100 at 40% MFU.

    python -m experiments.pretrain --config=experiments/configs/pretrain.py:gpt2_small_c4 \\
        --config.data.data_dir=/data/tfds --workdir=/runs/gpt2_small_c4
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from research.data.config import TokenizerConfig
from research.sharding_rules import DEFAULT_RULES

PRESETS = ("gpt_tiny", "bert_tiny", "t5_tiny")  # CPU runs on the stdlib corpus
# Presets that train several models in one program (config.batched); each model is a PRESETS run.
BATCHED_PRESETS = ("gpt_tiny_lr_sweep",)
ACCELERATOR_PRESETS = ("gpt2_small_c4", "llama_1b_c4")  # real data on one accelerator host
# TokenizerConfig's training settings at its defaults, so that --config.data.tokenizer.<field> can set
# each (a config key must exist to be overridden); spelled out or not, a run's tokenizer is the same.
TOKENIZER_DEFAULTS = {field: getattr(TokenizerConfig(), field)
                      for field in ("model_type", "byte_fallback", "character_coverage", "normalization")}


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # A ModelConfig preset plus field overrides; None keeps the preset's value.
    # bf16 compute keeps float32 master weights.
    config.model = ml_collections.ConfigDict(dict(
        preset="gpt2-tiny", dtype="bfloat16", param_dtype="float32", dropout_rate=0.0,
        num_layers=placeholder(int), d_model=placeholder(int), num_heads=placeholder(int), d_ff=placeholder(int),
        num_kv_heads=placeholder(int), vocab_size=placeholder(int), max_len=placeholder(int),
        scan_layers=placeholder(bool), remat=placeholder(str), attention_kernel=placeholder(str),
        dense_weight_grad=placeholder(str)))
    config.objective = "causal_lm"
    # The objective's options (e.g. mask_rate, noise_density), set whole on the command line:
    # --config.objective_options="{'mask_rate': 0.3}" (the dict declares no keys to override one by one).
    config.objective_options = ml_collections.ConfigDict()
    # research.data.DataConfig: source stdlib | tfds (tfds_name, data_dir, splits; e.g. the output of
    # experiments.prepare_data) | files (file_patterns, text_field for .jsonl) | synthetic.
    config.data = ml_collections.ConfigDict(dict(
        source="stdlib", tfds_name="", data_dir="", file_patterns=(), text_field="text", train_split="train",
        validation_split="validation", validation_fraction=0.05, max_documents=placeholder(int),  # None: every document
        # model_path None trains a tokenizer on the train split (cached in the workdir).
        tokenizer=dict(model_path=placeholder(str), vocab_size=512, max_training_chars=2_000_000,
                       num_extra_ids=0, **TOKENIZER_DEFAULTS)))
    config.train = ml_collections.ConfigDict(dict(
        num_steps=300, batch_size=16, seq_len=128, microbatches=1, seed=0, z_loss=1e-4,
        log_every_steps=10, eval_every_steps=100, eval_batches=8, stop_after_steps=0, peak_flops=0.0,
        # steps per compiled call (0: chosen from the model's FLOPs); models vmapped at once when
        # K models train together (0: all on accelerators, one at a time on CPU).
        progress_bar=True, steps_per_call=0, models_per_call=0, models_across_devices=False))
    # Train one model per value of `field` (seed or an optimizer number) in one program, each into
    # <workdir>/<field>=<value>: e.g. --config.batched.field=opt.learning_rate --config.batched.values='(1e-3,3e-3)'.
    config.batched = ml_collections.ConfigDict(dict(field="", values=()))
    config.opt = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=3e-3, schedule="cosine", warmup_steps=30, decay_fraction=0.2,
        min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep_last=2, keep_best=1, async_save=True,
                                                     keep_every_steps=0))  # also keep each multiple (of every_steps)
    # dcn_shape: on several TPU slices or GPU hosts, how much of each axis crosses the slow network,
    # e.g. --config.mesh.dcn_shape='(2,1,1)' puts data parallelism across 2 of them; () = one slice.
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(), rules=DEFAULT_RULES))
    # Weights & Biases beside TensorBoard: off unless project is set (--config.wandb.project=NAME).
    config.wandb = ml_collections.ConfigDict(dict(project="", entity="", name="", mode="online"))
    return config


def _c4(config: ml_collections.ConfigDict) -> None:
    """C4 (English) from TFDS, a 32k SentencePiece tokenizer trained on 200M characters of it."""
    config.data.update(dict(source="tfds", tfds_name="c4/en", train_split="train", validation_split="validation"))
    config.data.tokenizer.update(dict(vocab_size=32000, max_training_chars=200_000_000))
    config.model.vocab_size = 32768  # the tokenizer's 32000 rounded up to a multiple of 128 (tensor splits)


def _accelerator_config(arg: str) -> ml_collections.ConfigDict:
    config = _base()  # bf16 compute, float32 master weights
    _c4(config)
    config.train.update(dict(batch_size=256, log_every_steps=50, eval_every_steps=1000, eval_batches=20))
    config.checkpoint.update(dict(every_steps=1000, keep_last=2, keep_best=1))
    config.opt.update(dict(name="adamw", schedule="cosine", b2=0.95, weight_decay=0.1, clip_norm=1.0,
                           min_lr_ratio=0.1))
    if arg == "gpt2_small_c4":
        config.model.update(dict(preset="gpt2-small"))
        config.train.update(dict(num_steps=10_000, seq_len=1024))
        config.opt.update(dict(learning_rate=6e-4, warmup_steps=700))
        config.mesh.shape = (-1, 1, 1)  # data parallel: 111M parameters fit on every device
    else:  # llama_1b_c4
        config.model.update(dict(preset="tinyllama-1.1b", scan_layers=True, remat="full"))
        config.train.update(dict(num_steps=40_000, seq_len=2048))
        config.opt.update(dict(learning_rate=3e-4, warmup_steps=2000))
        config.mesh.shape = (1, -1, 1)  # FSDP: parameters and optimizer state split over the host
    return config


def get_config(arg: str = "gpt_tiny") -> ml_collections.ConfigDict:
    """The preset `arg` (one of PRESETS, BATCHED_PRESETS or ACCELERATOR_PRESETS)."""
    if arg in ACCELERATOR_PRESETS:
        return _accelerator_config(arg)
    if arg not in PRESETS + BATCHED_PRESETS:
        raise ValueError(
            f"unknown pretrain preset {arg!r}; choose one of {PRESETS + BATCHED_PRESETS + ACCELERATOR_PRESETS}.")
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
