"""How a sweep trains its runs: one run alone, or runs that differ only in their seed as one
program (research.training.train_together), each becoming a record for workdir/runs.csv.

experiments/scaling_laws/sweep.py decides which runs are pending and records what these
return; a run that raises is a failed record here, except for a mistake in the config itself
(ConfigError, DataError) or Ctrl-C / SIGTERM (preemption.Interrupted), which stop the sweep.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from typing import Callable, Sequence

import ml_collections

from experiments.scaling_laws.run_dirs import latest_checkpoint
from research.data.config import DataError
from research.models.config import ConfigError
from research.scaling import sweep_records
from research.scaling.sweep_plan import PlannedRun
from research.training.checkpoint_loading import checkpoint_steps_in
from research.training.preemption import Interrupted

log = logging.getLogger(__name__)

TrainFn = Callable[[ml_collections.ConfigDict, str], dict]


def train_one(run: PlannedRun, config: ml_collections.ConfigDict, run_dir: str, train_fn: TrainFn) -> dict:
    """Train (or resume) one run and return its record; failures become failed records."""
    resumed_from = latest_checkpoint(run_dir)
    start = time.perf_counter()
    error = None
    try:
        train_fn(config, run_dir)
    except (ConfigError, DataError):
        raise  # the sweep's config is wrong: every run would fail the same way
    except Interrupted:
        raise  # Ctrl-C / SIGTERM: the sweep stops, the run stays pending and resumes on rerun
    except Exception as exception:  # noqa: BLE001 -- any failure of one run is recorded, the sweep goes on
        error = _error_line(exception)
    return sweep_records.finished_record(run, _run_metrics(run_dir), seconds=time.perf_counter() - start,
                                         resumed_from_step=resumed_from, error=error)


def _error_line(exception: BaseException) -> str:
    """A failed run's record: the exception's type and the first line of its message."""
    text = str(exception).strip()
    return f"{type(exception).__name__}: {text.splitlines()[0] if text else ''}"


def _run_metrics(run_dir: str) -> list[dict]:
    from research.training.metrics import METRICS_FILE, read_metrics
    return read_metrics(run_dir) if os.path.exists(os.path.join(run_dir, METRICS_FILE)) else []


def train_alone(config: ml_collections.ConfigDict, run_dir: str) -> dict:
    """The training system's one-run entry point (the default TrainFn). Without
    train.models_across_devices, which lays out the seed groups trained together (train_group)
    and is nothing to one model: the run trains as with it, and the training system warned about
    it for every run of the sweep trained alone (18 of cpu_tiny's 30), advising batched.field
    and batched.values, which are no sweep setting (that warning is for a single-run config)."""
    from research.training import train_and_evaluate
    if config.train.get("models_across_devices", False):
        config = copy.deepcopy(config)
        config.train.models_across_devices = False
    return train_and_evaluate(config, run_dir)


def same_program_groups(runs: Sequence[PlannedRun]) -> list[list[PlannedRun]]:
    """Runs that differ only in their seed (sweep.repeat_seeds) share one compiled program
    (research.training.train_together); every other run trains alone. Order is kept."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault((run.model.name, run.num_steps), []).append(run)
    return list(groups.values())


def can_resume_together(pending: list[tuple]) -> bool:
    """Whether the group's runs may resume as one program (research.training.members'
    check_common_start): a run far behind the others refuses that, not the runs. With
    train.models_across_devices, a number of runs the devices cannot share evenly (a group's
    last pending runs) trains one by one: it stopped the whole sweep with a ConfigError."""
    import jax

    from research.training.checkpointing import CheckpointError
    from research.training.members import check_common_start

    if pending[0][1].train.get("models_across_devices", False) and len(pending) % jax.device_count():
        log.warning("train.models_across_devices: %d runs of one program cannot be split evenly over %d devices; "
                    "they train one by one", len(pending), jax.device_count())
        return False
    try:
        check_common_start([run_dir for _, _, run_dir, _ in pending], int(pending[0][1].checkpoint.every_steps))
    except CheckpointError:
        return False
    return True


def common_resume_step(run_dirs: Sequence[str]) -> int:
    """The step runs trained as one program resume from: the newest step every one of them saved
    (members.restore_or_init), 0 when none is common (each run's own newest was recorded: 12 for
    a run resumed at 8)."""
    saved = [set(checkpoint_steps_in(os.path.join(run_dir, "checkpoints"))) for run_dir in run_dirs]
    return max(set.intersection(*saved), default=0)


def train_group(pending: list[tuple]) -> list[dict]:
    """Train same-shape runs as one program (resuming from their common checkpoint); each
    gets its own record, as if trained alone (losses equal to float32 rounding)."""
    from research.training.loop import train_together

    resumed = [common_resume_step([run_dir for _, _, run_dir, _ in pending])] * len(pending)
    start = time.perf_counter()
    try:
        outcomes = train_together([one for _, one, _, _ in pending], [run_dir for _, _, run_dir, _ in pending])
    except (ConfigError, DataError, Interrupted):
        raise  # as in train_one: not a failure of these runs
    except Exception as exception:  # noqa: BLE001 -- the whole group failed; the sweep goes on
        outcomes = [exception] * len(pending)
    seconds = (time.perf_counter() - start) / len(pending)  # the group's wall time, shared out evenly
    records = []
    for (run, _, run_dir, _), outcome, resumed_from in zip(pending, outcomes, resumed):
        error = _error_line(outcome) if isinstance(outcome, Exception) else None
        records.append(sweep_records.finished_record(run, _run_metrics(run_dir), seconds=seconds,
                                                     resumed_from_step=resumed_from, error=error))
    return records
