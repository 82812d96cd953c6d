"""Run a scaling sweep through the training system, then fit it:

    python -m experiments.scaling_laws --config=experiments/configs/scaling_laws.py:cpu_tiny --workdir=DIR

Trains every run of the sweep through the training system (finished runs are skipped on
rerun, interrupted ones resume), records them in DIR/runs.csv, runs.jsonl and curves.csv,
then fits DIR/fit.json and plots. `--dry_run` prints the plan and its estimated time
without training. Presets and overrides: experiments/configs/scaling_laws.py.
"""
from __future__ import annotations

if __name__ == "__main__":  # before the imports below (JAX, the config file): a Ctrl-C there must not be lost
    from research.early_interrupts import remember_early_interrupts
    remember_early_interrupts()

import io
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.cli import parse_flags


def _define_flags() -> None:
    # Defined only when run as a program (as experiments.evaluate does): importing this module
    # (tests, notebooks, another entry point in the same process) adds no global flags, whose
    # names (config, workdir) collide with the other entry points'.
    config_flags.DEFINE_config_file("config", None, "Sweep config, e.g. experiments/configs/scaling_laws.py:cpu_tiny.")
    flags.DEFINE_string("workdir", None, "Directory for the runs, runs.csv / runs.jsonl, fit.json and plots.")
    flags.DEFINE_bool("dry_run", False, "Print the planned runs and the estimated time; train nothing.")
    flags.DEFINE_bool("compilation_cache", True, "Cache compiled programs in WORKDIR/xla_cache, so runs of one "
                      "model and resumed runs compile once.")
    flags.DEFINE_integer("workers", 0, "Processes that train runs at the same time, each pinned to its share of the "
                         "cores (experiments/workers.py); 0: one per core on a CPU host (at most 8), 1 on "
                         "accelerators and across hosts.")
    flags.DEFINE_bool("sweep_worker", False, "Set by the process that starts --workers on the ones it starts: claim "
                      "runs, leave the fit.")
    flags.DEFINE_bool("retry_failed", False, "Train runs that failed before again, once each (default: keep them "
                      "as failed, left out of the fit).")
    flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    f = flags.FLAGS
    if f.sweep_worker:
        from experiments.workers import become_worker
        become_worker()  # before JAX starts
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from experiments import workers
    from experiments.scaling_laws import sweep, sweep_workers
    from research.data import DataError
    from research.models.config import ConfigError
    from research.scaling import RunTableError
    from experiments.cli import exit_dry_run_stopped, exit_stopped, stop_if_interrupted_early
    from research.training.preemption import Interrupted
    stop_if_interrupted_early()  # a Ctrl-C during the imports above; from here one raises, caught below

    try:  # all that follows: a SIGTERM outside it ended in a traceback, exit 1
        config = f.config
        if f.workdir:  # before any work: a file in its path failed at the first write, in a traceback
            from research.atomic_files import unwritable_reason
            reason = unwritable_reason(f.workdir)
            if reason:
                sys.exit(f"error: --workdir={f.workdir} cannot be used: {reason}; choose another --workdir.")
        if f.dry_run:
            plan = sweep.plan_sweep(config)
            print(sweep.describe_plan(plan, config.estimate.peak_flops, config.estimate.mfu))
            return
        if not f.workdir:
            sys.exit("error: --workdir is required to run a sweep (or pass --dry_run to only print the plan).")
        if f.compilation_cache:
            import jax
            jax.config.update("jax_compilation_cache_dir", os.path.join(f.workdir, "xla_cache"))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        if f.sweep_worker:  # --retry_failed is the starting process's: it made the failed runs pending
            # before starting the workers (sweep_workers.make_failed_pending), so each is retried once
            sweep.run_sweep(config, f.workdir, worker=True)
            return
        count = workers.worker_count(f.workers)
        by_workers = None
        if count > 1:
            by_workers = sweep_workers.train_in_workers(config, f.workdir, workers=count, args=sys.argv[1:],
                                                        retry_failed=f.retry_failed)
        # Alone, or after the workers (every run has then ended: this trains nothing, and fits).
        outcome = sweep.run_sweep(config, f.workdir, retry_failed=f.retry_failed and count == 1,
                                  out=sys.stdout if by_workers is None else io.StringIO())  # lines printed
        if by_workers is not None:
            outcome.counts.update(by_workers)
            if outcome.fit_note:
                print(outcome.fit_note)
        counts = outcome.counts
        print(f"trained {counts['trained']}, skipped {counts['skipped']} finished, {counts['failed']} failed, "
              f"{counts['pending']} pending; tables in {f.workdir}/runs.csv")
    except (ConfigError, DataError, RunTableError) as error:
        sys.exit(f"error: {error}")
    except (Interrupted, workers.Stopped) as stop:  # the run saved and stays pending: the same command resumes it
        exit_stopped(stop)
    except KeyboardInterrupt as interrupt:  # a second Ctrl-C, or one outside a run's training loop
        if f.dry_run:  # SIGTERM before a Guard: TerminatedEarly, exit 143
            exit_dry_run_stopped(interrupt, "the plan")
        exit_stopped(interrupt)


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
