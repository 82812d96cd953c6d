"""A sweep's runs trained by several worker processes at once (experiments/workers.py).

This process plans the sweep, trains the shared tokenizer and measures the peak FLOP/s
once, then starts the workers: the same command with `--sweep_worker`, each pinned to its
share of the cores. Each worker takes the largest unclaimed run, trains it and writes its
result; this process prints each run's line as its result appears. The fit is left to the
caller, once every worker has exited (experiments/scaling_laws/__main__.py). With --retry_failed
this process makes the failed runs pending before the workers start (make_failed_pending) and the
workers retry nothing, so a run that fails again is retried once, not once per worker.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence, TextIO

import ml_collections
import tqdm

from experiments import workers as workers_lib
from experiments.scaling_laws import sweep
from experiments.scaling_laws.run_dirs import RESULT_FILE, read_result
from research.scaling.sweep_plan import PlannedRun, SweepError

MODULE = "experiments.scaling_laws"


def workers_log_dir(workdir: str, shard_index: int, shard_count: int) -> str:
    """Where a job's workers write their logs: <workdir>/workers, or per shard (shards of one
    sweep share its workdir; side by side, each shard's worker-0.log overwrote the others')."""
    return os.path.join(workdir, "workers", *([f"shard{shard_index}"] if shard_count > 1 else []))


def train_in_workers(config: ml_collections.ConfigDict, workdir: str, *, workers: int, args: Sequence[str],
                     retry_failed: bool = False, out: TextIO = sys.stdout) -> dict[str, int]:
    """Train every pending run of `config` (given on the command line as `args`) in `workers`
    processes; returns what this call did: {"trained", "skipped" (finished before), "failed"}.
    Raises SweepError naming the worker and its last log line if one fails, workers.Stopped on
    Ctrl-C / SIGTERM once the workers have saved their runs and exited."""
    plan, _, peak_flops = sweep.prepare_sweep(config, workdir)
    runs_dir = os.path.join(workdir, "runs")
    mine = plan.runs[config.shard.index::config.shard.count]
    log_dir = workers_log_dir(workdir, config.shard.index, config.shard.count)
    print(f"sweep: {len(plan.runs)} runs over {len(plan.models)} models ({plan.spec.plan}); this job runs "
          f"{len(mine)} in {workers} worker processes (their logs: {log_dir}); "
          f"{sum(r.compute_exact for r in plan.runs):.3g} training FLOPs in all", file=out)
    progress = tqdm.tqdm(total=sum(r.compute_exact for r in mine), unit="FLOP", unit_scale=True, desc="sweep",
                         file=out, dynamic_ncols=True, mininterval=1.0)
    labels = {run.run_id: f"[{i}/{len(mine)}] {run.run_id}" for i, run in enumerate(mine, start=1)}
    reported: set[str] = set()
    counts = {"trained": 0, "skipped": 0, "failed": 0}
    if retry_failed:
        # The runs to retry are fixed here, before any worker starts, and the workers retry
        # nothing: each worker retrying what it found failed retried a run once per worker (one
        # retried it, failed, wrote a new failed result and let go of it; the next read that as
        # "failed before" and trained it again). Made pending, each is trained by the one worker
        # that claims it, and a new failure is final for this command.
        make_failed_pending(mine, runs_dir)

    def report_finished(before: bool = False) -> None:
        for run in mine:
            if run.run_id in reported:
                continue
            record = sweep.read_result(os.path.join(runs_dir, run.run_id))
            if record is None:
                continue  # not ended yet
            reported.add(run.run_id)
            progress.update(run.compute_exact)
            label = labels[run.run_id]
            if before:
                counts["skipped"] += 1
                progress.write(f"{label}: finished before ({record['status']}), skipped", file=out)
            else:
                counts["failed" if record["status"] == "failed" else "trained"] += 1
                progress.write(sweep.run_line(label, record), file=out)

    report_finished(before=True)
    argvs = [workers_lib.worker_argv(MODULE, args, "--sweep_worker", f"--config.train.peak_flops={peak!r}")
             for peak in workers_lib.peak_shares(peak_flops, workers)]
    try:
        # Ctrl-C / SIGTERM: the workers save and stop, their runs stay pending (workers.Stopped)
        codes = workers_lib.run_workers(argvs, log_dir=log_dir, poll=report_finished, forward_signals=True)
    finally:
        progress.close()
    failure = workers_lib.failure_line(codes, log_dir)
    if failure:
        raise SweepError(f"{failure}; finished runs are kept, rerun the same command to go on.")
    return counts


def make_failed_pending(runs: Sequence[PlannedRun], runs_dir: str) -> None:
    """Remove the result of each of `runs` that failed, so it counts as pending (as the one-process
    sweep does right before it retries one: sweep._run_group). Its checkpoints are kept: the retry
    resumes from them, as a rerun of an interrupted run does."""
    for run in runs:
        run_dir = os.path.join(runs_dir, run.run_id)
        record = read_result(run_dir)
        if record is not None and record["status"] == "failed":
            os.remove(os.path.join(run_dir, RESULT_FILE))
