"""Emergence study configs: a ladder of decoders trained on task documents (addition and
copying; mixture.corpus_fraction mixes in corpus text), evaluated on held-out task items at
every checkpoint (experiments/emergence.py).

    python -m experiments.emergence --config=experiments/configs/emergence.py:cpu_tiny --workdir=/tmp/emergence

Presets:
  cpu_tiny         a 1-layer control (scale-1e4) and four 2-layer widths (d24-l2, d32-l2, d48-l2,
                   d64-l2: 1.4e4 to 1e5 non-embedding parameters, heads of 8 dimensions), 4000
                   steps each at a learning rate by a 1/width rule; addition of 2 to 6 digits in
                   base 26 (digits, then letters a-p), every number least-significant digit
                   first, operands padded to 6 digits; copying of 6 to 12 letters
                   (copying_varied, an induction task); 1000 held-out items per task at every
                   checkpoint. 15:19 wall on 2 cores (2026-12-05).
  cpu_tiny_base10  the design before base 26: base 10, operands unpadded
  cpu_tiny_padded  cpu_tiny_base10 with operands padded to 6 digits
  cpu_tiny_widths  cpu_tiny_padded at five small 2-layer widths of one head (d8 .. d16)
  cpu_tiny_mirage  cpu_tiny_base10 with GPT-2's init and copy problems packed 1-16 per document
                   (2-4, what a 128-token window holds, since 2026-12-07)
  gpu_host         a 7-size ladder (1e5 .. 1e8 non-embedding parameters) for one 8-GPU host;
                   `--dry_run` gives the time from the FLOPs at an assumed (not measured) MFU
  micro            2 sizes, a handful of steps: end to end in under a minute (tests use it)

What cpu_tiny showed at seeds 0, 1 and 2 (2026-12-07, training documents cut to the window; the
figures of 2026-12-05, when 8-10% of the addition problems were cut by a window boundary, are in
emergence_design.md, beside this file, with each preset's results, the designs tried and dropped,
and why each choice below was made):
- Copying, a genuine transition: every 2-layer size learns it (exact match >= 0.998 at the
  end), jumping along training at 3 of the 4 sizes at each seed; the 1-layer control stays at
  chance.
- Addition, the compounding: each 2-layer size that leaves the early plateau (p about 0.2)
  learns part of the per-place table (per-digit p 0.65-1.00 at the end; d48-l2 stayed on the
  plateau at seeds 0 and 2), and exact match follows p^L (within 0.034, 0.072 and 0.057 at
  seeds 0, 1 and 2; p and L count the answer's tokens; the stop after the answer is scored on
  its own, end_accuracy q: emergence_design.md's note at the top).
- The mirage along training: the jump rule finds no genuine addition jump; exact match's jumps
  are a mirage at 4, 3 and 2 of the 4 2-layer sizes. The stricter rule of
  report/mirage_verdicts.csv (exact match's breakthroughness sharpening with L while p's does
  not) finds it at 0, 2 and 0 sizes: p itself leaves the plateau in a jump.
- The mirage across sizes is not shown at any seed: p is not ordered by size. The step at which
  a size leaves the plateau varies with the seed and decides its final p (Spearman -0.93 over
  the 12 seed-size pairs; with size +0.50, p = 0.10), and `python -m experiments.emergence_seeds`
  resolves none of the 30 steps between consecutive sizes.

Override any field, e.g. `--config.train.num_steps=800 --config.eval.num_test=200`.
Rerunning the same command skips finished training and finished evaluations.

Fields:
  sizes         the ladder, small to large: model presets (research.models: "scale-1e4", ...)
                or names in `ladder`
  ladder        {name: dict(preset=..., field=value, ...)}: sizes the presets lack (a preset
                with its d_model, num_heads, d_ff, ... changed)
  model         ModelConfig overrides applied to every size (vocab_size must hold the tokenizer)
  mixture       corpus_fraction: share of the training characters taken from the corpus
                (the rest are task documents); tasks: {task name: problems drawn for training};
                examples_per_document: (fewest, most) problems per training document;
                examples_per_document_by_task: {task name: (fewest, most)} for tasks that differ
  tokenizer     research.data.TokenizerConfig fields; trained once on the mixture
  train / opt / checkpoint / mesh   as in experiments/configs/pretrain.py, shared by all sizes
  lr_reference_width  each size trains at opt.learning_rate x lr_reference_width / d_model (0: off)
  lr_scale_floor      ... but never below opt.learning_rate x lr_scale_floor (0: no floor)
  eval          held-out evaluation: tasks, shots, num_test documents per task (every checkpoint),
                final_tasks / final_shots / final_num_test (final checkpoint only), few-shot pool
                (num_train), seed; cot_description: the line that opens chain-of-thought
                prompts (and their training documents), so a zero-shot prompt says which
                format is wanted
  report        metrics summarised and plotted; mirage_sizes: the sizes (at least 2; 4 or more for
                a shape to mean anything) the mirage's shapes across sizes are read from, empty
                for every size; transition_task: the task (or tuple of tasks)
                whose curves along training are tabled, shaped and plotted (transition.png)
"""
from __future__ import annotations

import ml_collections

from research.data.config import TokenizerConfig
from research.sharding_rules import DEFAULT_RULES

# TokenizerConfig fields these presets gained on 2026-12-07 (a --config.tokenizer.model_type= was "not a
# config key"), at their defaults; a study fingerprints them only when set otherwise
# (experiments/emergence_plan.tokenizer_settings), so studies recorded before keep their fingerprints.
TOKENIZER_ADDED_LATER = {field: getattr(TokenizerConfig(), field) for field in ("model_type", "normalization")}

PRESETS = ("cpu_tiny", "cpu_tiny_base10", "cpu_tiny_padded", "cpu_tiny_widths", "cpu_tiny_mirage", "gpu_host", "micro")
COPY_TASK = "copying_varied"
PADDED_WIDTH = 6  # operands zero-padded to 6 digits, one per-digit procedure for every length
MIRAGE_BASE = 26  # cpu_tiny's addition: a per-place table of 1,352 entries, learned by degrees


def addition(digits: int, width: int = 0, base: int = 10) -> str:
    """The catalog name of `digits`-digit addition, every number least-significant digit first,
    operands zero-padded to `width` digits (0: unpadded), written in `base`."""
    return (f"addition_{digits}digit" + (f"_base{base}" if base != 10 else "") + "_lsb_first"
            + (f"_pad{width}" if width else ""))


def _use_addition_width(config: ml_collections.ConfigDict, width: int, base: int = 10) -> None:
    """Every least-significant-first addition task named in `config` (training mixture and its
    per-task packing, evaluation, report) at operand width `width`, in `base`."""
    def rename(name: str) -> str:
        if not name.startswith("addition_") or "_lsb_first" not in name:
            return name
        return addition(int(name.split("_")[1].removesuffix("digit")), width, base)

    mixture = config.mixture
    mixture.tasks = {rename(t): n for t, n in mixture.tasks.items()}
    mixture.examples_per_document_by_task = {rename(t): v for t, v in mixture.examples_per_document_by_task.items()}
    for field in ("tasks", "final_tasks"):
        config.eval[field] = tuple(rename(t) for t in config.eval[field])
    tracked = config.report.transition_task
    config.report.transition_task = tuple(rename(t) for t in ((tracked,) if isinstance(tracked, str) else tracked))


def _base() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # A 1-layer control (scale-1e4: no induction head possible) and four 2-layer widths, 1.4e4 to
    # 1e5 non-embedding parameters: the mirage needs >= 4 points of one architecture across sizes
    # (with 3 points breakthroughness cannot tell a jump from a line: B = 1.41 vs 2), and the
    # transition needs the 1- vs 2-layer contrast. Widths the presets lack are in `ladder`.
    config.sizes = ("scale-1e4", "d24-l2", "d32-l2", "d48-l2", "scale-1e5")
    config.ladder = ml_collections.ConfigDict({
        **{f"d{d}-l2": dict(preset="scale-1e5", d_model=d, num_heads=d // 8, d_ff=4 * d) for d in (8, 12, 16, 24, 32, 48, 64)},
        **{f"d{d}-l2h2": dict(preset="scale-1e5", d_model=d, num_heads=2, d_ff=4 * d) for d in (8, 12)},
        **{f"d{d}-l2h1": dict(preset="scale-1e5", d_model=d, num_heads=1, d_ff=4 * d) for d in (8, 10, 12, 14, 16)}})
    # float32 compute: on CPU bf16 is emulated and slower. Rotary positions: with learned
    # positions no size left the unigram plateau in 1200 steps (addition per-digit p 0.17-0.27,
    # copying at chance 0.03-0.05, every size alike); relative attention is what both tasks need.
    # T5's init (kernels N(0, fan_in^-1/2), token embeddings N(0, 1)) in place of GPT-2's N(0, 0.02):
    # an induction head is a product of small matrices across two layers, and from a 0.02 init
    # its gradient starts near zero (a long plateau). Measured on the copy task alone (standalone
    # pilots, d32-l2, one problem per document; issue 9's tracker notes): with N(0, 0.02) teacher-forced
    # accuracy on the copied letters was 0.10 after 1500 steps; with T5 init 0.60 by step 900.
    config.model = ml_collections.ConfigDict(dict(vocab_size=80, max_len=256, dtype="float32",
                                                  param_dtype="float32", dropout_rate=0.0, position="rope",
                                                  init_scheme="t5", dense_weight_grad="auto"))
    # Addition of 2 to 6 digits with every number written least-significant digit first
    # ("754+68=345" is 457+86=543) for the mirage: with rotary positions each answer digit then
    # reads its two operand digits at fixed offsets back (k and 2k+1 for k-digit operands),
    # where the usual order needs a mirror-image lookup. copying_varied (induction, Olsson et
    # al. 2022: 6 to 12 symbols, so the repeat is at no fixed offset) for a transition between
    # architectures. The repeat task (repeat_8to16_12letters: random letters, then their copy)
    # was tried in its place and learned by no size in 4000 steps, while the addition it
    # displaced was learned less (a pilot; issue 9's tracker notes); copying_varied, with which d48-l2 learned
    # addition of every length (a pilot; issue 9's tracker notes), is kept. No corpus text: the steps go to the tasks.
    # One copy problem per document (examples_per_document_by_task), each its own packed segment:
    # with several problems in one context every letter also occurs in the earlier problems, so
    # "find the current letter's earlier occurrence" matches wrong copies as often as the right
    # one. With (1, 16) and GPT-2 init no 2-layer size learned to copy in 4000 steps; with T5
    # init the head formed on the training stream but held-out copies rose only gradually
    # (standalone pilot, d32-l2: accuracy 0.19 -> 0.62 over steps 400-1500, exact match <= 0.11).
    # Alone in its segment the prompt is also tokenized as at evaluation (its first letter
    # "\u2581q" on both sides, where after a newline it was "q"). Addition documents end before a
    # problem would pass the training window (emergence_plan.document_chars): 1-16 problems each drew
    # documents of up to ~350 characters for 128-token windows, and 8-10% of the problems were cut
    # by a window boundary, their answers trained without their operands (before 2026-12-07).
    config.mixture = ml_collections.ConfigDict(dict(
        corpus_fraction=0.0, examples_per_document=(1, 16), examples_per_document_by_task={COPY_TASK: (1, 1)},
        seed=1, tasks={**{addition(k): 8_000 for k in range(2, 7)}, COPY_TASK: 16_000}))
    # A character vocabulary (no byte fallback): every letter of the copying task is one piece
    # ("\u2581q"). With 256 byte pieces + 64 learned ones (vocab 320), half the letters were split
    # into "\u2581" + letter: the copy then needs a 2-back lookup, and the many "\u2581" tokens
    # inflated teacher-forced accuracy at chance to 0.25. 73 pieces is all the mixture has.
    config.tokenizer = ml_collections.ConfigDict(dict(vocab_size=73, byte_fallback=False, character_coverage=1.0,
                                                      max_training_chars=2_000_000, **TOKENIZER_ADDED_LATER))
    config.train = ml_collections.ConfigDict(dict(
        num_steps=4000, batch_size=16, seq_len=128, microbatches=1, seed=0, z_loss=1e-4,
        log_every_steps=50, eval_every_steps=250, eval_batches=4, stop_after_steps=0, peak_flops=0.0,
        progress_bar=False))
    # Learning rate per size by a width transfer rule (muP-like, as the scaling study's
    # sweep.lr_reference_width), floored: learning_rate x max(lr_reference_width / d_model,
    # lr_scale_floor): 8e-3 at d_model 24, 6e-3 at 32, 4e-3 at 48 and at 64. Without
    # the floor scale-1e5 trained at 3e-3 and did not learn addition (per-digit p 0.27-0.35 at
    # step 4000), while the same model at 4e-3 learned it outright (exact match >= 0.993; one
    # seed each; issue 9's tracker notes): the rule was tuned at width 48 and is not extrapolated below its
    # reference rate. 0 turns the rule off (every size at opt.learning_rate). The rates are
    # logged and in the results rows.
    config.lr_reference_width = 48
    config.lr_scale_floor = 1.0
    config.opt = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=4e-3, schedule="cosine", warmup_steps=100, decay_fraction=0.2,
        min_lr_ratio=0.1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))
    # Every checkpoint is kept and evaluated (about 1 s each): 16 points along training.
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=250, async_save=True))
    config.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    # eval.tasks at every checkpoint (the curve along training); eval.final_tasks at the end
    # only, with final_num_test items each (>= 1000: bootstrap intervals of a few points).
    config.eval = ml_collections.ConfigDict(dict(
        tasks=(COPY_TASK, *(addition(k) for k in range(2, 7))), shots=(0,), num_test=400,
        num_train=64,
        final_tasks=tuple(addition(k) for k in range(2, 7)), final_shots=(0,), final_num_test=1000,
        seed=0, batch_size=100, min_bucket=64, cot_description="Work it out step by step.\n"))
    # For --dry_run's time estimate: the devices' peak FLOP/s and an MFU. Measured on the
    # 2026-12-03 machine (2 cores with AVX-512 and AMX): research.training.metrics.
    # measure_peak_flops gave 2.38e11 and 2.60e11 float32 matmul FLOP/s; the cpu_tiny run's
    # 1.32e13 training FLOPs took 1,224 s of training summed over its sizes, in two one-core
    # worker processes, i.e. ~612 s of wall: 8.6% of 2.5e11. (An older machine: ~50e9 peak,
    # 1,690 s summed, i.e. ~31%; the product, achieved FLOP/s, moved 1.4x between the two.)
    config.estimate = ml_collections.ConfigDict(dict(peak_flops=2.5e11, mfu=0.086))
    config.report = ml_collections.ConfigDict(dict(
        metrics=("exact_match", "teacher_forced_accuracy", "teacher_forced_prob", "target_log_prob",
                 "token_edit_distance", "token_accuracy", "brier_score"),
        plot_metrics=("exact_match", "teacher_forced_accuracy", "target_log_prob"),
        transition_task=(COPY_TASK, *(addition(k) for k in range(2, 7))),
        # The sizes whose final checkpoints give the mirage's shapes across sizes (mirage_shapes.csv;
        # empty: every size): one architecture, so that a change of architecture (the 1-layer
        # control) is not read as a jump along scale.
        mirage_sizes=()))
    return config


def get_config(arg: str = "cpu_tiny") -> ml_collections.ConfigDict:
    """The preset `arg` (one of PRESETS)."""
    config = _base()
    if arg == "cpu_tiny":
        # Addition in base 26, operands padded to 6 digits (emergence_design.md): once a size
        # leaves the early plateau its per-digit p grows by degrees, the mirage's premise (across
        # sizes p was ordered by size at one seed of three).
        _use_addition_width(config, PADDED_WIDTH, MIRAGE_BASE)
        # The top size is d_model 64 with heads of 8 dimensions, as every 2-layer size below it,
        # not the scale-1e5 preset (the same parameters in 4 heads of 16): one architecture
        # across the ladder. With 8 heads it left the plateau earlier at seeds 0, 1 and 2 (steps
        # 1750 / 1250 / 2000 against 2000 / 2250 / 2500) and ended above d48-l2 at all three
        # (6-digit p 0.970 / 0.986 / 0.979 against scale-1e5's 0.956 / 0.890 / 0.899).
        config.sizes = ("scale-1e4", "d24-l2", "d32-l2", "d48-l2", "d64-l2")
        config.report.mirage_sizes = ("d24-l2", "d32-l2", "d48-l2", "d64-l2")
        # 1000 items per task at every checkpoint, as at the end: the mirage along training is
        # read from these curves, and the minimum is 1000 items per answer length. The
        # first 400 are the items the 400-item curves had (one seed draws them in order), the
        # additions are the final 1000, and the 600 more copy prompts held out are none the
        # training stream draws: the training documents are those of 400 items, and the
        # mixture's fingerprint (emergence_plan.mixture_fingerprints) with them.
        config.eval.num_test = 1000
    elif arg == "cpu_tiny_base10":
        pass
    elif arg == "cpu_tiny_mirage":
        # cpu_tiny_base10 with the design before it: GPT-2's N(0, 0.02) init and copy problems packed
        # 1-16 per document, as the other tasks (since 2026-12-07 no more than a training window holds,
        # 2-4 copy problems of up to 49 characters: its runs before packed up to 16, cut by windows). Its
        # last full run (the "previous preset" figures in emergence_design.md) showed the mirage along
        # training (addition learned, exact match jumping while per-digit p rose smoothly) and no
        # copying; cpu_tiny_base10 shows the copying transition, and in its full run only d32-l2 learned
        # addition (2-3 digits). Kept so the design with more addition learned can still be run.
        config.model.init_scheme = "normal"
        config.mixture.examples_per_document_by_task = {}
    elif arg == "cpu_tiny_padded":
        # cpu_tiny_base10 with every addition operand zero-padded to 6 digits (emergence_design.md's
        # "padded operands" figures): every 2-layer size learns every length, and per-digit p
        # jumps with exact match, a genuine transition in place of the mirage.
        _use_addition_width(config, PADDED_WIDTH)
    elif arg == "cpu_tiny_widths":
        # cpu_tiny_padded at five small 2-layer widths of one head each (emergence_design.md): where
        # per-digit p is between chance and 1, exact match beside p^L at every length.
        _use_addition_width(config, PADDED_WIDTH)
        config.sizes = tuple(f"d{d}-l2h1" for d in (8, 10, 12, 14, 16))
    elif arg == "gpu_host":
        # One 8-GPU host: a 7-size ladder 1e5 .. 1e8 non-embedding parameters, 20000 steps of
        # 128 x 256 tokens in bf16, on cpu_tiny's tasks (addition in base 26, padded; copying).
        # `--dry_run` prints the training FLOPs and the time at config.estimate's peak and MFU. The MFU is an assumption, not a measurement (no
        # accelerator was lent to the session that wrote this); use the `mfu` research.training
        # logs on the host.
        config.sizes = tuple(f"scale-{m}e{e}" for e in range(5, 9) for m in (1, 3) if (m, e) != (3, 8))
        # GPT-2's init: at these widths N(0, 0.02) is about fan_in^-1/2 already, while T5's N(0, 1)
        # token embeddings, tied and unscaled, would start with logits of std ~ sqrt(d_model).
        config.model.update(dict(dtype="bfloat16", max_len=256, init_scheme="normal"))
        config.train.update(dict(num_steps=20000, batch_size=128, seq_len=256, eval_every_steps=1000))
        config.opt.update(dict(learning_rate=1e-3, warmup_steps=200))
        config.lr_reference_width = 0  # one rate for every size (the width rule is tuned for d_model <= 96)
        config.checkpoint.every_steps = 2000
        config.estimate.update(dict(peak_flops=8 * 989e12, mfu=0.3))  # 8 x H100 SXM bf16 dense; MFU assumed
        config.ladder = ml_collections.ConfigDict()
        config.mixture.tasks = {**{addition(k): 200_000 for k in range(2, 7)},
                                COPY_TASK: 200_000}
        # cpu_tiny's addition (base 26, operands padded to 6 digits): its per-place table is
        # learned by degrees, where base 10's 200 entries come at once with the routing.
        _use_addition_width(config, PADDED_WIDTH, MIRAGE_BASE)
        config.eval.update(dict(num_test=1000, batch_size=500))
    elif arg == "micro":
        config.sizes = ("scale-1e4", "scale-3e4")
        config.model.max_len = 128
        config.mixture.tasks = {"addition_1digit": 400, "addition_1digit_cot": 100}
        config.mixture.examples_per_document = (1, 8)
        config.mixture.examples_per_document_by_task = {"addition_1digit": (1, 1)}  # as cpu_tiny's copy task
        config.mixture.corpus_fraction = 0.2  # the chain-of-thought words need text for 384 pieces
        config.model.vocab_size = 384
        config.tokenizer.update(dict(vocab_size=384, byte_fallback=True, character_coverage=0.9995))
        config.tokenizer.max_training_chars = 100_000
        config.train.update(dict(num_steps=4, batch_size=8, seq_len=64, log_every_steps=2, eval_every_steps=2,
                                 eval_batches=1, peak_flops=1e9))
        config.opt.warmup_steps = 1
        config.checkpoint.every_steps = 2
        config.eval.update(dict(tasks=("addition_1digit", "addition_1digit_cot"), shots=(0, 1), num_test=4,
                                num_train=8, batch_size=4, min_bucket=128, final_tasks=("addition_2digit",),
                                final_num_test=8))
        config.report.transition_task = ("addition_1digit",)
    else:
        raise ValueError(f"unknown emergence preset {arg!r}; choose one of {PRESETS}.")
    return config
