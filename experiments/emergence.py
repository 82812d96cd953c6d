"""The emergence study: train a ladder of model sizes, evaluate each on held-out task
instances along training, and report every metric against parameters and compute.

    python -m experiments.emergence --config=experiments/configs/emergence.py:cpu_tiny --workdir=/tmp/emergence

Steps (each skipped on a rerun when already done):
  1. data/mixture.jsonl: the tasks' training documents, mixed with mixture.corpus_fraction of
     stdlib corpus text (cpu_tiny: none; problems held out for evaluation are never trained
     on); a SentencePiece tokenizer trained on it once and shared by every size.
  2. runs/<size>/: research.training.train_and_evaluate on that mixture (source="files"),
     every checkpoint kept; a finished run is not touched, an unfinished one resumes.
  3. runs/<size>/evals/step_<n>.json: every checkpoint on every (task, shots) pair.
  4. report/ (experiments/emergence_report.py): results.{json,csv} (one row per size, step,
     task and shots), summary.{json,csv} (each metric across sizes at the end of training, with
     BIG-bench linearity and breakthroughness), mirage.{json,csv} (exact match beside p^L per
     size and answer length, with their paired difference and whether its 80% interval holds 0,
     study_report.mirage_table) and mirage_shapes (their shapes across report.mirage_sizes),
     transition / transition_shapes / mirage_along_training (the same along training, with the
     jump rule), mirage_verdicts (the mirage by rule, study_report.sharpening_verdict: across
     sizes and along training per size), report.md, and plots: vs_params.png, vs_compute.png,
     zero_vs_few_shot.png, mirage.png, mirage_along_training.png, transition.png, and
     direct_vs_cot.png where chain-of-thought and direct variants of a task are both evaluated.
Several seeds of one study: experiments/emergence_seeds.py reads their workdirs side by side.

Tokenizer: the training system trains on SentencePiece ids, so the study uses a SentencePiece
model trained on the mixture rather than research.evaluation.CharTokenizer. Its split_digits
option already gives every digit its own token, which is what char-level tokenization buys
for arithmetic (per-token metrics are per-digit), while BPE pieces keep the code corpus
about three times shorter than characters would.

experiments/emergence_plan.py builds the plan (step 0: every model config and task, checked
before any compilation) and step 1's data; experiments/emergence_runs.py checks that the sizes a
workdir already holds were trained as asked; this module trains, evaluates and reports.
"""
from __future__ import annotations

if __name__ == "__main__":  # before the imports below (JAX, the config file): a Ctrl-C there must not be lost
    from research.early_interrupts import remember_early_interrupts
    remember_early_interrupts()

import contextlib
import os
import sys
import time
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import emergence_report
# The plan and data steps live in emergence_plan; examples_per_document is re-exported for callers.
from experiments.emergence_plan import (StudyPlan, examples_per_document, plan_study,  # noqa: F401
                                        prepare_data, read_json, size_model_fields)
from experiments.emergence_runs import check_trained_runs
from research.models.config import ConfigError

Log = Callable[[str], None]


def train_config(config: ml_collections.ConfigDict, size: str,
                 data_config: dict[str, Any]) -> ml_collections.ConfigDict:
    """The research.training config of one size of the ladder."""
    # Every checkpoint of the grid is kept (the curves along training are evaluated on it), and
    # the saves a stop adds off the grid only while they are the latest (needed to resume).
    every = config.checkpoint.every_steps
    return ml_collections.ConfigDict(dict(
        model=size_model_fields(config, size), objective="causal_lm", objective_options={},
        data=data_config, train=config.train.to_dict(),
        opt={**config.opt.to_dict(), "learning_rate": size_learning_rate(config, size)},
        checkpoint={**config.checkpoint.to_dict(), "keep_last": 2, "keep_every_steps": every, "keep_best": 0},
        mesh=config.mesh.to_dict()))


def size_learning_rate(config: ml_collections.ConfigDict, size: str) -> float:
    """opt.learning_rate x max(lr_reference_width / d_model, lr_scale_floor): a width transfer rule
    (as the scaling study's) that never goes below lr_scale_floor x opt.learning_rate;
    opt.learning_rate itself when config.lr_reference_width is 0 or absent."""
    from research.models import get_config

    reference = float(config.get("lr_reference_width", 0) or 0)
    if not reference:
        return float(config.opt.learning_rate)
    fields = size_model_fields(config, size)
    scale = reference / get_config(fields.pop("preset"), **fields).d_model
    return float(config.opt.learning_rate) * max(scale, float(config.get("lr_scale_floor", 0) or 0))


def evaluate_run(config: ml_collections.ConfigDict, plan: StudyPlan, size: str, run_dir: str, tokenizer: Any,
                 log: Log) -> list[dict[str, Any]]:
    """Rows of every checkpoint of one size (cached per step in <run_dir>/evals)."""
    from research.training.checkpoint_loading import checkpoint_steps_in, restore_params
    from research.evaluation.harness import Harness
    from research.evaluation.results_table import read_rows, write_rows
    from research.models import build_model, sizing

    model_config = plan.sizes[size]
    counts = sizing.param_counts(model_config)
    train = config.train
    flops_per_token = sizing.flops_per_token(model_config, train.seq_len, include_embedding=True).train
    model = build_model(model_config)
    rows = []
    # The grid's steps and the last: a stop's save off the grid (kept while it was the latest, or
    # by a study before keep_every_steps) is no point of the curve a run that never stopped has.
    steps = [s for s in checkpoint_steps_in(os.path.join(run_dir, "checkpoints"))
             if s % config.checkpoint.every_steps == 0 or s == train.num_steps]
    for step in steps:
        # Only the task results are cached; where the step sits (tokens, compute, final) is
        # recomputed from the config (a run trained to another num_steps is refused before).
        tokens = step * train.batch_size * train.seq_len
        identity = {"size": size, "params_non_embedding": counts.non_embedding, "params_total": counts.total,
                    "learning_rate": size_learning_rate(config, size), "step": step, "final": step == train.num_steps, "tokens": tokens,
                    "compute_flops": float(flops_per_token) * tokens}
        stem = os.path.join(run_dir, "evals", f"step_{step}")
        if read_json(stem + ".json").get("metadata", {}).get("fingerprint") == plan.fingerprint:
            rows.extend({**identity, **row} for row in read_rows(stem + ".json"))
            continue
        start = time.perf_counter()
        params = restore_params(os.path.join(run_dir, "checkpoints", str(step)))
        harness = Harness(model, params, tokenizer, batch_size=config.eval.batch_size,
                          min_bucket=config.eval.min_bucket)
        entries = plan.eval_entries + (final_entries_not_tracked(plan) if step == train.num_steps else [])
        results = evaluate_with_items(harness, entries)
        write_rows(results, stem, metadata={"fingerprint": plan.fingerprint})
        rows.extend({**identity, **row} for row in results)
        log(f"  evaluated {size} step {step} in {time.perf_counter() - start:.0f} s")
    return rows


def final_entries_not_tracked(plan: StudyPlan) -> list:
    """The final evaluation's entries less those the checkpoint evaluation already scores on the
    same items with the same shots (cpu_tiny tracks its 1000 final additions at every
    checkpoint): scoring them twice would cost time and give the last checkpoint two rows."""
    from research.evaluation.task_corpus import held_out_prompts

    key = lambda e: (e.name, e.num_fewshot, len(e.task.docs(e.task.spec.eval_split)),
                     tuple(sorted(held_out_prompts(e.task))))
    tracked = {key(e) for e in plan.eval_entries}
    return [e for e in plan.final_entries if key(e) not in tracked]


def evaluate_with_items(harness: Any, entries: list) -> list[dict[str, Any]]:
    """run_suite's rows, each with "items": its per-example values of the metrics that item
    bootstraps, teacher-forced p and the p^L comparison need (study_report.ITEM_METRICS)."""
    from research.evaluation.evaluator import evaluate
    from research.evaluation.study_report import ITEM_METRICS

    rows = []
    for entry in entries:
        result = evaluate(harness, entry.task, num_fewshot=entry.num_fewshot)
        items = {m: [float(e[m]) for e in result.examples] for m in ITEM_METRICS
                 if result.examples and m in result.examples[0]}
        if result.examples and "answer_token_greedy" in result.examples[0]:  # one list per item
            items["answer_token_greedy"] = [list(e["answer_token_greedy"]) for e in result.examples]
        rows.append({"task": entry.name, "num_shots": entry.num_fewshot, "chain_of_thought": entry.chain_of_thought,
                     "num_examples": len(result.examples), **result.metrics, "items": items})
    return rows


def run_study(config: ml_collections.ConfigDict, workdir: str, *, log: Log = print,
              worker: bool = False) -> dict[str, str]:
    """The whole study in `workdir`; returns the report's paths. Reruns skip finished work.
    worker=True (one of several processes, experiments/workers.py): train and evaluate each
    size this process claims, the largest first; the report is left to the caller."""
    from experiments import workers
    from research.training.checkpoint_loading import checkpoint_steps_in
    from research.evaluation.tokenizer_loading import load_tokenizer
    from research.training import preemption, train_and_evaluate
    from research.training.metrics import measure_peak_flops

    plan = plan_study(config)
    check_trained_runs(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    data_config = prepare_data(config, plan, workdir, log)
    tokenizer = load_tokenizer(data_config["tokenizer"]["model_path"])
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: peak_flops is filled in below
    rows = []
    sizes = list(config.sizes)
    if worker:  # the largest first: the workers then end close together (FLOPs only: estimate.* is
        flops = training_flops(config)  # --dry_run's, and a bad value of it stopped every worker)
        sizes.sort(key=lambda size: -flops[size])
    requests = preemption.stop_requests()
    unfinished = []  # sizes a train.stop_after_steps session left short of train.num_steps
    for size in sizes:
        run_dir = os.path.join(workdir, "runs", size)
        with workers.claim(run_dir) if worker else contextlib.nullcontext(True) as ours:
            if not ours:
                log(f"{size}: trained by another worker")
                continue
            steps = checkpoint_steps_in(os.path.join(run_dir, "checkpoints"))
            if steps and steps[-1] >= config.train.num_steps:
                log(f"{size}: trained ({steps[-1]} steps), skipping training")
            else:
                if not config.train.peak_flops:  # measured once, not once per size
                    config.train.peak_flops = measure_peak_flops()
                start = time.perf_counter()
                log(f"{size}: training {config.train.num_steps} steps at peak learning rate "
                    f"{size_learning_rate(config, size):.3g}")
                final = train_and_evaluate(train_config(config, size, data_config), run_dir)
                # A Ctrl-C / SIGTERM during a size's last steps ends its training normally (nothing
                # raises): stop before its evaluation and the next size (evaluations are cached per step).
                if preemption.stop_requests() > requests:
                    raise preemption.StoppedBetweenRuns(preemption.last_stop_request(), f"{size}'s training ended")
                # A session ended by train.stop_after_steps before an evaluation step returns no eval_loss.
                loss = f", eval_loss {final['eval_loss']:.3f}" if "eval_loss" in final else ""
                log(f"{size}: trained in {time.perf_counter() - start:.0f} s{loss}")
            rows.extend(evaluate_run(config, plan, size, run_dir, tokenizer, log))
            saved = checkpoint_steps_in(os.path.join(run_dir, "checkpoints"))
            if not saved or saved[-1] < config.train.num_steps:
                unfinished.append(f"{size} (step {saved[-1] if saved else 0})")
    if worker:
        return {}
    if unfinished:  # the report compares final models: without them it had nothing to plot (a traceback)
        log(f"no report yet: {', '.join(unfinished)} stopped before train.num_steps={config.train.num_steps} "
            f"(train.stop_after_steps={config.train.get('stop_after_steps', 0)}); their checkpoints and evaluations "
            "are kept: rerun without train.stop_after_steps (or with a later step) to finish them and write the report.")
        return {}
    paths = emergence_report.write_report(config, rows, workdir)
    with open(paths["report"], encoding="utf-8") as f:
        log(f.read())
    log("wrote " + ", ".join(paths.values()))
    return paths


def train_in_workers(config: ml_collections.ConfigDict, workdir: str, count: int, args: list[str]) -> None:
    """Train and evaluate the sizes in `count` worker processes (the same command with
    --study_worker), each pinned to its share of the cores, echoing their logs; the data and
    tokenizer are written and the peak FLOP/s measured here first, once."""
    from experiments import workers
    from research.training.metrics import measure_peak_flops

    plan = plan_study(config)
    check_trained_runs(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    prepare_data(config, plan, workdir, print)
    peak_flops = config.train.peak_flops or measure_peak_flops()
    log_dir = os.path.join(workdir, "workers")
    print(f"training {len(config.sizes)} sizes in {count} worker processes (their logs: {log_dir})")
    argvs = [workers.worker_argv("experiments.emergence", args, "--study_worker", f"--config.train.peak_flops={peak!r}")
             for peak in workers.peak_shares(peak_flops, count)]
    # forward_signals: a Ctrl-C / SIGTERM reaches the workers as SIGTERM (each saves its size's
    # checkpoint and stops), then workers.Stopped; the same command resumes.
    codes = workers.run_workers(argvs, log_dir=log_dir, poll=workers.log_echo(log_dir, count), forward_signals=True)
    failure = workers.failure_line(codes, log_dir)
    if failure:
        raise ConfigError(f"{failure}; finished sizes are kept, rerun the same command to go on.")


def training_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
    """{size: training FLOPs}: sizing's exact train FLOPs per token x the tokens it trains on."""
    from research.models import get_config, sizing

    train = config.train
    tokens = train.num_steps * train.batch_size * train.seq_len
    flops = {}
    for size in config.sizes:
        fields = size_model_fields(config, size)
        model = get_config(fields.pop("preset"), **fields)
        flops[size] = float(sizing.flops_per_token(model, train.seq_len, include_embedding=True).train) * tokens
    return flops


def estimated_training(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Training FLOPs of every size (training_flops) and the time they take at config.estimate's
    peak FLOP/s and MFU: an estimate, not a measurement."""
    flops = training_flops(config)
    peak, mfu = config.estimate.peak_flops, config.estimate.mfu
    if not (isinstance(peak, (int, float)) and isinstance(mfu, (int, float)) and peak > 0 and 0 < mfu <= 1):
        raise ConfigError(f"config.estimate: peak_flops={peak!r} must be > 0 FLOP/s and mfu={mfu!r} in (0, 1], "
                          "e.g. --config.estimate.mfu=0.3.")
    seconds = sum(flops.values()) / (peak * mfu)
    return {"flops": flops, "total_flops": sum(flops.values()), "seconds": seconds,
            "peak_flops": config.estimate.peak_flops, "mfu": config.estimate.mfu}


def print_estimate(config: ml_collections.ConfigDict) -> None:
    """--dry_run: each size's training FLOPs and the estimated time; the checks a run makes
    before any work come first, so a dry run vets the config (a ConfigError)."""
    plan_study(config)
    estimate = estimated_training(config)
    for size, flops in estimate["flops"].items():
        print(f"{size:12s} {flops:.3g} training FLOPs")
    print(f"{estimate['total_flops']:.3g} FLOPs: about {estimate['seconds'] / 3600:.2g} h of training at "
          f"{estimate['mfu']:.0%} MFU of {estimate['peak_flops']:.3g} FLOP/s (an estimate from FLOPs; the MFU is "
          "config.estimate.mfu, an assumption unless measured on this machine (the preset's comment says "
          "where it came from); evaluation not included)")


def _define_flags() -> None:
    # Defined only when run as a program: importing this module (tests) adds no global flags.
    config_flags.DEFINE_config_file("config", None, "e.g. experiments/configs/emergence.py:cpu_tiny.")
    flags.DEFINE_string("workdir", None, "Directory for data, runs, evaluations and the report.")
    flags.DEFINE_bool("dry_run", False, "Print the training FLOPs and the estimated time; train nothing.")
    flags.DEFINE_integer("workers", 0, "Processes that train sizes at the same time, each pinned to its share of the "
                         "cores (experiments/workers.py); 0: one per core on a CPU host (at most 8), 1 elsewhere.")
    flags.DEFINE_bool("study_worker", False, "Set on the processes --workers starts: train claimed sizes, no report.")
    flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    from experiments import workers
    if flags.FLAGS.study_worker:
        workers.become_worker()  # before JAX starts
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from research.data import DataError
    from research.training import TrainingDivergedError
    from experiments.cli import exit_dry_run_stopped, exit_stopped, stop_if_interrupted_early
    from research.training.preemption import Interrupted
    stop_if_interrupted_early()  # a Ctrl-C during the imports above; from here one raises, caught below

    try:  # all that follows: a SIGTERM outside it ended in a traceback, exit 1
        if flags.FLAGS.dry_run:
            print_estimate(flags.FLAGS.config)
            return
        if not flags.FLAGS.workdir:
            sys.exit("error: --workdir is required to run the study (or pass --dry_run to only print the estimate).")
        from research.atomic_files import unwritable_reason
        reason = unwritable_reason(flags.FLAGS.workdir)
        if reason:
            sys.exit(f"error: --workdir={flags.FLAGS.workdir}: {reason}; pass a folder the study can write to.")
        if flags.FLAGS.study_worker:
            run_study(flags.FLAGS.config, flags.FLAGS.workdir, worker=True)
            return
        count = workers.worker_count(flags.FLAGS.workers)
        if count > 1:
            train_in_workers(flags.FLAGS.config, flags.FLAGS.workdir, count, sys.argv[1:])
        run_study(flags.FLAGS.config, flags.FLAGS.workdir)  # after workers: only the report is left
    except (ConfigError, DataError, TrainingDivergedError) as error:
        sys.exit(f"error: {error}")
    except (Interrupted, workers.Stopped) as stop:  # checkpoints saved: the same command resumes
        exit_stopped(stop)
    except KeyboardInterrupt as interrupt:  # a second Ctrl-C, or one outside a size's training (evaluation is
        if flags.FLAGS.dry_run:  # cached per step); a SIGTERM before a Guard: TerminatedEarly, exit 143
            exit_dry_run_stopped(interrupt, "the estimate")
        exit_stopped(interrupt)


if __name__ == "__main__":
    from experiments.cli import parse_flags
    _define_flags()
    app.run(main, flags_parser=parse_flags)
