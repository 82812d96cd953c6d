"""Scaling-law sweeps: a model ladder x token or FLOP budgets, trained through the training system.

Launch (trains every run, skips finished ones on rerun, resumes interrupted ones, then fits):

    python -m experiments.scaling_laws --config=experiments/configs/scaling_laws.py:cpu_tiny --workdir=/tmp/sweep
    python -m experiments.scaling_laws --config=experiments/configs/scaling_laws.py:gpu_host --workdir=DIR --dry_run

Presets (each a complete run config of experiments/configs/pretrain.py plus `sweep` and `fit`):

  cpu_tiny   a ladder of 10 GPT-2-style models with rotary positions and 4-wide heads, 9 of them trained (1.8e3 .. 5.9e4
             non-embedding params, 2-3 layers each) x 4 IsoFLOP budgets 3.16e10 .. 1e12 FLOPs (1.5
             decades), 6 sizes per budget centred at 200 tokens per parameter, plus the smallest
             budget again with seed 1 (run-to-run noise; the two seeds of a size train together as
             one program) = 30 runs, 118M tokens; learning rate 2e-2 x 32 / d_model per size (a 1/width
             transfer rule checked by a learning-rate sweep; no cap, lr_scale_cap=0), times
             (500 / steps) ** 0.5 for runs longer than 500 steps (lr_horizon_*: the best rate falls
             about as 1 / sqrt(steps)), recorded per run; on
             a capacity-limited synthetic corpus (hierarchical Zipf-weighted order-3 Markov source
             over 16 letters: entropy rate 1.512, reachable bound 1.525 nats/target (eos included), bigram level H_1
             1.959). Designed for a quiet 2-core machine; README.md's scaling section gives
             what was measured.
  stdlib_tiny  the design on real text (the embedded stdlib corpus, 128 character-level pieces):
             4 budgets 3.16e11 .. 1.78e12 (0.75 decades), 6 sizes each at 150 tokens per parameter,
             seed repeats at the smallest, learning rate 1e-2 x 32 / d_model. Measured (2026-12-03,
             seeds merged, 26:30 on 2 cores): IsoFLOP minima at 211-240 tokens per parameter,
             Approach 3 210-235; seed noise 2.4% (so the 1.78e12 profile is not U-shaped),
             held-out +2.2%. (Before seeds were merged, 33:22: 210-240 and 244-256.)
  gpu_host   a 10-rung ladder (1e6 .. 5.1e8 non-embedding params) x budgets 1e17 .. 3.16e18 FLOPs, 6 per
             budget, seed repeats at 1e17, centred on Chinchilla's 20 tokens per parameter, batch
             128 x 512 tokens in bf16, on the same kind of corpus over 64 characters. `--dry_run`
             prints the FLOPs and the time at the stated peak and MFU (an estimate: the MFU is an
             assumption, not a measurement; see the preset).
  tokens_tiny  Approach 1's design on the same corpus: the 5 smallest models x 3 token budgets
             (D/N = 40, 120, 360) = 15 runs, 19.1M tokens, 1.51e12 FLOPs: about a seventh of
             cpu_tiny's 1.11e13 (`--dry_run`: 0.031 h against 0.23 h at the same assumed MFU).
  test_tiny  5 runs of a few steps each, for the test suite (tests/scaling/test_sweep_run.py); one
             tokens-per-parameter ratio, so not fitted (fit.enabled=False).

`--config.train.seed=S` trains the whole sweep again with other seeds: every run with S (a
repeated run with S plus its sweep.repeat_seeds offset); run ids then end in -seed<S>. Fields
the sweep sets for each run (train.num_steps, stop_after_steps, log_every_steps, progress_bar,
opt.warmup_steps) are None here and refused when given. Any other field can be overridden, e.g.
`--config.sweep.budgets='(1e11, 1e12)' --config.opt.learning_rate=3e-3` or, for real text,
`--config.data.source=tfds --config.data.tfds_name=lm1b --config.data.validation_split=test
--config.data.tokenizer.vocab_size=8192 --config.data.tokenizer.byte_fallback=True` (a TFDS dataset
built under --config.data.data_dir; lm1b has train and test splits).
`get_sweep()` splits a sweep into shards for launch/ (one job per shard, one shared workdir):

    python -m launch --config=experiments/configs/scaling_laws.py:cpu_tiny --module=experiments.scaling_laws \\
        --workdir=/tmp/sweep --backend=local --max_parallel=3
"""
from __future__ import annotations

import string

import ml_collections
from ml_collections.config_dict import placeholder

from experiments.configs import pretrain
from research.data.config import DataConfig, SyntheticConfig

PRESETS = ("cpu_tiny", "stdlib_tiny", "tokens_tiny", "gpu_host", "test_tiny")
# 10 sizes, ~x1.4 apart (distinct widths at 2 layers), every one with >= 2 layers (sweep.min_layers); 4 budgets over 1.5 decades.
CPU_LADDER = (1.5e3, 3.5e3, 6e3, 1e4, 1.4e4, 2e4, 2.5e4, 3.8e4, 5.8e4, 8.3e4)
CPU_BUDGETS = (3.16e10, 1e11, 3.16e11, 1e12)  # 1.500 decades


# research.data.DataConfig's fields of the other sources, at their defaults, so that
# --config.data.source=tfds --config.data.tfds_name=... (or files) can point any preset at real text.
_OTHER_SOURCES = {field: getattr(DataConfig(), field)
                  for field in ("tfds_name", "data_dir", "file_patterns", "text_field", "train_split", "validation_split")}


def _synthetic(config: ml_collections.ConfigDict, **fields) -> None:
    """Train on the Markov corpus with a character-level tokenizer (one token per character)."""
    synthetic = SyntheticConfig(**fields)
    config.data = ml_collections.ConfigDict(dict(
        **_OTHER_SOURCES, source="synthetic", validation_fraction=0.001, max_documents=placeholder(int),
        synthetic=dict(source_seed=synthetic.source_seed, alphabet=synthetic.alphabet, order=synthetic.order,
                       concentration=synthetic.concentration, zipf_exponent=synthetic.zipf_exponent,
                       hierarchical=synthetic.hierarchical, doc_chars=synthetic.doc_chars,
                       num_documents=synthetic.num_documents, sample_seed=synthetic.sample_seed),
        tokenizer=dict(pretrain.TOKENIZER_DEFAULTS, model_path=placeholder(str), vocab_size=synthetic.char_vocab_size,
                       byte_fallback=False, character_coverage=1.0, max_training_chars=200_000, num_extra_ids=0)))


def _capacity_limited_corpus(config: ml_collections.ConfigDict, **fields) -> None:
    """The hierarchical Zipf-weighted order-3 source over 16 letters (synthetic_corpus.markov_source):
    H_0..H_3 = 2.371, 1.959, 1.680, 1.512 nats/char, so each order of context is worth a stage of
    loss; 50% / 90% / 99% of the stationary mass sit in 76 / 470 / 1045 of its 4096 contexts, so
    what a model of N parameters can store bounds its loss (capacity, not one transition).
    Reachable bound with 64-token windows: 1.525 nats per target (its characters and eos)."""
    _synthetic(config, **{**dict(alphabet="abcdefghijklmnop", order=3, concentration=0.75, zipf_exponent=0.8,
                                 hierarchical=True, doc_chars=1024), **fields})


def _base() -> ml_collections.ConfigDict:
    config = pretrain.get_config("gpt_tiny")
    _capacity_limited_corpus(config)
    config.model.dtype = "float32"  # CPU: bf16 matmuls are emulated, slower than f32
    config.objective = "causal_lm"
    # Each run is scored once, at its end, on 800 validation batches (819k tokens, most of the
    # cpu_tiny corpus's validation split). Why so many: with 48 batches (49k tokens) every run of
    # one cpu_tiny sweep scored 0.006-0.013 nats lower than on 800 (mean 0.009; issue 9's notes on the tracker): an
    # offset shared by all runs, as large as the gap between the fitted E and the reachable bound
    # it is checked against, plus ~0.002 of per-run scatter. The batches are evaluated up to 64 per
    # compiled call (research/training/evaluation.py) and, after a worker's first run, replayed from
    # memory (research/data/batch_replay.py): a few seconds per run on one core.
    config.train.update(dict(batch_size=16, seq_len=64, eval_batches=800, eval_every_steps=1_000_000,
                             peak_flops=0.0))
    # None: set for each run by the sweep (sweep.run_config; sweep.PLAN_SET_FIELDS says from what).
    # A value given for one is refused: it used to be replaced per run without a word.
    config.train.update(dict(num_steps=placeholder(int), stop_after_steps=placeholder(int),
                             log_every_steps=placeholder(int), progress_bar=placeholder(bool)))
    # Cosine to 10% of the peak over each run's own length (Hoffmann et al. 2022); the
    # runner sets warmup_steps from sweep.warmup_fraction and total_steps = the run's steps.
    config.opt.update(dict(learning_rate=2e-2, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1,
                           warmup_steps=placeholder(int)))
    config.checkpoint.update(dict(every_steps=500, keep_last=1, keep_best=0))
    config.sweep = ml_collections.ConfigDict(dict(
        presets=(), non_embedding_params=CPU_LADDER, aspect=16, plan="isoflop", budgets=CPU_BUDGETS,
        # Centre of each budget's 6 sizes. A first sweep centred at 100 tokens per parameter found
        # the smallest model best at 3.16e10 and 1e11 (its IsoFLOP minima at the window's edge) and
        # the minimum near 130 at 3.16e11: short runs of large models are starved of steps.
        models_per_budget=6, tokens_per_param_prior=200.0, tokens_per_param=(), tokens=(),
        param_count="non_embedding", min_steps=80, warmup_fraction=0.05, min_layers=2,
        # Rotary positions, 4-wide heads (sweep_plan.SweepSpec says why: with learned positions
        # these sizes never leave the bigram plateau in the steps a budget affords).
        position="rope", head_dim=4,
        # Learning rate 2e-2 at width 32, scaled as 1 / width, for runs of up to 500 steps; longer
        # runs at (500 / steps) ** 0.5 of that (lr_horizon_*). The width rule: a sweep of 0.5x, 1x,
        # 2x, 4x its 1e-2 (train_together, 4 models at once; eval loss) at D16 L2 (600 steps) 1.778,
        # 1.735, 1.714, 1.726 and at D48 L3 (400 steps) 1.786, 1.729, 1.714, 1.748: the best multiple
        # is the same (2x) at both ends of the ladder. The run-length rule (2026-12-03, lr_check, one
        # seed, eval loss; "old" = 2e-2 x 32 / width, capped at 4e-2, for every length): D28 L2 at
        # 262 steps 0.011 / 0.023 (old, rule) / 0.046: 1.888 / 1.860 / 1.971; D12 L2 at 1,356 steps
        # 0.01 / 0.02 / 0.04 (old): 1.724 / 1.704 / 1.696 (rule 0.032); D20 L2 at 1,602 steps 0.008 /
        # 0.016 / 0.032 (old): 1.647 / 1.629 / 1.636 (rule 0.018); at 5,062 steps 0.008 / 0.016 /
        # 0.032 (old) / 0.064: 1.590 / 1.589 / 1.608 / 1.651 (rule 0.010); L3 D40 at 2,747 steps
        # 0.008 / 0.016 (old): 1.575 / 1.580 (rule 0.0068); D40 L2 at 4,118 steps 0.008 / 0.016 (old):
        # 1.566 / 1.571 (rule 0.0056); D8 L2 at 9,248 steps 0.005 / 0.01 / 0.02 / 0.04 (old) / 0.06 /
        # 0.08: 1.780 / 1.767 / 1.753 / 1.774 / 1.795 / 1.818 (rule 0.019). So the best rate falls
        # about as 1 / sqrt(steps), and one rate for every length over-stepped the long runs: the
        # whole sweep at half the old rate for every length moved Approach 3's E from 1.5415 to
        # 1.5361 and the N_opt exponents' gap from 0.19 to 0.065, while its shortest runs got worse
        # (D28 at 262 steps 1.860 -> 1.881). No cap on the width multiplier (lr_scale_cap; it was 2,
        # i.e. 4e-2, because D12 at the rule's 5.3e-2 over 4,300 steps stalled on the plateau): with
        # the run-length factor every rate of this plan stays below 4e-2 (the highest: D8 at 2,922
        # steps, 0.033; D12 at 4,292 steps gets 0.018), and the cap gave D8 half its rule.
        lr_reference_width=32, lr_scale_cap=0.0, lr_horizon_steps=500, lr_horizon_exponent=0.5,
        # The smallest budget's 6 runs again with seed 1: run-to-run noise for the fit's intervals.
        repeat_budget=0.0, repeat_seeds=(1,)))
    # Where to read the fitted law off: the compute-optimal N, D and tokens per parameter.
    # plateau_rule: leave runs still on the early plateau out of the fit (research/scaling/plateau.py).
    config.fit = ml_collections.ConfigDict(dict(enabled=True, compute_budget=1e12, bootstrap=4000, plateau_rule=True,
                                                init_grid="paper", seed=0))
    # Split the runs over jobs sharing one workdir (launch/): this job runs runs[index::count].
    config.shard = ml_collections.ConfigDict(dict(index=0, count=1))
    # For --dry_run's time estimate: the devices' peak FLOP/s and an MFU, measured on the
    # 2026-12-03 machine (2 cores with AVX-512 and AMX): research.training.metrics.
    # measure_peak_flops gave 2.38e11 and 2.60e11 float32 matmul FLOP/s, and the sweep's 1.11e13
    # FLOPs trained in 13:36 of wall (two one-core workers; 1,621 s summed over the 30 runs):
    # 13.6 GFLOP/s, 5.4% of 2.5e11. Small models on one core each are far from the matmul peak.
    config.estimate = ml_collections.ConfigDict(dict(peak_flops=2.5e11, mfu=0.054))
    return config


def get_config(arg: str = "cpu_tiny") -> ml_collections.ConfigDict:
    """The preset `arg` (one of PRESETS)."""
    config = _base()
    if arg == "cpu_tiny":
        pass
    elif arg == "tokens_tiny":
        config.sweep.update(dict(non_embedding_params=CPU_LADDER[:5], plan="tokens", budgets=(),
                                 tokens_per_param=(40.0, 120.0, 360.0), min_steps=50, repeat_seeds=()))
    elif arg == "stdlib_tiny":
        # Real text: the embedded Python standard-library corpus (30 MB of train files, 72 files
        # held out), 128 character-level SentencePiece pieces trained once for every run (losses
        # in nats per token). Why not cpu_tiny's budgets: on this text the 1e11 runs end at or
        # above a bigram model's held-out 3.09 nats/token (3.07-3.32; issue 9's notes on the tracker), so the plateau
        # rule leaves them out; at 3.16e11 an IsoFLOP pilot (6 sizes) was U-shaped, 2.84-3.15 with
        # its minimum near 1.5e4-2.5e4 parameters (~150 tokens per parameter). Budgets from there, a
        # quarter decade apart (0.75 decades; the sweep took 33:22 on 2 cores), 6 sizes each
        # centred at 150 tokens per parameter, seed repeats at the smallest.
        # Learning rate: half cpu_tiny's (1e-2 at width 32, same 1 / width rule), from a sweep of
        # 0.05x-1x cpu_tiny's rule over 2,000 steps (lr_check, eval loss): D20 L2 3.200 / 3.101 /
        # 3.017 / 3.029 at 0.05 / 0.15 / 0.5 / 1x, D40 L2 3.097 / 2.961 / 2.851 / 2.844.
        # Read tokens per parameter at the optimum off fit.json: IsoFLOP minima per budget
        # (Approach 2) and Approach 3's compute_optimal rows.
        config.data = ml_collections.ConfigDict(dict(
            **_OTHER_SOURCES, source="stdlib", validation_fraction=0.05, max_documents=placeholder(int),
            tokenizer=dict(pretrain.TOKENIZER_DEFAULTS, model_path=placeholder(str), vocab_size=128,
                           byte_fallback=False, character_coverage=0.9995, max_training_chars=2_000_000,
                           num_extra_ids=0)))
        # Its validation split holds 779 of the 800 batches asked (16 x 64, Python 3.11's stdlib): each run
        # is scored on those, every row once, with one warning (before 2026-12-07 21 batches of a
        # reshuffled second epoch were averaged in, the figures above too). eval_batches stays 800: it is
        # part of every run's identity, and sweeps begun before would be refused.
        config.opt.learning_rate = 1e-2  # for every run length, capped at 2x (measured without lr_horizon_*)
        config.sweep.update(dict(budgets=(3.16e11, 5.62e11, 1e12, 1.78e12), tokens_per_param_prior=150.0,
                                 lr_scale_cap=2.0, lr_horizon_steps=0))
        config.fit.compute_budget = 1.78e12
        # Its own MFU for --dry_run (it inherited cpu_tiny's 5.4%: 39 min estimated): its 3.15e13
        # training FLOPs took 26:30 (README, seeds merged; 7.9% of 2.5e11) and 33:22 (above; 6.3%).
        config.estimate.mfu = 0.07
    elif arg == "gpu_host":
        # The cpu_tiny corpus's kind (hierarchical, Zipf-weighted, order 3) over 64 characters:
        # 262,144 contexts, so models of 1e6..1e8 parameters are still capacity-limited.
        # 10M documents (4.1e10 tokens, generated on demand): the longest run (1.4e7 parameters at
        # 3.16e18 FLOPs) reads 3.9e10 tokens without repeating the data (1M documents: 18 passes).
        _capacity_limited_corpus(config, alphabet=string.ascii_letters + string.digits + ".,", doc_chars=4096,
                                 num_documents=10_000_000)
        config.model.dtype = "bfloat16"
        config.train.update(dict(batch_size=128, seq_len=512, eval_batches=32))
        config.opt.learning_rate = 3e-3
        config.checkpoint.every_steps = 1000
        # Up to 5.12e8: at 3.16e18 FLOPs Chinchilla's 20 tokens per parameter puts N_opt at 1.6e8, and
        # a ladder ending at 2.56e8 clipped that budget's window to 5 sizes below it and 1 above (now
        # 4 and 2, as at the other budgets: the window is the nearest size, 3 below and 2 above).
        config.sweep.update(dict(non_embedding_params=(1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7, 6.4e7, 1.28e8, 2.56e8, 5.12e8),
                                 aspect=32, budgets=(1e17, 3e17, 1e18, 3.16e18), tokens_per_param_prior=20.0,
                                 min_steps=200, lr_reference_width=256, head_dim=0,
                                 lr_scale_cap=2.0, lr_horizon_steps=0))
        config.fit.compute_budget = 1e19
        # One 8-GPU host. peak: 8 x 989e12 bf16 dense FLOP/s (H100 SXM datasheet). MFU: NOT
        # measured here (no accelerator was lent to this session); 0.3 is an assumption for
        # models of 1e6..1e8 parameters at batch 128 x 512, below the 40-50% large models reach.
        # Replace it with the `mfu` that research.training logs per step on the host (metrics.jsonl).
        config.estimate.update(dict(peak_flops=8 * 989e12, mfu=0.3))
    elif arg == "test_tiny":
        _synthetic(config, alphabet="abcdefgh", order=2, concentration=0.2, doc_chars=256)
        config.data.validation_fraction = 0.01
        config.train.update(dict(batch_size=8, seq_len=32, eval_batches=1, peak_flops=1e9))  # MFU not measured
        config.checkpoint.every_steps = 10
        config.sweep.update(dict(non_embedding_params=(1e3, 2e3, 4e3, 8e3, 1.6e4), plan="tokens", budgets=(),
                                 tokens_per_param=(1.0,), min_steps=2, warmup_fraction=0.0, repeat_seeds=(),
                                 position="learned", head_dim=0,
                                 lr_reference_width=0, min_layers=1))
        # One tokens-per-parameter ratio, 5 runs: a smoke test of the sweep's machinery, whose N and D
        # move together (no design Approach 3 could fit: sweep._check_fittable). Tests that fit set
        # ratios and fit.enabled=True.
        config.fit.update(dict(enabled=False, compute_budget=1e9, bootstrap=0, init_grid="coarse"))
    else:
        raise ValueError(f"unknown scaling_laws preset {arg!r}; choose one of {PRESETS}.")
    return config


def get_sweep(num_shards: int = 3) -> list[dict]:
    """The sweep split over `num_shards` jobs sharing one workdir (for launch/). Each trains
    runs[index::count]; the shard that finishes last fits (if two finish together and
    neither does, rerun any one: every run is then skipped and the fit runs)."""
    return [{"config.shard.index": i, "config.shard.count": num_shards, "workdir": ".", "name": f"shard{i}"}
            for i in range(num_shards)]
