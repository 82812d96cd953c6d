"""Optimizers (AdamW, Adafactor, Lion), learning-rate schedules, and the weight-decay mask.

Schedules are functions of the optimizer step (0-based, counted in updates, not
microbatches) returning the learning rate. Weight decay never touches norm scales or
biases (T5's relative-position bias tables included, as Hugging Face's Trainer leaves every
"bias" parameter undecayed): decaying them only pulls activations toward zero without
regularising anything.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
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
    # final learning rate = min_lr_ratio * learning_rate, reached at step total_steps, as optax's
    # schedules reach their end value at their horizon: the last update (step total_steps - 1)
    # runs one decay step above it.
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; scaled by the learning rate (Adafactor's too: make_optimizer)
    clip_norm: float = 1.0  # global gradient-norm clip; 0 disables

    def __post_init__(self):
        for field, choice in (("name", OptimizerName), ("schedule", ScheduleName)):
            if getattr(self, field) not in choice.__args__:
                raise ConfigError(f"opt.{field}={getattr(self, field)!r} is not one of {choice.__args__}.")
        # `<= 0` alone lets nan through (every comparison with nan is False), and inf: both
        # compiled and diverged at step 1.
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"opt.learning_rate={self.learning_rate} must be a positive finite number, e.g. 3e-4.")
        for field in ("b1", "b2"):
            if not 0.0 <= getattr(self, field) < 1.0:  # a moment's decay: 1 never forgets, above 1 grows
                raise ConfigError(f"opt.{field}={getattr(self, field)} must be in [0, 1), e.g. 0.9 or 0.95.")
        # adamw with eps 0: a zero gradient (an unused embedding row) gives 0 / 0 = nan; lion and
        # adafactor never read eps.
        if not (math.isfinite(self.eps) and (self.eps > 0 or self.eps == 0 and self.name != "adamw")):
            raise ConfigError(f"opt.eps={self.eps} must be a positive finite number, e.g. 1e-8.")
        if self.total_steps <= 0 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ConfigError(f"opt.warmup_steps={self.warmup_steps} must lie in [0, total_steps={self.total_steps}].")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"opt.decay_fraction={self.decay_fraction} must be in (0, 1].")
        decay_start = self.total_steps - max(1, round(self.decay_fraction * self.total_steps))
        if self.schedule == "wsd" and self.warmup_steps > decay_start:
            # The ramp would run past the start of the decay, then drop onto the decay line in one step.
            raise ConfigError(f"opt.warmup_steps={self.warmup_steps} overlaps the wsd decay, which starts at step "
                              f"{decay_start} (decay_fraction={self.decay_fraction} of total_steps="
                              f"{self.total_steps}); lower warmup_steps or decay_fraction.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"opt.min_lr_ratio={self.min_lr_ratio} must be in [0, 1].")
        for field in ("weight_decay", "clip_norm"):
            if not (math.isfinite(getattr(self, field)) and getattr(self, field) >= 0):
                raise ConfigError(f"opt.{field}={getattr(self, field)} must be a finite number >= 0 (0 disables).")
        self._check_float32()
        self._check_settings_read()

    def _check_settings_read(self) -> None:
        """A number away from its default under an optimizer or schedule that never reads it trained as
        the default without a word (adafactor's b1 / b2, lion's eps, a cosine's decay_fraction, a constant
        schedule's min_lr_ratio), where the batched sweep refuses models differing in it: one line.
        Which option reads which number is the sweep's table (model_batch._READ_BY); the defaults pass,
        as configs carry them whatever the optimizer, and so does eps 0 where eps is unread."""
        from research.training.model_batch import _READ_BY  # imports this module: on use
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for kind, reads in _READ_BY.items():
            chosen = getattr(self, kind)
            for field in sorted({f for r in reads.values() for f in r} - set(reads[chosen])):
                value = getattr(self, field)
                if value == defaults[field] or field == "eps" and value == 0:
                    continue
                users = [k for k, r in reads.items() if field in r]
                raise ConfigError(f"opt.{field}={value} is not used by opt.{kind}={chosen!r}{_UNREAD_WHY[chosen]}, "
                                  f"so the run would train as with the default; leave opt.{field} at "
                                  f"{defaults[field]}, or set opt.{kind} to one of {users}.")

    def _check_float32(self) -> None:
        """The step computes with these numbers in float32 (traced hyperparameters): one that
        overflows it (a learning rate of 1e39 became inf, checked only in float64, and diverged at
        step 1) or rounds to another meaning there (eps 1e-50 to 0, b2 0.99999999 to 1) is one line."""
        for field in ("learning_rate", "eps", "weight_decay", "clip_norm", "b1", "b2"):
            value = getattr(self, field)
            with np.errstate(over="ignore", under="ignore"):
                single = float(np.float32(value))
            if not math.isfinite(single):
                raise ConfigError(f"opt.{field}={value} overflows float32, the precision the step computes it in "
                                  "(largest 3.4e38); give a smaller value.")
            # Below float32's smallest normal number XLA flushes to 0 (0 / (0 + 1e-40) was nan under jit).
            if 0 < value < np.finfo(np.float32).tiny and (field != "eps" or self.name == "adamw"):
                raise ConfigError(f"opt.{field}={value} is 0 in float32, the precision the step computes it in "
                                  "(it flushes values below 1.2e-38); give a larger value.")
            if field in ("b1", "b2") and single >= 1.0:
                raise ConfigError(f"opt.{field}={value} is 1.0 in float32, the precision the step computes it in; "
                                  "give a value below 0.99999994, e.g. 0.999.")


# Why an option leaves some numbers unread (OptimizerConfig._check_settings_read's line).
_UNREAD_WHY = {"adafactor": " (it has its own second-moment decay and no momentum)",
               "lion": " (its update is a sign: no denominator for eps to guard)", "adamw": "",
               "cosine": " (only wsd decays over a final fraction)",
               "constant": " (the learning rate stays at its peak)", "wsd": ""}


# The optimizer's numbers that may differ between models trained together in one program
# (research/training/model_batch.py passes them as traced per-model values).
HYPERPARAMETERS = ("peak", "final", "warmup", "total", "decay_start", "b1", "b2", "eps", "weight_decay", "clip_norm")


def hyperparameters(config: OptimizerConfig) -> dict[str, float]:
    """The schedule's breakpoints (computed here, in float64) and the optimizer's numbers."""
    total = config.total_steps
    return {"peak": config.learning_rate, "final": config.learning_rate * config.min_lr_ratio,
            "warmup": float(config.warmup_steps), "total": float(total),
            "decay_start": float(total - max(1, round(config.decay_fraction * total))),
            "b1": config.b1, "b2": config.b2, "eps": config.eps, "weight_decay": config.weight_decay,
            "clip_norm": config.clip_norm}


def schedule_warning(config: OptimizerConfig) -> str | None:
    """A line for a cosine schedule that never decays: warmup reaching the peak at the run's last
    step or later (warmup_steps >= total_steps - 1) ends the run at the peak learning rate, which
    nothing said. A warning, not a refusal: tiny test runs (2 steps, warmup 2) use it on purpose."""
    if config.schedule == "cosine" and config.total_steps > 1 and config.warmup_steps >= config.total_steps - 1:
        return (f"opt.warmup_steps={config.warmup_steps} of total_steps={config.total_steps}: the cosine decay never "
                f"starts and the run ends at the peak learning rate {config.learning_rate:g}; lower warmup_steps "
                "(e.g. a tenth of the steps) for a run that anneals.")
    return None


def make_schedule(config: OptimizerConfig, values: dict[str, Any] | None = None) -> Schedule:
    """Linear warmup to the peak, then cosine decay ("cosine"), a plateau and a final linear
    decay ("wsd", warmup-stable-decay, Hu et al. 2024), or a plateau ("constant").

    Warmup reaches the peak at step warmup_steps - 1 so that step 0 already updates.
    `values` (default: hyperparameters(config)) may hold traced arrays: one program then
    serves models with different learning rates and step counts.
    """
    v = hyperparameters(config) if values is None else values
    peak, final, warmup, total, decay_start = (v[k] for k in ("peak", "final", "warmup", "total", "decay_start"))

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        # With warmup 0 the ramp is 1 from step 0 (and `step < warmup` never holds).
        ramp = jnp.minimum(1.0, (step + 1.0) / jnp.maximum(warmup, 1.0))
        if config.schedule == "constant":
            return peak * ramp
        if config.schedule == "cosine":
            progress = jnp.clip((step - warmup) / jnp.maximum(1.0, total - warmup), 0.0, 1.0)
            decayed = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        else:
            progress = jnp.clip((step - decay_start) / jnp.maximum(1.0, total - decay_start), 0.0, 1.0)
            decayed = peak + (final - peak) * progress
        return jnp.where(step < warmup, peak * ramp, decayed)

    return schedule


# Modules whose tables are additive biases, though stored as embeddings (T5's [buckets, heads]
# attention-logit bias, research/models/attention.py): they decayed while the module docstring
# promised that no bias does.
NO_DECAY_MODULE_SUFFIXES = ("relative_bias",)


def weight_decay_mask(params: Any) -> Any:
    """True for leaves that take weight decay: matrices other than biases (relative-position bias
    tables too) and norm scales."""
    def decays(path, leaf) -> bool:
        keys = [str(getattr(p, "key", p)) for p in path]
        if any(key.endswith(NO_DECAY_MODULE_SUFFIXES) for key in keys[:-1]):
            return False
        return keys[-1] not in NO_DECAY_NAMES and jnp.ndim(leaf) >= 2
    return jax.tree_util.tree_map_with_path(decays, params)


# Parameter keys that hold a scanned stack of layers (research/models/stack.py's run_stack `name`s;
# research/models/layout.py's stack_layers), one layer per index of their leading axis. They sit at
# the top of a zoo model's tree, or deeper: under "body" (research/finetune/heads.py) and under
# "lora" / "base" (research/finetune/lora.py).
SCANNED_LAYERS = ("layers", "encoder_layers", "decoder_layers")

Path = tuple[str, ...]


def _scanned_stacks(tree: Any, prefix: Path = ()) -> list[Path]:
    """Key paths of the scanned stacks in `tree`, at any depth. A stack without leaves (the part
    optax.multi_transform masks out of this transform, e.g. LoRA's frozen base) is left out:
    nothing there to vmap over."""
    if not isinstance(tree, dict):
        return []
    found: list[Path] = []
    for key, value in tree.items():
        if key in SCANNED_LAYERS and jax.tree.leaves(value):
            found.append((*prefix, key))
        elif key not in SCANNED_LAYERS:
            found += _scanned_stacks(value, (*prefix, key))
    return found


def _get(tree: Any, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _put(tree: dict, path: Path, value: Any) -> dict:
    """A copy of `tree` with `value` at `path` (parents created as needed)."""
    head, *rest = path
    return {**tree, head: _put(tree.get(head, {}), tuple(rest), value) if rest else value}


def _without(tree: dict, paths: list[Path]) -> dict:
    """A copy of `tree` without the subtrees at `paths`."""
    out = dict(tree)
    for head in {p[0] for p in paths}:
        deeper = [p[1:] for p in paths if p[0] == head and len(p) > 1]
        if deeper:
            out[head] = _without(out[head], deeper)
        else:
            del out[head]
    return out


def each_scanned_layer(transform: optax.GradientTransformation) -> optax.GradientTransformation:
    """`transform` run on each layer of a scanned stack alone (jax.vmap over the layer axis), as on
    the unrolled model's layers_0, layers_1, ...: Adafactor's parameter-scale and block-RMS steps
    take an RMS per leaf, which over a stacked [L, ...] leaf mixed the layers (5 steps: updates
    4% off the unrolled model's at initialisation, 190% once one layer's kernels were 4x larger).
    Stacks are found at any depth: found only at the top, a LoRA tree's adapters ({"lora":
    {"layers": ...}}) and a head model's body ({"body": {"layers": ...}}) mixed their layers
    (lora_a updates 2.9x the unrolled run's). The state is {"rest": state of everything else,
    <the stacks at their paths>: their vmapped states}. Params without a scanned stack get
    `transform` itself, state and all."""
    def split(tree: Any, paths: list[Path]) -> Any:
        return None if tree is None else _without(tree, paths)

    def init(params):
        paths = _scanned_stacks(params)
        if not paths:
            return transform.init(params)
        if any(p[0] == "rest" for p in paths):  # would share the state's "rest" key
            raise ValueError(f"each_scanned_layer: a scanned stack under a top-level 'rest' key ({paths}).")
        state = {"rest": transform.init(split(params, paths))}
        for path in paths:
            state = _put(state, path, jax.vmap(transform.init)(_get(params, path)))
        return state

    def update(updates, state, params=None):
        paths = _scanned_stacks(updates)
        if not paths:
            return transform.update(updates, state, params)
        out, rest_state = transform.update(split(updates, paths), state["rest"], split(params, paths))
        new_state = {"rest": rest_state}
        for path in paths:
            layer_updates, layer_state = jax.vmap(transform.update)(
                _get(updates, path), _get(state, path), None if params is None else _get(params, path))
            out, new_state = _put(out, path, layer_updates), _put(new_state, path, layer_state)
        return out, new_state

    return optax.GradientTransformation(init, update)


def make_optimizer(config: OptimizerConfig, values: dict[str, Any] | None = None
                   ) -> tuple[optax.GradientTransformation, Schedule]:
    """The gradient transformation (clip, then the optimizer) and its schedule.

    `values` (see make_schedule) may carry traced per-model numbers; the optimizer's kind,
    its schedule's kind and whether clipping is on always come from `config`.
    """
    v = hyperparameters(config) if values is None else values
    schedule = make_schedule(config, v)
    if config.name == "adamw":
        core = optax.adamw(schedule, b1=v["b1"], b2=v["b2"], eps=v["eps"],
                           weight_decay=v["weight_decay"], mask=weight_decay_mask)
    elif config.name == "lion":
        core = optax.lion(schedule, b1=v["b1"], b2=v["b2"], weight_decay=v["weight_decay"],
                          mask=weight_decay_mask)
    else:
        # Adafactor factors second moments of large matrices (memory ~ rows + cols) and clips
        # updates by their RMS itself. optax.adafactor would add its weight_decay_rate after the
        # learning-rate scaling (p <- p (1 - wd) per step: 0.9 with the AdamW-style default 0.1),
        # so the decay is added here before the schedule instead, decoupled as in AdamW:
        # p <- p - lr(t) * (update + wd * p). transformers' Adafactor (scale_parameter=True) scales
        # its decay by lr * RMS(p) as well: for weights of RMS ~0.02 this decay is ~50x stronger
        # relative to the update than there, so its weight_decay is not that one's.
        core = optax.chain(
            each_scanned_layer(optax.adafactor(learning_rate=None, weight_decay_rate=None)),  # ends with a sign flip
            optax.scale(-1.0),
            optax.add_decayed_weights(v["weight_decay"], mask=weight_decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    chain = [optax.clip_by_global_norm(v["clip_norm"])] if config.clip_norm else []
    return optax.chain(*chain, core), schedule
