"""Fine-tune a model: `python -m experiments.finetune --config=experiments/configs/finetune.py:sft_tiny --workdir=DIR`.

A thin absl main around research.finetune.finetune_and_evaluate; see the config module's
docstring for the presets (one per path) and overrides. Rerunning the same command resumes;
a workdir holding another run (another base, data, path or LoRA setting) is refused in one line.
"""
from __future__ import annotations

if __name__ == "__main__":  # before the imports below (JAX, the config file): a Ctrl-C there must not be lost
    from research.early_interrupts import remember_early_interrupts
    remember_early_interrupts()

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.cli import parse_flags
from research.models.config import ConfigError


def _define_flags() -> None:
    # Defined only when run as a program: importing this module (tests, notebooks, another entry
    # point in the same process) adds no global flags that could collide.
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. experiments/configs/finetune.py:sft_tiny.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard events.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("research").setLevel(std_logging.INFO)
    from research.data import DataError
    from research.finetune import finetune_and_evaluate
    from research.training import TrainingDivergedError
    from research.training.checkpointing import CheckpointError
    from research.training.metrics import weighted_z_loss
    from research.training.preemption import Interrupted
    from experiments.cli import exit_stopped, stop_if_interrupted_early
    # A Ctrl-C during the imports above; from here one raises, caught below (the training steps run
    # under a Guard: a Ctrl-C / SIGTERM there saves the step and stops, research/finetune/trainer.py).
    stop_if_interrupted_early(guarded=False)

    try:  # all that follows: a SIGTERM outside it ended in a traceback, exit 1
        config = flags.FLAGS.config
        final = finetune_and_evaluate(config, flags.FLAGS.workdir)
        # z_loss as it enters the total loss (weight x raw), as experiments.pretrain prints it.
        final = weighted_z_loss(final, config.train.z_loss)
        print(" ".join(f"{k}={v:.4g}" for k, v in sorted(final.items()) if isinstance(v, float)))
    except (ConfigError, DataError, TrainingDivergedError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    except Interrupted as stop:  # during the steps: that step saved, exit 130 / 143, the rerun continues
        exit_stopped(stop)
    except KeyboardInterrupt as interrupt:  # outside the steps (loading, evaluation, a second Ctrl-C): a rerun
        exit_stopped(interrupt, one_run=True)  # continues from the last checkpoint


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
