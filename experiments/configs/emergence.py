"""Emergence study configs: a ladder of decoders trained on the stdlib corpus mixed with task
training data, evaluated on held-out task instances (experiments/emergence.py).

Launch (cpu_tiny: a 1-layer control and four 2-layer widths, 1e4 to 1e5 non-embedding
parameters, 4000 steps each; copying_varied and addition of 2 to 6 digits, 1000 items each at
every checkpoint; addition in base 26
(digits, then letters a-p), every number written least-significant digit first, operands
padded to 6 digits):

    python -m experiments.emergence --config=experiments/configs/emergence.py:cpu_tiny --workdir=/tmp/emergence

Why base 26 (2026-12-04, model.dense_weight_grad=auto): in base 10 the per-place table is 200
entries (sum and carry for each digit pair and carry-in), learned at once with the routing to
the operand digits, so per-digit p itself jumps between sizes (cpu_tiny_base10 and its variants
below). Base 26's table holds 1,352 entries; a 2-layer size first leaves an early plateau (p
about 0.2, the routing) and then learns the table by degrees. On 2 cores with nothing beside
them (2026-12-05, 1000 items at every checkpoint): seed 0 13:36 wall, 1,318 s of CPU; seeds 1 and
2 (--config.train.seed=1 / 2) 28 and 16 min with other jobs beside them. With 400 items along
training (2026-12-04): seed 0 11:21, 1,141 s; seed 2 11:24, 1,145 s. Training and every final
result are the same under both (the held-out additions are the same problems).
- Copying: every 2-layer size learns it (exact match >= 0.9975 at the end), with a genuine jump
  along training in 3, 3 and 4 of the 4 sizes at seeds 0, 1, 2; the 1-layer control stays near
  chance (teacher-forced p 0.14-0.20).
- Addition: each 2-layer size that leaves the plateau learns part of the table (per-digit p
  0.68-0.97 at the end); d32-l2 did not leave it at seed 2 (p 0.11-0.21, as the control).
  Exact match follows p^L there: within 0.066 at seeds 0 and 1 (80% intervals overlapping in
  14 and 16 of 20 cells), within 0.095 at seed 2 (5 of 15; exact match below p^L in 10, most at
  d48-l2 and scale-1e5, where errors gather on some items). Along training (1000 items) the jump
  rule finds no genuine addition jump; exact match's jumps are a mirage in d24-l2, d32-l2 and
  scale-1e5 (seeds 0 and 1) and d24-l2, d48-l2 and scale-1e5 (seed 2). (With 400 items: d24-l2,
  d32-l2, scale-1e5; all four; d24-l2, d48-l2, scale-1e5.)
- Across sizes (report.mirage_sizes: the 2-layer ones), seed 0: p at 6 digits 0.73 / 0.82 / 0.88 /
  0.96 and exact match 0.104 / 0.261 / 0.373 / 0.749; exact match's breakthroughness grows with
  L, 2.12 / 2.15 / 2.47 / 2.48 / 4.11 at 2-6 digits (6 digits' 80% interval [3.71, 4.56]), while
  per-digit accuracy's stays 2.58-3.34 (a straight line's is 3): the mirage. Seed 1: p is
  highest at d32-l2 (0.96-0.97, d48-l2 0.87-0.89, scale-1e5 0.81-0.89), exact match's
  breakthroughness falls with L (2.22 to 1.21) as per-digit accuracy's does (2.37 to 1.05): no
  mirage across sizes. Seed 2: p highest at d24-l2 (0.86-0.90), d32-l2 on the plateau, d48-l2
  0.73-0.85, scale-1e5 0.74-0.90: no mirage. The sizes left the plateau at steps 1500-3000 (or
  never); over the 12 (seed, size) pairs the final 6-digit p's Spearman correlation is -0.52 with
  that step and +0.39 with the size, neither resolved at 0.05 (emergence_seeds' onsets). The
  mirage across sizes holds at one seed of three. A d16-l2 (seed 0) never left the plateau in
  4000 steps (p 0.21).
- By rule (report/mirage_verdicts.csv, research.evaluation.study_report.sharpening_verdict): the
  mirage across sizes at seed 0 only; along training at 1, 2 and 1 of the four 2-layer sizes
  (d32-l2; d48-l2 and scale-1e5; d48-l2): along training p itself sharpens with length at most
  sizes, as it leaves the plateau in a jump.
- Seed noise (python -m experiments.emergence_seeds over the three workdirs, sizes = the 2-layer
  ones): none of the 30 steps between consecutive sizes (5 lengths x exact match and p) is
  resolved by Welch's t test at 0.05; p's standard deviation over seeds reaches 0.45 (d32-l2), so
  at this scale the curve across sizes is within seed noise. Read 1000 steps after each size's
  own onset (onsets.csv's p_after_onset, the 11 pairs that left the plateau), 6-digit p's Spearman
  correlation with size is +0.42 (p = 0.196): once the onset is matched the 2-layer sizes follow
  one curve within the seeds' spread (e.g. 0.64-0.90 at seed 0): size does not order p even at a
  matched time since the onset (neither correlation resolved at 0.05 with three seeds).
- Tried for a p limited by capacity (2026-12-05, one seed, 8000 steps, 300 items per checkpoint,
  not adopted): d_model 32 with 4 heads at MLP widths 16 / 32 / 64 / 128. d_ff 16 never left the
  plateau; d_ff 32, 64 and 128 left it at steps 4000, 5000 and 2500 and ended at 6-digit p 0.94 /
  0.92 / 1.00 (exact match 0.63 / 0.56 / 0.99, 1000 items): the MLP's width moved the onset, and
  p was no more ordered by size than across cpu_tiny's widths.
- Tried, one learning rate for every 2-layer size (--config.lr_reference_width=0, so 4e-3 for
  all; 2026-12-05, seed 0, 13:07 wall, the four 2-layer sizes only, not adopted): d24-l2 never
  left the plateau (2-digit p 0.22 at step 4000) and d32-l2 was only leaving it at the end (p
  0.23 -> 0.29 over steps 3500-4000); d48-l2 and scale-1e5 train at 4e-3 under the rule too and
  were unchanged. Across sizes p itself then jumps (2-digit p's breakthroughness 7.9 [7.2, 8.7]
  against exact match's 3.6): the width rule's higher rates are what let the small widths leave
  the plateau within 4000 steps, and lowering them turns the size axis into a transition of p,
  not a mirage.

cpu_tiny_base10 is cpu_tiny before that change (base 10, operands unpadded); the paragraphs
below, up to the list of fields, describe it and its variants (what they call cpu_tiny or
"the present preset" is cpu_tiny_base10). Its runs under dense_weight_grad=auto (2026-12-04, 2
cores, nothing beside them): seed 0, 11:45 wall, 1,164 s of CPU: d32-l2 learned 2- and 3-digit
addition, exact match 0.981 / 0.92 beside p^L 0.979 / 0.921; along its training exact match's
breakthroughness 50 / 253 against per-digit accuracy's 46 / 44 and p's 22 / 27; the jump rule
calls 3 digits a mirage (jump ratio 238 against 12.9 and 8.1) and finds no jump at 2 (ratio 17);
copying genuine for d32-l2, d48-l2 and scale-1e5, a mirage for d24-l2. Seed 2, 12:11 wall:
d32-l2 learned all five lengths (exact match 0.999 / 1 / 0.994 / 0.992 / 0.96, each p^L within
0.001), exact match's breakthroughness along its training 133 / 200 / 399 / 396 / 383 against
per-digit accuracy's 23-59 and p's 21-43; the jump rule calls all five a mirage, as it does 2
to 5 digits along scale-1e5's training. The figures further below were measured with autodiff.

Every figure below was measured with Dense kernel gradients by autodiff, before 2026-12-04; CPU
runs now use model.dense_weight_grad=auto (activations_lhs, research/models/layers.py), whose
rounding compounds over training into different results. `--config.model.dense_weight_grad=autodiff`
reruns the code that measured them (bit for bit on the same kind of CPU only); cpu_tiny_base10's
runs under auto are in the paragraph above.

What was measured with the previous preset (now `cpu_tiny_mirage`: GPT-2 init, copy problems packed 1-16 per document;
one run, 09:01-09:12 UTC on 2 cores at load 1.3-3.9, the sizes in two worker processes): 10:48
wall in all, 1,135 s of CPU. Addition (1000 items per length, exact match at 2 / 3 / 4 / 5 / 6
digits): 1-layer control 0.012 / 0.001 / 0 / 0 / 0; d24-l2 0.91 / 0.85 / 0.81 / 0.82 / 0.74;
d32-l2 0.08 / 0.01 / 0 / 0 / 0; d48-l2 1.0 / 1.0 / 1.0 / 0.014 / 0.002; scale-1e5 0.99 / 0.99 /
0.13 / 0.97 / 0: which size learns which length varies from size to size (one seed each), so
the curve across sizes is not monotone and shows no clean mirage. Along d24-l2's training exact
match jumps (jump ratio 49 / 156 / 138 at 2 / 4 / 6 digits) while teacher-forced p rises over
several checkpoints (ratio 4.9 / 7.2 / 11.9, under the jump rule): the mirage's signature along
training. copying_varied: exact match 0 for every size, teacher-forced p 0.03-0.15 (no jump).

The present preset (T5 init, one copy problem per document; pilots in the issue-9h note), one
full run, 12:10-12:34 UTC on 2 cores at load 2-5 (a short test run beside it for 2 minutes):
23:30 wall, 1,981 s of CPU (training ~1,690 s summed over the sizes, checkpoint evaluations 218
s), OVER the 20-minute target on that machine, which ran the identical scaling sweep with 1.6x
the CPU seconds of the machine that measured the previous preset. On the same machine a session later,
with tokenized documents cached (research/data/token_cache.py), nothing beside it: 18:52 wall, 1,943 s
of CPU, every result identical. Results (one seed per size):
- copying_varied, the genuine transition: every 2-layer size learns to copy (exact match 1.0 at
  the end) and the 1-layer control does not (exact match 0, teacher-forced p 0.22). Along
  training d32-l2, d48-l2 and scale-1e5 jump in exact match AND in teacher-forced p (p's jump
  ratio 185 / 237 / 230, jump rule true; d32-l2 p 0.17 / 0.42 / 0.88 / 0.98 at steps 750 / 1000
  / 1250 / 1500); d24-l2 forms it later and over more checkpoints (p 0.21 at 1250 -> 0.98 at
  2500; exact match jump ratio 29.5, p's 13.7).
- addition, the mirage along training: d32-l2 learned 2 and 3 digits (exact match 0.99 / 0.97,
  1000 items) and along its training 2-digit exact match jumps (jump ratio 59.5, rule true) while
  teacher-forced p rises over several checkpoints (ratio 12.9, rule false). No other size learned
  addition (2-digit exact match 0.007 / 0.067 / 0.106 / 0.10 for the control, d24, d48, scale-1e5),
  so across sizes the curve is not monotone and the mirage across sizes is NOT shown.

Tried for the mirage across sizes, not adopted (2026-12-03, one seed each; pilots d24-l2 and d48-l2
only, without the final evaluation, one process per core): addition alone (T5 init, no copying):
d24-l2 did not learn it either (2-digit per-digit p 0.30 at step 4000), so the copy task is not
what holds addition back; twice the addition problems (16,000 per length): in the pilot d48-l2
learned 2-digit addition (exact match 0.37 -> 0.95 between steps 3000 and 3500) and d24-l2 rose to
p 0.69, but the full preset with that mixture (17:59 wall, 1,846 s CPU) taught addition to no size
(2-digit exact match 0.007 / 0.095 / 0.069 / 0.093 / 0.127, p 0.27-0.64) and scale-1e5 copied
less (exact match 0.71). The full run holds its 1,000 final test items per length out of
training (7% fewer 2-digit training problems): whether a size crosses the addition transition
in 4000 steps turns on such differences, so with one seed per size no design tried gives a
curve across sizes; averaging several seeds per size is the untried next step (several times
this preset's 20 minutes).
Measured 2026-12-03 on 2 cores (one seed per size, nothing beside each run):
- One learning rate for every size (--config.opt.learning_rate=6e-3 --config.lr_reference_width=0;
  14:20 wall, 1,452 s CPU): d48-l2 learned 2 and 3 digits (exact match 0.995 / 0.966), d24-l2
  none (and copied less: exact match 0.54), d32-l2 as before (same rate), and scale-1e5 learned
  5-digit addition alone (exact match 0.949; 2 / 3 / 4 / 6 digits 0.09 / 0.003 / 0.002 / 0).
  Unpadded, each length needs its own offsets (k and 2k + 1 back) and is learned as its own
  task, so one per-digit p does not hold across lengths.
- Every length tracked at every checkpoint (the present eval.tasks; the 00c348b run's checkpoints
  evaluated again, 2:38 wall): d32-l2 learned 2 digits between steps 2500 and 2750 and 3 digits
  between 3250 and 3750 (each length at its own time, as above). Along its training exact
  match's breakthroughness grows with L, 42.1 [32.0, 53.4] at 2 digits and 152.5 [102, 156] at
  3, while per-digit p's stays 26.3 [17.1, 28.4] and 28.4 [20.7, 34.9]; exact match passes the
  jump rule (jump ratio 36.2 and 131) and p does not (11.4 and 10.7); exact match tracks p^L
  (3 digits at step 3750: 0.565 against 0.573). The preset run fresh afterwards: 13:53 wall,
  1,416 s of CPU, nothing beside it, its report identical to that re-evaluation's. Its verdicts
  along training (report.md, study_report.jump_verdicts, its report regenerated with the verdict
  code): copying genuine for d32-l2, d48-l2 and scale-1e5 (per-token accuracy's jump ratio
  159-245, probability's 116-276) and a mirage for d24-l2 (exact match 48.7, accuracy 5.1,
  probability 6.4); 2- and 3-digit addition along d32-l2 mirages (accuracy 11.4 / 10.7,
  probability 4.1 / 9.2).
- The same preset with --config.train.seed=1 (16:57 wall, 1,437 s CPU; a 4-minute simulation
  ran beside it): copying genuine for all four 2-layer sizes, and no size learned addition
  (2-digit exact match <= 0.087), so no addition verdict.
- The same preset with --config.train.seed=2 (10:34 wall, 1,072 s CPU, nothing beside it): the
  mirage along training again, now at every length. d32-l2 learned addition of 2 to 6 digits
  (final exact match 1.0 / 1.0 / 0.985 / 0.989 / 0.951) and along its training exact match's
  breakthroughness grows with L, 57 / 67 / 237 / 398 / 377 at 2 / 3 / 4 / 5 / 6 digits, while
  per-digit accuracy's stays 21-34 and probability's 28-43; the jump rule calls all five
  "mirage" (exact match jump ratio 29-179, accuracy 7-19, probability 6-13). At step 2750
  exact match falls with L, 0.83 / 0.655 / 0.5225 / 0.4375 / 0.3625, while p stays 0.85-0.93,
  and p^L gives 0.835 / 0.665 / 0.541 / 0.417 / 0.338. scale-1e5 learned 2-5 digits (mirage at
  2 and 3, genuine at 4 and 5); d24-l2 and d48-l2 learned none, so across sizes the curve is
  again not monotone. Copying: genuine for d24-l2, d32-l2 and d48-l2; scale-1e5 rose over
  several checkpoints (jump ratio 7.9).
- --config.train.seed=3 (11:03 wall, 1,127 s CPU, nothing beside it): d48-l2 learned 2-digit
  addition (final exact match 0.916) and part of 3-digit (0.463), and the jump rule calls both
  "mirage" along its training (exact match jump ratio 37.7 / 78, accuracy 16.8 / 5.5,
  probability 8.5 / 3.3); no other size passed exact match 0.1. Copying genuine for d32-l2 and
  d48-l2. Over seeds 0-3, the addition mirage along training shows at seeds 0, 2 and 3 (d32-l2,
  d32-l2 and scale-1e5, d48-l2) and no size learned addition at seed 1; which size learns
  addition in 4000 steps varies with the seed, so no seed gives a monotone curve across sizes.
- Padded operands (cpu_tiny_padded: every operand written with 6 digits, zeros in the high
  places, Lee et al. 2023; 13:12 wall, 1,216 s CPU): every 2-layer size learned every length
  (final exact match >= 0.996 at 2 to 6 digits, 1000 items each; the 1-layer control <= 0.017,
  p 0.18-0.30) and copying. Along training per-digit p jumps with exact match (e.g. d32-l2 at
  6 digits: p 0.19 / 0.38 / 0.83 / 0.97 and exact match 0 / 0 / 0.28 / 0.85 at steps 1000-1750;
  the jump rule true for p at every tracked length, 2, 4 and 6, and every 2-layer size): with one per-digit procedure,
  learning it is itself the transition, so padding turns the mirage into a genuine transition.
  Smaller 2-layer widths under the same preset: d8-l2 (1 head) learned nothing (6-digit p 0.18),
  d12-l2 (1 head) reached p 0.64-0.86 with exact match ~0.1 at every length (errors on a subset
  of items, not independent per digit), d16-l2 learned every length (final exact match >= 0.98); with 2 heads,
  d8 learned nothing and d12 learned it between steps 3000 and 3500 (final exact match
  0.885-0.922, p 0.97-0.98). Across these widths per-digit p is no smoother than exact match.
- Five widths, one head each (cpu_tiny_widths: d8 / d10 / d12 / d14 / d16, padded; 5:37 wall,
  541 s CPU, nothing beside it): final exact match at 2 digits 0.019 / 0.009 / 0.107 / 0.86 /
  0.999 and at 6 digits 0 / 0 / 0.097 / 0.447 / 0.938; per-digit p at 2 digits 0.30 / 0.29 /
  0.64 / 0.94 / 1.0 and at 6 digits 0.18 / 0.17 / 0.86 / 0.89 / 0.99. d14 is Schaeffer et al.'s
  compounding at one size: exact match 0.86 / 0.763 / 0.688 / 0.581 / 0.447 at 2-6 digits
  against p^L 0.856 / 0.755 / 0.681 / 0.575 / 0.453, inside each other's 80% intervals, while p
  stays 0.89-0.94. d12 is not (exact match ~0.1 against p^L 0.32-0.37: its errors share
  items). Across sizes the breakthroughness of exact match FALLS with L (8.2 at 2 digits, 3.7
  at 6) and that of per-digit accuracy rises (3.3, 10.9): p itself jumps between d10 and d12,
  so this ladder shows the compounding but not the mirage across sizes.
T5 kernels with GPT-2's N(0, 0.02) embedding tables (an init scheme tried, then removed): copying
learned, addition not (d48-l2 p 0.64).

`cpu_tiny_padded` is cpu_tiny_base10 with padded addition operands (above; cpu_tiny is that in base 26); `cpu_tiny_widths` is that at
five small 2-layer widths of one head (above). `micro` (2 sizes, a handful
of steps) runs end to end in under a minute; tests use it.
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

from research.sharding import DEFAULT_RULES

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
        **{f"d{d}-l2": dict(preset="scale-1e5", d_model=d, num_heads=d // 8, d_ff=4 * d) for d in (8, 12, 16, 24, 32, 48)},
        **{f"d{d}-l2h2": dict(preset="scale-1e5", d_model=d, num_heads=2, d_ff=4 * d) for d in (8, 12)},
        **{f"d{d}-l2h1": dict(preset="scale-1e5", d_model=d, num_heads=1, d_ff=4 * d) for d in (8, 10, 12, 14, 16)}})
    # float32 compute: on CPU bf16 is emulated and slower. Rotary positions: with learned
    # positions no size left the unigram plateau in 1200 steps (addition per-digit p 0.17-0.27,
    # copying at chance 0.03-0.05, every size alike); relative attention is what both tasks need.
    # T5's init (kernels N(0, fan_in^-1/2), token embeddings N(0, 1)) in place of GPT-2's N(0, 0.02):
    # an induction head is a product of small matrices across two layers, and from a 0.02 init
    # its gradient starts near zero (a long plateau). Measured on the copy task alone (standalone
    # pilots, d32-l2, one problem per document, issue-9h note): with N(0, 0.02) teacher-forced
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
    # displaced was learned less (issue-9g note); copying_varied, with which d48-l2 learned
    # addition of every length (issue-9f note), is kept. No corpus text: the steps go to the tasks.
    # One copy problem per document (examples_per_document_by_task), each its own packed segment:
    # with several problems in one context every letter also occurs in the earlier problems, so
    # "find the current letter's earlier occurrence" matches wrong copies as often as the right
    # one. With (1, 16) and GPT-2 init no 2-layer size learned to copy in 4000 steps; with T5
    # init the head formed on the training stream but held-out copies rose only gradually
    # (standalone pilot, d32-l2: accuracy 0.19 -> 0.62 over steps 400-1500, exact match <= 0.11).
    # Alone in its segment the prompt is also tokenized as at evaluation (its first letter
    # "\u2581q" on both sides, where after a newline it was "q").
    config.mixture = ml_collections.ConfigDict(dict(
        corpus_fraction=0.0, examples_per_document=(1, 16), examples_per_document_by_task={COPY_TASK: (1, 1)},
        seed=1, tasks={**{addition(k): 8_000 for k in range(2, 7)}, COPY_TASK: 16_000}))
    # A character vocabulary (no byte fallback): every letter of the copying task is one piece
    # ("\u2581q"). With 256 byte pieces + 64 learned ones (vocab 320), half the letters were split
    # into "\u2581" + letter: the copy then needs a 2-back lookup, and the many "\u2581" tokens
    # inflated teacher-forced accuracy at chance to 0.25. 73 pieces is all the mixture has.
    config.tokenizer = ml_collections.ConfigDict(dict(vocab_size=73, byte_fallback=False, character_coverage=1.0,
                                                      max_training_chars=2_000_000))
    config.train = ml_collections.ConfigDict(dict(
        num_steps=4000, batch_size=16, seq_len=128, microbatches=1, seed=0, z_loss=1e-4,
        log_every_steps=50, eval_every_steps=250, eval_batches=4, stop_after_steps=0, peak_flops=0.0,
        progress_bar=False))
    # Learning rate per size by a width transfer rule (muP-like, as the scaling study's
    # sweep.lr_reference_width), floored: learning_rate x max(lr_reference_width / d_model,
    # lr_scale_floor): 8e-3 at d_model 24, 6e-3 at 32, 4e-3 at 48 and at 64 (scale-1e5). Without
    # the floor scale-1e5 trained at 3e-3 and did not learn addition (per-digit p 0.27-0.35 at
    # step 4000), while the same model at 4e-3 learned it outright (exact match >= 0.993; one
    # seed each, issue-9f note): the rule was tuned at width 48 and is not extrapolated below its
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
        # Addition in base 26, operands padded to 6 digits (module docstring): per-digit p grows
        # by degrees with size among the 2-layer models, the mirage's premise.
        _use_addition_width(config, PADDED_WIDTH, MIRAGE_BASE)
        config.report.mirage_sizes = ("d24-l2", "d32-l2", "d48-l2", "scale-1e5")
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
        # 1-16 per document, as the other tasks. Its last full run (the "previous preset" figures in this
        # module's docstring) showed the mirage along training (addition learned, exact match
        # jumping while per-digit p rose smoothly) and no copying; cpu_tiny_base10 shows the copying
        # transition, and in its full run only d32-l2 learned addition (2-3 digits). Kept so the
        # design with more addition learned can still be run.
        config.model.init_scheme = "normal"
        config.mixture.examples_per_document_by_task = {}
    elif arg == "cpu_tiny_padded":
        # cpu_tiny_base10 with every addition operand zero-padded to 6 digits (the module docstring's
        # "padded operands" figures): every 2-layer size learns every length, and per-digit p
        # jumps with exact match, a genuine transition in place of the mirage.
        _use_addition_width(config, PADDED_WIDTH)
    elif arg == "cpu_tiny_widths":
        # cpu_tiny_padded at five small 2-layer widths of one head each (module docstring): where
        # per-digit p is between chance and 1, exact match beside p^L at every length.
        _use_addition_width(config, PADDED_WIDTH)
        config.sizes = tuple(f"d{d}-l2h1" for d in (8, 10, 12, 14, 16))
    elif arg == "gpu_host":
        # One 8-GPU host: a 7-size ladder 1e5 .. 1e8 non-embedding parameters, 20000 steps of
        # 128 x 256 tokens in bf16, on cpu_tiny's tasks (addition in base 26, padded; copying). `--dry_run` prints the training FLOPs and the time at
        # config.estimate's peak and MFU. The MFU is an assumption, not a measurement (no
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
