"""Orbax checkpoints of a whole run: train state, data-iterator position, and config.

Each checkpoint step holds three items:
  state   the TrainState (params, optimizer state, step, rng), sharded arrays
  data    the grain iterator's state (one JSON file per process)
  config  the run's config as JSON, so a checkpoint says how it was made

Saves are asynchronous: the state is copied to host memory, then written in the
background while training continues. Orbax writes into a temporary directory and
renames it only once every item is complete, so a process killed mid-save leaves the
previous checkpoint as the latest restorable one. Kept: the last `keep_last` steps and
the `keep_best` steps with the lowest eval loss (saved with each step, so a resumed run
ranks the steps an earlier process saved as well).

A committed step can still be damaged afterwards (a disk filled up, files truncated by a
copy, an item deleted by hand). Restoring without a step (`restore`) then falls back to the
newest step that restores completely, logs which steps it skipped and why, and moves each
damaged step aside into `<checkpoints>.damaged/<step>` so the run can save that step again.
A step whose saved eval loss alone is unreadable keeps its state; only that record is moved aside.
A step whose state does not fit the one the config builds (another optimizer, clipping turned
on or off) is not damaged: `restore` refuses in one line and moves nothing; nor is a step saved
by another number of processes, whose data positions are per process (pretraining's rows depend
on the count): one line, unless the run's data is the same on every process (fine-tuning builds
every global batch on every process), which then resumes from process 0's position on any count.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from research.models.config import ConfigError

BEST_METRIC = "eval_loss"  # lower is better
METRICS_ITEM = "metrics"  # orbax's item (and file) name for the metrics a step was saved with
ITEMS = ("state", "data", "config")
# Orbax splits every replicated array among its replicas to write in parallel, compiling a
# slicing program per array shape: for small models that is dozens of compilations per new
# shape (40 of the 45 compilations of two tiny models trained together, 1.2 s each under
# load) to save kilobytes. Arrays whose per-replica slice is under this size are written
# whole by one replica; large arrays keep replica-parallel writes.
_MIN_REPLICA_PARALLEL_BYTES = 1 << 20

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory that has some could be restored; the message says why, in one line."""


def _one_line(error: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, short enough to sit inside a log line."""
    text = " ".join(str(error).split()) or repr(error)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}"


def _misfit(error: BaseException) -> str | None:
    """Where the saved state does not fit the state this config builds (orbax's tree-structure or
    shape mismatch: the config changed, the files are intact), else None."""
    text = str(error)
    if "tree structures do not match:" in text:  # then lines "path:", "- Source: now", "- Target: saved"
        diff = text.split("tree structures do not match:", 1)[1].split("If this mismatch", 1)[0]
        paths = [line.strip()[:-1] for line in diff.splitlines()
                 if line.strip().endswith(":") and not line.strip().startswith("-")]
        return f"its state's tree differs at {', '.join(paths[:3]) or 'the top'}{' and more' if len(paths) > 3 else ''}"
    if "is not compatible with the stored shape" in text:  # "Requested shape: (4,) is not compatible with ..."
        return " ".join(text.split(". ", 1)[0].split())
    return None


@contextlib.contextmanager
def quiet_restore() -> Iterator[None]:
    """Around an orbax restore whose failure the caller reports in one line: what else a failed
    read prints is silenced (a damaged step printed 23-33 tracebacks, 1,000-1,600 lines): absl's
    per-file warnings; "Event loop is closed" tracebacks that tensorstore's threads print straight
    to stderr as reads end after orbax's loop has closed (stderr's descriptor goes to a file
    during the restore and a short grace period after a failure, replayed if it succeeded:
    nothing else runs while a checkpoint loads); and the abandoned reads' own complaints when
    they are collected (the failure's traceback, which holds them, is dropped; later ones are
    _AbandonedCheckpointReads' and _unraisable_hook's)."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    saved, captured = os.dup(2), tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    failed = False
    try:
        yield
    except Exception as error:
        failed = True
        error.__traceback__ = error.__cause__ = error.__context__ = None
        for _ in range(5):
            gc.collect()
            time.sleep(0.1)
        raise error
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if not failed:
            captured.seek(0)
            os.write(2, captured.read())
        captured.close()
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _AbandonedCheckpointReads(logging.Filter):
    """Drops asyncio's "... exception was never retrieved" records for the array reads a failed
    orbax restore left behind: they are logged whenever the tasks are collected, which can be
    long after quiet_restore has reported the failure in its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("exception was never retrieved" in text
                    and any(mark in text for mark in ("orbax", "array index", "TensorStore", "OCDBT")))


logging.getLogger("asyncio").addFilter(_AbandonedCheckpointReads())


def _is_abandoned_checkpoint_read(unraisable: Any) -> bool:
    """An orbax read coroutine of a failed restore, raising as it is collected (printed as
    "Exception ignored in: <coroutine object _read_array_index_and_device_put ...>")."""
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"orbax{os.sep}checkpoint" in code.co_filename


def _unraisable_hook(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(unraisable: Any) -> None:
        if not _is_abandoned_checkpoint_read(unraisable):
            previous(unraisable)
    return hook


sys.unraisablehook = _unraisable_hook(sys.unraisablehook)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _register_array_handler() -> None:
    with _quiet_absl():  # orbax warns that it overrides its own handler: not news for a user
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=_MIN_REPLICA_PARALLEL_BYTES),
            override=True)


_register_array_handler()


def _data_process_count(step_dir: str) -> int | None:
    """How many processes saved the data positions of a step (grain writes process_<i>-of-<n>.json
    per process), or None where that cannot be read."""
    try:
        names = os.listdir(os.path.join(step_dir, "data"))
    except OSError:
        return None
    counts = {int(m.group(1)) for m in map(re.compile(r"process_\d+-of-(\d+)\.json$").match, names) if m}
    return counts.pop() if len(counts) == 1 else None


def missing_items(step_dir: str) -> list[str]:
    """Items of a step directory that are absent (cheap check before a full restore)."""
    return [item for item in ITEMS if not os.path.isdir(os.path.join(step_dir, item))]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When to save and what to keep (config.checkpoint)."""

    every_steps: int = 100  # also saved at the last step
    keep_last: int = 2
    keep_best: int = 1  # by eval loss; 0 keeps none for being best
    async_save: bool = True
    # Also kept: every step that is a multiple of this (0: none). A study evaluating checkpoints
    # along training keeps its grid whatever a stop adds (a stop saves off the grid, and with
    # keep_last alone those saves pushed grid steps out).
    keep_every_steps: int = 0

    def __post_init__(self):
        if self.every_steps <= 0:
            raise ConfigError(f"checkpoint.every_steps={self.every_steps} must be positive.")
        if self.keep_last < 1 or self.keep_best < 0 or self.keep_every_steps < 0:
            raise ConfigError(f"checkpoint.keep_last={self.keep_last} must be >= 1, "
                              f"checkpoint.keep_best={self.keep_best} >= 0 and "
                              f"checkpoint.keep_every_steps={self.keep_every_steps} >= 0.")
        if self.keep_every_steps % self.every_steps:  # only saved steps can be kept: its grid was lost unsaid
            raise ConfigError(f"checkpoint.keep_every_steps={self.keep_every_steps} is not a multiple of "
                              f"checkpoint.every_steps={self.every_steps}: only multiples of every_steps are saved, "
                              "so most steps it names would never be kept; make it a multiple (or 0).")


def _best_metric(metrics: Mapping[str, float]) -> float:
    return metrics[BEST_METRIC]


def _set_aside_unreadable_metrics(directory: str) -> None:
    """Orbax reads every step's metrics item (the eval loss keep-best ranks by) when it opens
    the directory, and one that no longer parses (a truncated file) stops it from opening at
    all. That item is only a ranking: move it aside to <checkpoints>.damaged/<step>.metrics,
    so the step ranks as one without an eval loss; its state is checked when it is restored."""
    if jax.process_index() == 0 and os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            item = os.path.join(directory, name, METRICS_ITEM)
            if not name.isdigit() or not os.path.isfile(os.path.join(item, METRICS_ITEM)):
                continue
            try:
                with open(os.path.join(item, METRICS_ITEM)) as f:
                    json.load(f)
            except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                aside = os.path.join(directory.rstrip("/") + ".damaged", f"{name}.{METRICS_ITEM}")
                log.warning("checkpoint step %s in %s: its eval loss (keep-best's ranking) is unreadable (%s); moved "
                            "it to %s", name, directory, _one_line(error), aside)
                shutil.rmtree(aside, ignore_errors=True)
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                shutil.move(item, aside)
    if jax.process_count() > 1:  # every process opens the directory as process 0 left it
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("checkpoint_metrics_set_aside")


@dataclasses.dataclass
class _HoldingPolicy:
    """The configured preservation policies, and also every step at or after `floor` (None: no
    floor). Models trained together resume from a step all of them saved: with keep_last 1 each
    model's save of step S deleted its step S - every_steps once S was written, so a kill between
    the models' saves of S left no step in common and the whole group restarted from step 0. A
    model now keeps the group's last common step until every model has committed a newer one.
    Steps kept for the floor alone are noted in `held` (Checkpointer.release_held deletes them)."""

    configured: Any
    floor: int | None = None
    held: set[int] = dataclasses.field(default_factory=set)

    def should_preserve(self, checkpoints: Any, *, context: Any) -> list[bool]:
        keep = list(self.configured.should_preserve(checkpoints, context=context))
        for i, info in enumerate(checkpoints):
            if not keep[i] and self.floor is not None and info.step >= self.floor:
                keep[i] = True
                self.held.add(info.step)
        return keep


class Checkpointer:
    """Saves and restores a run in `directory` (usually <workdir>/checkpoints)."""

    def __init__(self, directory: str, config: CheckpointConfig, *, data_same_on_every_process: bool = False):
        # True: every process iterates the same data (module docstring), so a run may resume on
        # another number of processes from process 0's saved position.
        self._data_same_on_every_process = data_same_on_every_process
        keep = [policies.LatestN(n=config.keep_last)]
        if config.keep_every_steps:
            keep.append(policies.EveryNSteps(interval_steps=config.keep_every_steps))
        best = {}
        if config.keep_best:
            # A step saved without an eval loss (by older code of this file) is kept only while it
            # is among the latest: orbax's default keeps such a step for ever.
            keep.append(policies.BestN(get_metric_fn=_best_metric, reverse=True, n=config.keep_best,
                                       keep_checkpoints_without_metrics=False))
            # best_fn makes orbax write each step's metrics to disk, so a resumed run ranks the
            # steps an earlier process saved; without it they are reloaded without metrics and
            # every one of them is kept (keep_last / keep_best ignored across sessions).
            best = dict(best_fn=_best_metric, best_mode="min")
        self._policy = _HoldingPolicy(policies.AnyPreservationPolicy(keep))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=self._policy, **best,
            enable_async_checkpointing=config.async_save,
            create=True,
            # Orbax names its cross-process barriers by step alone: the managers of models trained
            # together save the same step at once, and on several processes their barriers collided
            # ("Barrier _async_write_complete.2 is already ongoing") and the run hung. A prefix from
            # the directory is the same on every process and differs between the models.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix="ck" + hashlib.sha1(str(directory).encode()).hexdigest()[:12]),
        )
        if config.keep_best:
            _set_aside_unreadable_metrics(directory)
        with _quiet_absl():  # a damaged step's metadata is reported by `restore`, in one line
            self._manager = ocp.CheckpointManager(directory, options=options, item_names=ITEMS)

    @property
    def directory(self) -> str:
        return str(self._manager.directory)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any, config: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Start saving; returns once the state is safe to donate to the next step."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(dict(config)),
        ), metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()})

    def restore(self, target_state: Any, data_iterator: Any, step: int | None = None) -> tuple[Any, Any]:
        """(state, iterator) at `step`, or by default at the newest step that restores intact
        (damaged newer steps are logged and moved aside). target_state holds
        ShapeDtypeStructs with the shardings wanted now, so a run can resume on a different mesh."""
        if step is not None:
            self._check_process_count(step)
            return self._restore_step(step, target_state, data_iterator)
        with _quiet_absl():
            steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        skipped: list[tuple[int, str]] = []
        for candidate in steps:
            self._check_process_count(candidate)
            reason = self._damage(candidate)
            if reason is None:
                try:
                    with quiet_restore():  # orbax logs each unreadable file; the reason is reported below
                        restored = self._restore_step(candidate, target_state, data_iterator)
                        self.restore_config(candidate)  # resuming reads it too (schedule check)
                except Exception as error:  # any failure to read a step means it is not usable
                    misfit = _misfit(error)
                    if misfit is not None:  # not damage: every step would fail alike, and none may be moved aside
                        raise CheckpointError(
                            f"checkpoint step {candidate} in {self.directory} does not fit this config ({misfit}): "
                            "the config changed in a way its checkpoints cannot follow (e.g. opt.clip_norm between 0 "
                            "and > 0, opt.name, a model dimension); rerun with the config they were saved with, or "
                            "use a new workdir; the checkpoints are intact and were left as they are.") from None
                    reason = _one_line(error)
                else:
                    self._set_aside(skipped, restored_step=candidate)
                    return restored
            skipped.append((candidate, reason))
        raise CheckpointError(
            f"no checkpoint in {self.directory} could be restored ("
            + "; ".join(f"step {s}: {r}" for s, r in skipped)
            + "); if the run's config changed, use a new workdir, else delete the damaged steps.")

    def _check_process_count(self, step: int) -> None:
        """One line when `step` was saved by another number of processes and each process's data
        position is its own (module docstring); not damage: nothing is moved aside."""
        saved_by = _data_process_count(os.path.join(self.directory, str(step)))
        if saved_by not in (None, jax.process_count()) and not self._data_same_on_every_process:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} was saved by {saved_by} process(es), each "
                f"with its own data position, and this run has {jax.process_count()}: which rows each process "
                f"reads depends on the count, so resume it on {saved_by} process(es), or train in a new workdir; "
                "the checkpoints are intact and were left as they are.")

    def _restore_step(self, step: int, target_state: Any, data_iterator: Any) -> tuple[Any, Any]:
        saved_by = _data_process_count(os.path.join(self.directory, str(step)))
        if saved_by not in (None, jax.process_count()) and self._data_same_on_every_process:
            # grain's handler reads process_<i>-of-<this count>.json, which this step lacks.
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target_state)))
            path = os.path.join(self.directory, str(step), "data", f"process_0-of-{saved_by}.json")
            with open(path, encoding="utf-8") as f:
                text = f.read()
            data_iterator.set_state(json.loads(text) if isinstance(data_iterator, grain.DatasetIterator)
                                    else text.encode())
            return restored["state"], data_iterator
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        ))
        return restored["state"], restored["data"]

    def _damage(self, step: int) -> str | None:
        """Why `step` is certainly unusable without reading it (a missing item), else None."""
        missing = missing_items(os.path.join(self.directory, str(step)))
        return f"missing item(s) {', '.join(missing)}" if missing else None

    def _set_aside(self, skipped: list[tuple[int, str]], restored_step: int) -> None:
        """Log the damaged steps newer than `restored_step` and move them out of the manager's
        directory, so saving those steps again does not collide with them."""
        if not skipped:
            return
        aside = self.directory.rstrip("/") + ".damaged"
        for step, reason in skipped:
            log.warning("checkpoint step %d in %s is damaged (%s); skipped it and resumed from step %d; "
                        "it is kept in %s", step, self.directory, reason, restored_step, aside)
            if jax.process_index() == 0:
                target = os.path.join(aside, str(step))
                shutil.rmtree(target, ignore_errors=True)  # an older copy of the same step
                os.makedirs(aside, exist_ok=True)
                shutil.move(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:  # every process sees the moved steps before reloading
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("checkpoint_set_aside")
        self._manager.reload()

    def restore_config(self, step: int | None = None) -> dict[str, Any]:
        step = self._manager.latest_step() if step is None else step
        return dict(self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

    def delete_after(self, step: int) -> None:
        """Remove checkpoints past `step`: models trained together resume from the last step
        they all saved, and will save the later steps again."""
        for later in [s for s in self._manager.all_steps() if s > step]:
            self._manager.delete(later)

    def hold_from(self, step: int | None) -> None:
        """Keep `step` and every later step whatever keep_last says (None: keep as configured),
        until release_held moves the floor past them (_HoldingPolicy says why)."""
        self._policy.floor = step

    def release_held(self, floor: int) -> None:
        """Delete the steps before `floor` that were kept only for the previous floor, and hold
        from `floor` on. Call once every model of the group has committed `floor`."""
        for step in sorted(s for s in self._policy.held if s < floor):
            if step in self._manager.all_steps():  # orbax's next save may have dropped it already
                self._manager.delete(step)
            self._policy.held.discard(step)
        self._policy.floor = floor

    def wait(self) -> None:
        """Block until any background save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
