"""Fine-tuning configs: one tiny CPU preset per path, and presets for an accelerator host.

Launch (each tiny preset runs on 2 CPU cores in about a minute or two, checkpointing on the way):

    python -m experiments.finetune --config=experiments/configs/finetune.py:sft_tiny --workdir=/tmp/ft/sft
    python -m experiments.finetune --config=experiments/configs/finetune.py:sft_lora_tiny --workdir=/tmp/ft/lora
    python -m experiments.finetune --config=experiments/configs/finetune.py:reward_tiny --workdir=/tmp/ft/rm
    python -m experiments.finetune --config=experiments/configs/finetune.py:dpo_tiny --workdir=/tmp/ft/dpo
    python -m experiments.finetune --config=experiments/configs/finetune.py:classify_tiny --workdir=/tmp/ft/cls
    python -m experiments.finetune --config=experiments/configs/finetune.py:tag_tiny --workdir=/tmp/ft/tag
    python -m experiments.finetune --config=experiments/configs/finetune.py:t5_tiny --workdir=/tmp/ft/t5
    python -m experiments.finetune --config=experiments/configs/finetune.py:grpo_tiny --workdir=/tmp/ft/grpo
    python -m experiments.finetune --config=experiments/configs/finetune.py:domain_tiny --workdir=/tmp/ft/domain \\
        --config.data.folder=/path/to/domain_text --config.init=checkpoint:/tmp/gpt_tiny --config.tokenizer=

The tiny presets start from a randomly initialised tiny model (init='random') with the
character tokenizer and a synthetic data set whose truth is checkable (data.synthetic);
point them at real data and weights with e.g.
`--config.init=checkpoint:/tmp/gpt_tiny --config.tokenizer= --config.data.train_file=sft.jsonl
--config.data.eval_file=sft_eval.jsonl`. The `*_gpu` presets are the same paths at a size
for one accelerator host (init from a Hugging Face folder given on the command line).
Rerunning the same command resumes from the latest checkpoint in the workdir.
"""
from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from research.finetune.checks import NO_GENERATION_PATHS
from research.finetune.lora import DEFAULT_TARGETS
from research.sharding_rules import DEFAULT_RULES

TINY = ("sft_tiny", "sft_lora_tiny", "reward_tiny", "dpo_tiny", "dpo_lora_tiny", "ipo_tiny", "simpo_tiny",
        "classify_tiny", "tag_tiny", "t5_tiny", "grpo_tiny", "domain_tiny")
GPU = ("sft_lora_gpu", "dpo_gpu", "grpo_gpu")
PRESETS = TINY + GPU


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.path = "sft"
    config.init = "random"  # | checkpoint:<run workdir> | hf:<folder>
    # "" = the init's own. Left at "char" with an init trained with another tokenizer, the run is
    # refused (base_model.check_default_tokenizer): its ids would mean other pieces to the model.
    config.tokenizer = "char"
    config.model = ml_collections.ConfigDict(dict(
        preset="gpt2-tiny", dtype="float32", dropout_rate=0.0, num_layers=placeholder(int),
        d_model=placeholder(int), max_len=placeholder(int), scan_layers=placeholder(bool), num_labels=placeholder(int),
        dense_weight_grad=placeholder(str)))
    config.data = ml_collections.ConfigDict(dict(
        train_file="", eval_file="", chat_template="plain", synthetic="arithmetic", num_train=2048,
        num_eval=128, seed=0))
    config.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets=DEFAULT_TARGETS))
    config.preference = ml_collections.ConfigDict(dict(loss="dpo", beta=0.1, simpo_gamma=0.5,
                                                       label_smoothing=0.0, reference=""))
    config.grpo = ml_collections.ConfigDict(dict(group_size=8, max_new_tokens=8, temperature=1.0, kl_coef=0.05,
                                                 reward="rule"))
    # Dropout off in the train step's forward (trl's disable_dropout); None: trl's default for the
    # path, on for preference and reward (DPOConfig / RewardConfig), off elsewhere (GRPOConfig, SFT).
    config.disable_dropout = placeholder(bool)
    # Tokens of the greedy completions of eval prompts (exact match, rule reward); GRPO's presets
    # leave it unset: its evaluation completes grpo.max_new_tokens, as its samples (another value
    # is refused there).
    config.generation_tokens = 8
    config.generation_prompts = 32
    config.export_dir = ""
    # No peak_flops / progress_bar keys: the fine-tuning trainer logs neither MFU nor a bar, and an
    # override of a key nothing reads was accepted and ignored.
    config.train = ml_collections.ConfigDict(dict(
        num_steps=200, batch_size=16, seq_len=64, microbatches=1, seed=0, z_loss=0.0, log_every_steps=10,
        eval_every_steps=100, eval_batches=8, stop_after_steps=0))
    config.opt = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=3e-3, schedule="cosine", warmup_steps=10, decay_fraction=0.2,
        min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=1.0))
    # keep_every_steps: also keep each multiple of it, itself a multiple of every_steps (a stop's extra
    # save counts toward keep_last; without it a run stopped at 13 and resumed kept 13 and 20 where a
    # straight run keeps 10 and 20).
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep_last=2, keep_best=1, async_save=True,
                                                       keep_every_steps=0))
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), dcn_shape=(), rules=DEFAULT_RULES))  # dcn_shape: as pretrain.py
    return config


DEFAULT_PRESET = "sft_tiny"  # what a --config without ":preset" builds


def get_config(arg: str = DEFAULT_PRESET) -> ml_collections.ConfigDict:
    """The preset `arg` (one of PRESETS)."""
    if arg not in PRESETS:
        raise ValueError(f"unknown finetune preset {arg!r}; choose one of {PRESETS}.")
    config = _base()
    name = arg.rsplit("_", 1)[0]
    if name in ("sft_lora", "dpo_lora"):
        config.lora.rank = 8
        config.opt.learning_rate = 1e-2
    if name.startswith("sft"):
        config.path = "sft"
    elif name == "reward":
        config.path = "reward"
        config.data.synthetic = "capitals"
        config.train.num_steps = 100
        config.train.eval_every_steps = 50
        config.checkpoint.every_steps = 50
    elif name in ("dpo", "dpo_lora", "ipo", "simpo"):
        config.path = "preference"
        config.data.synthetic = "capitals"
        config.preference.loss = {"dpo_lora": "dpo"}.get(name, name)
        config.train.num_steps = 100
        config.train.eval_every_steps = 50
        config.checkpoint.every_steps = 50
        config.opt.learning_rate = 1e-3 if name != "dpo_lora" else 1e-2
    elif name == "classify":
        config.path = "classification"
        config.model.preset = "bert-test"
        config.model.num_labels = 2
        config.data.synthetic = "sentiment"
        config.train.num_steps = 100
        config.train.eval_every_steps = 50
        config.checkpoint.every_steps = 50
    elif name == "tag":
        config.path = "token_classification"
        config.model.preset = "bert-test"
        config.data.synthetic = "char_classes"  # 3 classes: letter, digit, punctuation
        # Tags per token, a config key so a data set's own count can be given on the command line
        # (--config.num_token_labels=9); it was read with a default of 3 and no key to set it.
        config.num_token_labels = 3
        config.train.num_steps = 100
        config.train.eval_every_steps = 50
        config.checkpoint.every_steps = 50
    elif name == "t5":
        # A T5-style label sentence ("the review is positive"): capitals' one-word character
        # copies stayed at exact match 0 after 300 steps (see data.synthetic in task_paths.py).
        config.path = "text_to_text"
        config.model.preset = "t5-tiny"
        config.data.synthetic = "sentiment"
        config.generation_tokens = 24  # the 22-character target + eos
        # The evaluation's beam width, a key so --config.num_beams=1 can set it (it was read with a
        # default of 4 and no key, so the command line refused the flag).
        config.num_beams = 4
        config.train.num_steps = 300
    elif name == "domain":
        # Continued pretraining on a folder of .txt / .md files (data.folder, required), with the
        # base model's own tokenizer: point init at a checkpoint (and tokenizer="" for its own).
        config.path = "domain"
        config.data = ml_collections.ConfigDict(dict(folder="", validation_fraction=0.1, data_dir="", objective=""))
        config.train.update(dict(num_steps=100, eval_every_steps=50, eval_batches=4))
        config.checkpoint.every_steps = 50
        config.opt.learning_rate = 1e-3
    elif name == "grpo":
        config.path = "grpo"
        config.generation_tokens = placeholder(int)  # None: the evaluation completes grpo.max_new_tokens
        config.data.synthetic = "capitals"
        config.grpo.kl_coef = 0.2
        config.train.num_steps = 60
        config.train.batch_size = 8  # prompts per step; x group_size completions
        config.train.eval_every_steps = 20
        config.checkpoint.every_steps = 20
        config.opt.learning_rate = 3e-3
        config.opt.warmup_steps = 0
        config.opt.schedule = "constant"
        # None: GRPO's evaluation scores the greedy completions of the first generation_prompts
        # eval prompts and has no loss batches to count (a value is warned about, not used).
        config.train.eval_batches = placeholder(int)
    if config.path in NO_GENERATION_PATHS:
        # None: nothing in these paths' evaluations generates text (a value is warned about, not used).
        config.generation_tokens = placeholder(int)
        config.generation_prompts = placeholder(int)
    if arg.endswith("_gpu"):
        # One accelerator host, from Hugging Face weights: --config.init=hf:/path/to/llama_folder.
        config.init = "hf:"
        config.tokenizer = ""
        # Rematerialize all but the projections' matmul outputs (attention logits, which grow
        # with seq_len squared, are recomputed): the usual trade-off for long sequences.
        config.model = ml_collections.ConfigDict(dict(dtype="bfloat16", scan_layers=True,
                                                      remat="dots_with_no_batch_dims"))
        config.data.chat_template = "chatml"
        config.train.update(dict(batch_size=64, seq_len=1024, num_steps=2000, eval_every_steps=200,
                                 log_every_steps=10))
        config.checkpoint.every_steps = 500
        config.opt.learning_rate = 2e-4 if config.lora.rank else 5e-7
        config.mesh.shape = (1, -1, 1)  # fully sharded data parallel over the host's chips
        if name == "sft_lora":
            config.lora.rank = 16
            config.lora.alpha = 32.0
            config.lora.dropout = 0.05
    return config


def get_sweep(preset: str | None = None) -> list[dict]:
    """A beta sweep of a preference preset (overrides for launch/, which passes the preset:
    path.py:dpo_tiny). Other paths read no preference.beta: their three jobs would be one run.
    Without a preset the jobs build get_config's default (sft), so that is what is checked: a
    default of dpo_tiny here passed the check and launched three identical SFT runs."""
    preset = preset or DEFAULT_PRESET
    path = get_config(preset).path
    if path != "preference":
        raise ValueError(f"the sweep of this file varies preference.beta, which preset {preset!r} (path {path!r}) "
                         "does not read; launch a preference preset, e.g. experiments/configs/finetune.py:dpo_tiny.")
    return [{"config.preference.beta": beta} for beta in (0.05, 0.1, 0.3)]
