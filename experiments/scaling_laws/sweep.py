"""Run a scaling sweep through the training system, record every run, then fit.

`run_sweep(config, workdir)` is what `python -m experiments.scaling_laws` calls:

  1. plan (research/scaling/sweep_plan.py): the ladder and its runs; bad input fails here;
  2. one tokenizer for every run, trained once into workdir/tokenizers (or the given model);
  3. each run trains in workdir/runs/<run_id> via research.training.train_and_evaluate with
     its own step count and schedule (experiments/scaling_laws/sweep_train.py). A run with
     workdir/runs/<run_id>/result.json is finished and skipped; one with checkpoints but no
     result (or an unreadable one: run_dirs.read_result) was interrupted and resumes.
     A run that raises (diverges, runs out of memory, ...) is recorded as failed and the
     sweep goes on; a mistake in the config itself (ConfigError, DataError) stops it, and so
     does Ctrl-C / SIGTERM (preemption.Interrupted: the run saved a checkpoint and stays
     pending, to resume on the next start);
  4. workdir/runs.csv, runs.jsonl and curves.csv are rewritten after every run
     (research/scaling/sweep_records.py);
  5. when no run is pending, experiments/scaling_laws/sweep_fit.py marks early-plateau runs,
     fits runs.csv under nominal and exact accounting into workdir/fit.json and plots, and
     adds a "sweep" section (Approach 1 over final losses, N_opt exponents side by side, the
     held-out budget, seed noise, and on the synthetic corpus the reachable loss beside E).
     curves.csv (training curves) is written for plots; no fit reads it.

On a CPU host the command trains the runs in one worker process per core
(experiments/scaling_laws/sweep_workers.py): each worker claims a run before training it
(`run_sweep(..., worker=True)`), and the command fits once all have exited.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from typing import Any, Sequence, TextIO

import ml_collections
import numpy as np
import tqdm

from research import data as data_lib
from research.atomic_files import write_text_atomically
from research.data.config import DataConfig
from research.models.config import ConfigError
from experiments.scaling_laws.run_dirs import RESULT_FILE, _check_same_run, latest_checkpoint, read_result
from experiments.scaling_laws.sweep_train import (TrainFn, can_resume_together, common_resume_step,
                                                  same_program_groups, train_alone, train_group, train_one)
from research.scaling import sweep_records
from research.scaling.chinchilla_fit import MIN_BOOTSTRAP, design_problem
from research.scaling.sweep_plan import (LadderModel, PlannedRun, SweepError, SweepSpec, estimated_seconds,
                                         ladder_models, plan_runs, trained_model_fields, warmup_steps)
from research.training import preemption

FIT_INIT_GRIDS = ("paper", "coarse")  # Approach 3's L-BFGS starting points (research.scaling.chinchilla_fit)
# Fields run_config sets for every run: the one value it sets (None: each run's own) and what sets
# it. The presets leave them None ("set by the sweep"); any other value was replaced per run without
# a word, so plan_sweep refuses it.
PLAN_SET_FIELDS: dict[str, tuple[Any, str]] = {
    "train.num_steps": (None, "each run's steps come from its budget in sweep.budgets, sweep.tokens_per_param or "
                              "sweep.tokens, over train.batch_size x train.seq_len tokens a step; lr_check's from "
                              "--steps"),
    "train.stop_after_steps": (0, "every run trains to its end; stop the sweep with Ctrl-C / SIGTERM and the same "
                                  "command resumes it"),
    "train.log_every_steps": (1, "every step is recorded, for curves.csv"),
    "train.progress_bar": (False, "the sweep draws one bar over all its runs"),
    "opt.warmup_steps": (None, "each run warms up over sweep.warmup_fraction of its own steps"),
}


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    spec: SweepSpec
    data_config: DataConfig
    models: list[LadderModel]
    runs: list[PlannedRun]


@dataclasses.dataclass
class SweepOutcome:
    plan: SweepPlan
    records: list[dict]
    counts: dict[str, int]  # trained, skipped, failed (this invocation), pending (left after it)
    fit: dict | None  # fit.json's content, or None
    fit_note: str  # why the fit was skipped or reused, or ""


def plan_sweep(config: ml_collections.ConfigDict) -> SweepPlan:
    """The sweep's plan; every user mistake in the sweep or data sections is raised here."""
    spec = SweepSpec.from_mapping(config.sweep.to_dict())
    data_config = DataConfig(**config.data.to_dict())
    tokenizer = data_config.tokenizer
    if tokenizer.model_path:
        vocab_size = data_lib.Tokenizer.load(tokenizer.model_path, num_extra_ids=tokenizer.num_extra_ids).vocab_size
    else:  # SentencePiece trains exactly vocab_size pieces
        vocab_size = tokenizer.vocab_size + tokenizer.num_extra_ids
    if config.objective != "causal_lm":
        raise SweepError(f"objective={config.objective!r}: a scaling sweep trains decoders with objective='causal_lm'.")
    shard = config.get("shard", {"index": 0, "count": 1})
    if not 0 <= shard["index"] < shard["count"]:
        raise SweepError(f"shard.index={shard['index']} must be in [0, shard.count={shard['count']}).")
    _check_fit_settings(config.get("fit", None))
    _check_plan_set_fields(config)
    seed = config.train.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SweepError(f"train.seed={seed!r} must be a whole number >= 0: the whole sweep's seed (each run trains "
                         "with it, a repeated run with it plus its sweep.repeat_seeds offset), e.g. 1.")
    for name in ("batch_size", "seq_len"):  # before the ladder: they size every model and run
        value = config.train.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepError(f"train.{name}={value!r} must be a whole number >= 1, e.g. "
                             f"--config.train.{name}={16 if name == 'batch_size' else 64}.")
    models = ladder_models(spec, vocab_size=vocab_size, seq_len=config.train.seq_len,
                           model_fields=config.model.to_dict())
    runs = plan_runs(spec, models, batch_size=config.train.batch_size, seq_len=config.train.seq_len, seed=seed)
    _check_fittable(spec, runs, config.get("fit", None))
    return SweepPlan(spec, data_config, models, runs)


def _check_fittable(spec: SweepSpec, runs: Sequence[PlannedRun], fit: ml_collections.ConfigDict | None) -> None:
    """A design the laws cannot be fitted to, refused before training when the fit is on. One
    IsoFLOP budget gives one profile, and Approaches 1 and 2 and the held-out prediction need
    profiles at >= 2 (3) budgets. One tokens-per-parameter ratio puts every run on D = k N: N
    and D move together, so Approach 3 cannot tell A / N^alpha from B / D^beta, and Approach 1's
    N_opt ∝ C^0.5 holds by construction (each compute has one model; no fit reads the training
    curves). Whole steps make such a line inexact (~1% off it at test_tiny's few-step runs), so it
    is refused by its ratio, not by chinchilla_fit.design_problem, which then checks the rest
    (too few sizes, token counts or design points)."""
    if not fit or not fit.get("enabled", True):
        return
    if spec.plan == "isoflop" and len(set(spec.budgets)) < 2:
        raise SweepError(f"sweep.budgets={tuple(spec.budgets)} holds one FLOP budget: the scaling-law fits need "
                         "IsoFLOP profiles at >= 2 budgets (3 for the held-out prediction); set e.g. "
                         "--config.sweep.budgets='(1e11, 3e11, 1e12)', or train the one profile without fitting: "
                         "--config.fit.enabled=False.")
    if spec.plan == "tokens" and spec.tokens_per_param and len({run.tokens_per_param_target for run in runs}) < 2:
        raise SweepError(f"sweep.tokens_per_param={tuple(spec.tokens_per_param)} gives one tokens-per-parameter ratio "
                         "(D = k N for every run): N and D move together, so Approach 3 cannot separate A/N^alpha "
                         "from B/D^beta; set >= 2 ratios, e.g. --config.sweep.tokens_per_param='(10, 20, 40)', or "
                         "train the runs without fitting: --config.fit.enabled=False.")
    problem = design_problem(np.array([run.N for run in runs], float), np.array([run.tokens for run in runs], float))
    if problem:
        raise SweepError(f"the planned runs: {problem.rstrip('.')}; or train them without fitting: "
                         "--config.fit.enabled=False.")


def _check_plan_set_fields(config: ml_collections.ConfigDict) -> None:
    """A value given for a field the sweep sets per run (PLAN_SET_FIELDS), refused before any work."""
    for dotted, (fixed, why) in PLAN_SET_FIELDS.items():
        section, name = dotted.split(".")
        value = config[section].get(name)
        if value is not None and (fixed is None or value != fixed):
            to = "" if fixed is None else f" to {fixed!r}"
            raise SweepError(f"{dotted}={value!r}: the sweep sets it{to} for each run ({why}); drop "
                             f"--config.{dotted}.")


def _check_fit_settings(fit: ml_collections.ConfigDict | None) -> None:
    """The fit section's mistakes, before any run trains (the fit reads them only once every
    run has finished)."""
    if not fit or not fit.get("enabled", True):
        return
    bootstrap, budget, grid = fit.get("bootstrap", 0), fit.get("compute_budget", 1.0), fit.get("init_grid", "paper")
    seed = fit.get("seed", 0)
    # MIN_BOOTSTRAP: fewer resamples give intervals that move with the resampling (chinchilla_fit says why)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or not (bootstrap == 0 or
                                                                             bootstrap >= MIN_BOOTSTRAP):
        raise SweepError(f"fit.bootstrap={bootstrap!r} must be 0 (no intervals) or a whole number >= {MIN_BOOTSTRAP} "
                         "(resamples; 4000 for 10-90% intervals).")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:  # numpy's generators take seeds >= 0
        raise SweepError(f"fit.seed={seed!r} (the bootstrap's seed) must be a whole number >= 0, e.g. 0.")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise SweepError(f"fit.compute_budget={budget!r} must be a positive number of FLOPs, e.g. 1e12.")
    if grid not in FIT_INIT_GRIDS:
        raise SweepError(f"fit.init_grid={grid!r} is not one of {FIT_INIT_GRIDS}.")


def run_config(config: ml_collections.ConfigDict, run: PlannedRun, spec: SweepSpec, *, tokenizer_path: str,
               peak_flops: float) -> ml_collections.ConfigDict:
    """The training system's config for one run: the sweep config's sections, with the
    run's model, step count, warmup, shared tokenizer, and a record of every step."""
    sections = {k: v for k, v in config.to_dict().items() if k not in ("sweep", "fit", "shard", "estimate")}
    sections["model"] = trained_model_fields(run.model.overrides, sections["model"])  # as ladder_models sized it
    sections["train"].update(num_steps=run.num_steps, log_every_steps=1, stop_after_steps=0, progress_bar=False,
                             peak_flops=peak_flops)
    sections["opt"]["warmup_steps"] = warmup_steps(spec, run.num_steps)
    sections["opt"]["learning_rate"] = sections["opt"]["learning_rate"] * run.learning_rate_scale
    sections["train"]["seed"] = run.seed  # config.train.seed, plus the run's repeat offset (plan_runs)
    sections["data"]["tokenizer"]["model_path"] = tokenizer_path
    return ml_collections.ConfigDict(sections)


def _shared_tokenizer(data_config: DataConfig, workdir: str) -> data_lib.Tokenizer:
    """The sweep's one tokenizer; on the synthetic corpus it must be character level."""
    tokenizer = data_lib.build_tokenizer(data_config, workdir)
    if data_config.source == "synthetic":
        text = data_lib.document_source(data_config, "validation")[0]
        num_tokens = len(tokenizer.encode(text))
        if num_tokens != len(text) + 1:
            raise SweepError(f"the tokenizer turns {len(text)} characters into {num_tokens} tokens, so losses are not "
                             f"per character; set data.tokenizer.vocab_size={data_config.synthetic.char_vocab_size}, "
                             "byte_fallback=False, character_coverage=1.0.")
    return tokenizer


def prepare_sweep(config: ml_collections.ConfigDict, workdir: str) -> tuple[SweepPlan, data_lib.Tokenizer, float]:
    """(plan, the shared tokenizer, peak FLOP/s): the plan and tables written (process 0),
    the tokenizer trained once; every user mistake in the config fails here."""
    import jax

    from research.training.optimizers import OptimizerConfig

    plan = plan_sweep(config)
    for run in plan.runs:  # a changed config: refused here, before plan.json and the tables are rewritten
        # (inside each worker it surfaced as a worker's exit code); the peak is not part of a run's
        # identity, the tokenizer's settings and a given model file's contents are (run_dirs._check_same_run)
        one = run_config(config, run, plan.spec, tokenizer_path=plan.data_config.tokenizer.model_path, peak_flops=1.0)
        try:  # each run's own warmup and length: a wsd overlap of the shortest run only failed it in its
            # turn, after longer runs had trained, and the corrected command was then another config
            OptimizerConfig(total_steps=run.num_steps, **one.opt.to_dict())
        except ConfigError as error:
            raise SweepError(f"run {run.run_id} ({run.num_steps} steps, opt.warmup_steps={one.opt.warmup_steps}): "
                             f"{error}") from None
        _check_same_run(os.path.join(workdir, "runs", run.run_id), one, write=False)
    _check_same_plan(workdir, plan)
    if jax.process_index() == 0:  # multi-host runs are one program; process 0 writes
        os.makedirs(workdir, exist_ok=True)
        # Atomically: a kill mid-write left half a plan.json, which _check_same_plan reads as
        # "no plan" and then accepted a plan that drops runs.
        write_text_atomically(os.path.join(workdir, "plan.json"),
                              json.dumps([sweep_records.planned_record(run) for run in plan.runs], indent=1))
        sweep_records.write_tables(_all_records(plan.runs, os.path.join(workdir, "runs")), workdir)
    tokenizer = _shared_tokenizer(plan.data_config, workdir)
    return plan, tokenizer, config.train.peak_flops or _measure_peak_flops()


def _check_same_plan(workdir: str, plan: SweepPlan) -> None:
    """Refuse a plan that drops runs of the one workdir/plan.json holds: rewriting plan.json and
    the tables would make the old runs' rows vanish while the old fit.json stayed. The same plan
    resumes; a plan that only adds runs (more budgets or sizes; "add runs" is what a fit that
    lacks runs advises) keeps every old row and goes on."""
    try:
        with open(os.path.join(workdir, "plan.json")) as f:
            records = json.load(f)
        old = [record["run"] for record in records]
    except FileNotFoundError:
        return
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return  # unreadable (written by code before it was atomic): the run directories' own checks still apply
    dropped = [run_id for run_id in old if run_id not in {run.run_id for run in plan.runs}]
    sizes = {run.model.name: run.model.params_total for run in plan.runs}
    resized = [r for r in records
               if r["run"] in dropped and sizes.get(r.get("model"), r.get("N_total")) != r.get("N_total")]
    if resized:  # the same settings, sized as trained since fb5e730: other step counts, other run ids
        r = resized[0]
        raise SweepError(f"{workdir} holds a sweep planned when {r['model']} was sized at {r['N_total']:,} parameters; "
                         f"it trains {sizes[r['model']]:,} (config.model fields such as num_kv_heads were left out of "
                         f"the sizing before 2026-12-07), so {len(dropped)} of its {len(old)} runs, e.g. {dropped[0]}, "
                         "have other step counts now; use a new --workdir.")
    if dropped:
        raise SweepError(f"{workdir} holds a sweep planned with other settings ({len(dropped)} of its {len(old)} runs, "
                         f"e.g. {dropped[0]}, are not in this plan); use a new --workdir, or restore the settings.")


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *, train_fn: TrainFn | None = None,
              retry_failed: bool = False, worker: bool = False, out: TextIO = sys.stdout) -> SweepOutcome:
    """Train every pending run of this shard, record all runs, and fit once none is pending.

    worker=True (one of several processes training this sweep, experiments/workers.py): each
    run is claimed before it trains and skipped while another process holds it, the largest
    runs go first (the workers then end close together), and the fit is left to the caller."""
    import jax

    from experiments import workers

    plan, tokenizer, peak_flops = prepare_sweep(config, workdir)
    primary = jax.process_index() == 0
    runs_dir = os.path.join(workdir, "runs")
    mine = plan.runs[config.shard.index::config.shard.count]
    counts = {"trained": 0, "skipped": 0, "failed": 0}
    print(f"sweep: {len(plan.runs)} runs over {len(plan.models)} models ({plan.spec.plan}); this job runs "
          f"{len(mine)}; {sum(r.compute_exact for r in plan.runs):.3g} training FLOPs in all", file=out)
    progress = tqdm.tqdm(total=sum(r.compute_exact for r in mine), unit="FLOP", unit_scale=True, desc="sweep",
                         file=out, dynamic_ncols=True, mininterval=1.0)
    groups = same_program_groups(mine) if train_fn is None else [[run] for run in mine]
    labels = {run.run_id: f"[{i}/{len(mine)}] {run.run_id}" for i, run in enumerate(mine, start=1)}
    if worker:
        groups.sort(key=lambda group: -sum(run.compute_exact for run in group))
    requests = preemption.stop_requests()
    try:
        for group in groups:
            if preemption.stop_requests() > requests:
                # Ctrl-C / SIGTERM during a run's last steps ended that run normally: stop here, not at
                # the next run's first step (its Guard never saw the signal)
                raise preemption.StoppedBetweenRuns(preemption.last_stop_request(), "the run(s) it came during ended")
            with (workers.claim(os.path.join(runs_dir, group[0].run_id)) if worker
                  else contextlib.nullcontext(True)) as ours:
                if not ours:  # another worker trains it; its result is read at the end
                    progress.write(f"{labels[group[0].run_id]}: being trained by another worker", file=out)
                    continue
                _run_group(group, config, plan, workdir, tokenizer.path, peak_flops, counts, labels, progress,
                           train_fn=train_fn, retry_failed=retry_failed, primary=primary, out=out)
    finally:  # on a stop or an error too: a bar left open is closed later by the garbage collector, and
        # when that fell inside another bar's write, tqdm raised "Set changed size during iteration"
        progress.close()

    records = _all_records(plan.runs, runs_dir)
    counts["pending"] = sum(r["status"] == "pending" for r in records)
    fit, note = None, ""
    if not primary:
        note = "fit left to process 0"
    elif worker:
        note = "fit left to the process that started the workers"
    elif not config.fit.enabled:
        note = "fit disabled (fit.enabled=False)"
    elif counts["pending"]:
        note = f"fit deferred: {counts['pending']} run(s) pending (other shards, or interrupted)"
    else:
        from experiments.scaling_laws.sweep_fit import fit_sweep
        fit, note = fit_sweep(config, workdir, plan, records)
    if note:
        print(note, file=out)
    return SweepOutcome(plan, records, counts, fit, note)


def _run_group(group: list[PlannedRun], config: ml_collections.ConfigDict, plan: SweepPlan, workdir: str,
               tokenizer_path: str, peak_flops: float, counts: dict[str, int], labels: dict[str, str],
               progress: tqdm.tqdm, *, train_fn: TrainFn | None, retry_failed: bool, primary: bool,
               out: TextIO) -> None:
    """Train the group's unfinished runs (together when they share a program) and record them."""
    runs_dir = os.path.join(workdir, "runs")
    pending = []
    for run in group:
        run_dir = os.path.join(runs_dir, run.run_id)
        one = run_config(config, run, plan.spec, tokenizer_path=tokenizer_path, peak_flops=peak_flops)
        _check_same_run(run_dir, one, write=primary)
        previous = read_result(run_dir)
        label = labels[run.run_id]
        if previous is not None and (previous["status"] == "ok" or not retry_failed):
            counts["skipped"] += 1
            progress.update(run.compute_exact)
            progress.write(f"{label}: finished before ({previous['status']}), skipped", file=out)
            continue
        if previous is not None and primary:  # retrying a failed run: it is pending until it ends
            os.remove(os.path.join(run_dir, RESULT_FILE))
        pending.append((run, one, run_dir, label))
    if not pending:
        return
    together = len(pending) > 1 and can_resume_together(pending)
    resumed = common_resume_step([p[2] for p in pending]) if together else latest_checkpoint(pending[0][2])
    progress.set_postfix_str(" + ".join(p[0].run_id for p in pending)
                             + (f" (resuming at step {resumed})" if resumed else ""))

    def record(finished: list[tuple], records: list[dict]) -> None:
        for (run, _, run_dir, label), one_record in zip(finished, records):
            counts["failed" if one_record["status"] == "failed" else "trained"] += 1
            progress.update(run.compute_exact)
            progress.write(run_line(label, one_record), file=out)
            if primary:  # whole or absent: other workers read it while this one writes
                write_text_atomically(os.path.join(run_dir, RESULT_FILE),
                                      json.dumps(sweep_records.json_safe(one_record)))
        if primary:
            sweep_records.write_tables(_all_records(plan.runs, runs_dir), workdir)

    if together:
        record(pending, train_group(pending))
        return
    # One by one (alone, or e.g. one seed diverged before its first save while the other saved:
    # each goes on from its own checkpoint), each recorded as it ends, so an interrupt of a later
    # one (preemption.Interrupted, raised through) loses no earlier result.
    requests = preemption.stop_requests()
    for item in pending:
        if preemption.stop_requests() > requests:  # as between groups (run_sweep)
            raise preemption.StoppedBetweenRuns(preemption.last_stop_request(), "the run it came during ended")
        run, one, run_dir, _ = item
        # train_fn (tests' stand-in trainer) comes with one-run groups only (run_sweep)
        record([item], [train_one(run, one, run_dir, train_fn or train_alone)])


# A result's columns that come from the plan's sizing of its model: taken from the plan, which sizes
# the model the run trained (its directory holds this config: _check_same_run). Results written
# before fb5e730 froze sizes that left out config.model fields (N 888 recorded for 816 trained).
_PLANNED_SIZES = ("num_layers", "d_model", "N", "N_total", "N_non_embedding", "C_6ND", "C_exact")


def _all_records(runs: Sequence[PlannedRun], runs_dir: str) -> list[dict]:
    """Every planned run's record: its result if it has ended, its plan otherwise."""
    records = []
    for run in runs:
        planned, result = sweep_records.planned_record(run), read_result(os.path.join(runs_dir, run.run_id))
        records.append(planned if result is None else {**result, **{k: planned[k] for k in _PLANNED_SIZES}})
    return records


def run_line(label: str, record: dict[str, Any]) -> str:
    head = f"{label}: N={record['N']:,} D={record['D']:,} C={record['C_6ND']:.3g}"
    tail = f" ({record['seconds']:.0f} s" + (f", resumed at step {record['resumed_from_step']})"
                                             if record["resumed_from_step"] else ")")
    if record["status"] == "ok":
        return f"{head} loss={record['loss']:.4f}{tail}"
    return f"{head} FAILED: {record['error']}{tail}"


def _measure_peak_flops() -> float:
    from research.training.metrics import measure_peak_flops
    return measure_peak_flops()


def describe_plan(plan: SweepPlan, peak_flops: float, mfu: float) -> str:
    """The plan as text: one line per run, and the estimated training time."""
    lines = [f"{'run':32s} {'N':>10s} {'D':>12s} {'steps':>7s} {'C=6ND':>9s} {'C exact':>9s}"]
    for run in plan.runs:
        lines.append(f"{run.run_id:32s} {run.N:>10,} {run.tokens:>12,} {run.num_steps:>7,} {run.compute_6nd:>9.3g} "
                     f"{run.compute_exact:>9.3g}")
    seconds = estimated_seconds(plan.runs, peak_flops, mfu)
    lines.append(f"{len(plan.runs)} runs, {sum(r.tokens for r in plan.runs):,} tokens, "
                 f"{sum(r.compute_exact for r in plan.runs):.3g} FLOPs: about {seconds / 3600:.2g} h at {mfu:.0%} MFU "
                 f"of {peak_flops:.3g} FLOP/s (an estimate from FLOPs: peak and MFU are config.estimate's, whose "
                 "comment says where they came from, the MFU an assumption unless measured on this machine; "
                 "an MFU fitted on a whole run's wall time, as cpu_tiny's, already covers its compilation, "
                 "evaluation and fit)")
    return "\n".join(lines)

