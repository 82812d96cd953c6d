"""Orbax checkpoints of a whole run: train state, data-iterator position, and config.

Each checkpoint step holds three items:
  state   the TrainState (params, optimizer state, step, rng), sharded arrays
  data    the grain iterator's state (one JSON file per process)
  config  the run's config as JSON, so a checkpoint says how it was made

Saves are asynchronous: the state is copied to host memory, then written in the
background while training continues. Orbax writes into a temporary directory and
renames it only once every item is complete, so a process killed mid-save leaves the
previous checkpoint as the latest restorable one. Kept: the last `keep_last` steps and
the `keep_best` steps with the lowest eval loss.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from research.models.config import ConfigError

BEST_METRIC = "eval_loss"  # lower is better


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When to save and what to keep (config.checkpoint)."""

    every_steps: int = 100  # also saved at the last step
    keep_last: int = 2
    keep_best: int = 1  # by eval loss; 0 keeps none for being best
    async_save: bool = True

    def __post_init__(self):
        if self.every_steps <= 0:
            raise ConfigError(f"checkpoint.every_steps={self.every_steps} must be positive.")
        if self.keep_last < 1 or self.keep_best < 0:
            raise ConfigError(f"checkpoint.keep_last={self.keep_last} must be >= 1 and "
                              f"checkpoint.keep_best={self.keep_best} >= 0.")


class Checkpointer:
    """Saves and restores a run in `directory` (usually <workdir>/checkpoints)."""

    def __init__(self, directory: str, config: CheckpointConfig):
        keep = [policies.LatestN(n=config.keep_last)]
        if config.keep_best:
            keep.append(policies.BestN(get_metric_fn=lambda metrics: metrics[BEST_METRIC], reverse=True,
                                       n=config.keep_best))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=config.async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(directory, options=options,
                                              item_names=("state", "data", "config"))

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
        """(state, iterator) at `step` (default latest). target_state holds ShapeDtypeStructs
        with the shardings wanted now, so a run can resume on a different mesh."""
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        ))
        return restored["state"], restored["data"]

    def restore_config(self, step: int | None = None) -> dict[str, Any]:
        step = self._manager.latest_step() if step is None else step
        return dict(self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])

    def delete_after(self, step: int) -> None:
        """Remove checkpoints past `step`: models trained together resume from the last step
        they all saved, and will save the later steps again."""
        for later in [s for s in self._manager.all_steps() if s > step]:
            self._manager.delete(later)

    def wait(self) -> None:
        """Block until any background save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
