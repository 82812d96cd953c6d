"""Optimizers (AdamW, Adafactor, Lion), learning-rate schedules, and the weight-decay mask.

Schedules are functions of the optimizer step (0-based, counted in updates, not
microbatches) returning the learning rate. Weight decay never touches norm scales or
biases: decaying them only pulls activations toward zero without regularising anything.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import optax

from research.models.config import ConfigError

OptimizerName = Literal["adamw", "adafactor", "lion"]
ScheduleName = Literal["cosine", "wsd", "constant"]
Schedule = Callable[[jax.Array | int], jax.Array]

# Leaf names that are never decayed, whatever their rank (attention biases are [H, Dh]).
NO_DECAY_NAMES = frozenset({"bias", "scale"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """Optimizer and schedule hyper-parameters (config.opt)."""

    name: OptimizerName = "adamw"
    learning_rate: float = 3e-4  # peak
    schedule: ScheduleName = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1000  # horizon of the decay; normally the run's number of steps
    decay_fraction: float = 0.2  # wsd: the last fraction of total_steps decays linearly
    min_lr_ratio: float = 0.1  # final learning rate = min_lr_ratio * learning_rate
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; AdamW / Lion scale it by the learning rate
    clip_norm: float = 1.0  # global gradient-norm clip; 0 disables

    def __post_init__(self):
        for field, choice in (("name", OptimizerName), ("schedule", ScheduleName)):
            if getattr(self, field) not in choice.__args__:
                raise ConfigError(f"opt.{field}={getattr(self, field)!r} is not one of {choice.__args__}.")
        if self.learning_rate <= 0:
            raise ConfigError(f"opt.learning_rate={self.learning_rate} must be positive.")
        if self.total_steps <= 0 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ConfigError(f"opt.warmup_steps={self.warmup_steps} must lie in [0, total_steps={self.total_steps}].")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"opt.decay_fraction={self.decay_fraction} must be in (0, 1].")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"opt.min_lr_ratio={self.min_lr_ratio} must be in [0, 1].")
        if self.weight_decay < 0 or self.clip_norm < 0:
            raise ConfigError("opt.weight_decay and opt.clip_norm must be >= 0 (0 disables).")


def make_schedule(config: OptimizerConfig) -> Schedule:
    """Linear warmup to the peak, then cosine decay ("cosine"), a plateau and a final linear
    decay ("wsd", warmup-stable-decay, Hu et al. 2024), or a plateau ("constant").

    Warmup reaches the peak at step warmup_steps - 1 so that step 0 already updates.
    """
    peak, final = config.learning_rate, config.learning_rate * config.min_lr_ratio
    warmup, total = config.warmup_steps, config.total_steps
    decay_start = total - max(1, round(config.decay_fraction * total))

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup else jnp.float32(1.0)
        if config.schedule == "constant":
            return peak * ramp
        if config.schedule == "cosine":
            progress = jnp.clip((step - warmup) / max(1, total - warmup), 0.0, 1.0)
            decayed = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        else:
            progress = jnp.clip((step - decay_start) / max(1, total - decay_start), 0.0, 1.0)
            decayed = peak + (final - peak) * progress
        return jnp.where(step < warmup, peak * ramp, decayed)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """True for leaves that take weight decay: matrices other than biases and norm scales."""
    def decays(path, leaf) -> bool:
        name = getattr(path[-1], "key", str(path[-1]))
        return name not in NO_DECAY_NAMES and jnp.ndim(leaf) >= 2
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig) -> tuple[optax.GradientTransformation, Schedule]:
    """The gradient transformation (clip, then the optimizer) and its schedule."""
    schedule = make_schedule(config)
    if config.name == "adamw":
        core = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=weight_decay_mask)
    elif config.name == "lion":
        core = optax.lion(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                          mask=weight_decay_mask)
    else:
        # Adafactor factors second moments of large matrices (memory ~ rows + cols) and clips
        # updates by their RMS itself. optax.adafactor would add its weight_decay_rate after the
        # learning-rate scaling (p <- p (1 - wd) per step: 0.9 with the AdamW-style default 0.1),
        # so the decay is added here before the schedule instead, decoupled as in AdamW:
        # p <- p - lr(t) * (update + wd * p).
        core = optax.chain(
            optax.adafactor(learning_rate=None, weight_decay_rate=None),  # ends with a sign flip
            optax.scale(-1.0),
            optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    chain = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
    return optax.chain(*chain, core), schedule
