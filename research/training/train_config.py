"""config.train: the train loop's own settings (research/training/loop.py reads them)."""
from __future__ import annotations

import dataclasses
import math

from research.models.config import ConfigError
from research.training import losses


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The loop's own settings (config.train)."""

    num_steps: int
    batch_size: int  # global rows per optimizer step, over all processes
    seq_len: int  # packed row length (encoder-decoder: the source length)
    microbatches: int = 1  # gradient accumulation: batch_size / microbatches rows per pass
    seed: int = 0
    z_loss: float = 0.0
    log_every_steps: int = 10
    eval_every_steps: int = 100  # checkpoint steps are evaluated too when checkpoint.keep_best > 0
    eval_batches: int = 4
    stop_after_steps: int = 0  # > 0: leave after this step (checkpointed); rerunning continues; 0: off
    peak_flops: float = 0.0  # FLOP/s of all devices for MFU; 0 = datasheet bf16 peak (measured on CPU)
    progress_bar: bool = True
    steps_per_call: int = 0  # train steps per compiled call (a lax.scan); 0: from the model's FLOPs per step
    # K models trained together: how many are vmapped at once, the rest following inside the
    # same program (model_batch.map_over_models); 0: all on accelerators, one at a time on CPU.
    models_per_call: int = 0
    # K models trained together: split the model axis over the devices, each model whole on one
    # device with its whole batch (no communication), instead of splitting every model's batch
    # over all of them. For many small models on several accelerators, or on a CPU with
    # XLA_FLAGS=--xla_force_host_platform_device_count=<cores> (XLA:CPU runs one device's work
    # on about one core). K must be a multiple of the device count; one process only.
    models_across_devices: bool = False

    def __post_init__(self):
        if self.steps_per_call < 0:
            raise ConfigError(f"train.steps_per_call={self.steps_per_call} must be >= 1, or 0 to choose it from "
                              "the model's FLOPs per step.")
        if self.models_per_call < 0:
            raise ConfigError(f"train.models_per_call={self.models_per_call} must be >= 1, or 0 for all models "
                              "at once on accelerators and one at a time on CPU.")
        for field in ("num_steps", "batch_size", "seq_len", "microbatches", "log_every_steps",
                      "eval_every_steps", "eval_batches"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"train.{field}={getattr(self, field)} must be positive.")
        # A negative stop trained nothing and reported the untrained model as the result.
        if self.stop_after_steps < 0:
            raise ConfigError(f"train.stop_after_steps={self.stop_after_steps} must be >= 0 (a step to leave after, "
                              "or 0 for off).")
        losses.check_z_loss(self.z_loss)
        if not (math.isfinite(self.peak_flops) and self.peak_flops >= 0):
            raise ConfigError(f"train.peak_flops={self.peak_flops} must be a FLOP/s figure >= 0 (0: the device's "
                              "datasheet peak); MFU divides by it.")
