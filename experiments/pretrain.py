"""Pretrain a model: `python -m experiments.pretrain --config=experiments/configs/pretrain.py:gpt_tiny --workdir=DIR`.

A thin absl main around research.training.train_and_evaluate; see the config module's
docstring for presets and overrides. Rerunning with the same workdir resumes the run.

Exit status: 0 done; 1 a bad input (one line on stderr, nothing left behind); 130 / 143
stopped by Ctrl-C / SIGTERM after saving a checkpoint at the end of the current block of
steps (rerun the same command to continue).
"""
from __future__ import annotations

if __name__ == "__main__":  # before the imports below (JAX, the config file): a Ctrl-C there must not be lost
    from research.early_interrupts import remember_early_interrupts
    remember_early_interrupts()

import logging as std_logging  # noqa: E402
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.cli import parse_flags
from research.models.config import ConfigError


def _define_flags() -> None:
    # Defined only when run as a program (as experiments.evaluate does): importing this module
    # (tests, notebooks, another entry point in the same process) adds no global flags, whose
    # names (config, workdir) collide with the other entry points'.
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. experiments/configs/pretrain.py:gpt_tiny.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    if not flags.FLAGS["verbosity"].present:
        # orbax logs every save at INFO; keep only this library's INFO lines (-v 0 shows all).
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("research").setLevel(std_logging.INFO)
    from research.data import DataError
    from research.training import TrainingDivergedError, train_and_evaluate
    from research.training.metrics import weighted_z_loss
    from research.training.checkpointing import CheckpointError
    from research.training.preemption import Interrupted
    from research.training.workdir import removed_if_failed
    from experiments.cli import exit_stopped, stop_if_interrupted_early
    stop_if_interrupted_early()  # a Ctrl-C / SIGTERM during the imports above; from here one raises, caught below

    try:  # all that follows: a SIGTERM outside it (a Guard's is over) ended in a traceback, exit 1
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        # A run stopped by bad input before its first checkpoint leaves no workdir behind.
        with removed_if_failed(workdir, (ConfigError, DataError)):
            final = train_and_evaluate(config, workdir)
        # z_loss as it enters the total loss (weight x raw), like the console line; with K models
        # trained together each model's key is "<field>=<value>/z_loss".
        final = weighted_z_loss(final, config.train.z_loss)
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(final.items()) if isinstance(v, float)))
    except (Interrupted, KeyboardInterrupt) as stop:  # Ctrl-C / SIGTERM: one line, exit 130 / 143 so schedulers see it
        # Interrupted: the run saved its step; a KeyboardInterrupt (a second Ctrl-C, or one before the
        # run's Guard took over; SIGTERM: early_interrupts.TerminatedEarly): nothing new was saved.
        exit_stopped(stop, one_run=True)
    except (ConfigError, DataError, TrainingDivergedError, CheckpointError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
