"""Pure loss functions, one per objective: (model, params, batch, rng) -> (loss, aux).

An objective names the batch fields its model reads (`model_inputs`) and the fields that
hold its targets; the trainer never looks inside a batch. Batches follow research/data:

    causal_lm / prefix_lm (decoder) and masked_lm (encoder):
        inputs, targets, segment_ids, positions, loss_weights              [B, T]
        prefix (prefix_lm on a decoder: 1 on the bidirectional prefix)     [B, T]
    span_corruption / prefix_lm (encoder-decoder):
        encoder_inputs, encoder_segment_ids, encoder_positions             [B, S]
        decoder_inputs, decoder_targets, decoder_segment_ids, decoder_positions, loss_weights [B, T]

`loss` is the weighted mean cross-entropy plus the optional z-loss; aux holds the parts
as token means and `num_tokens` (the sum of loss_weights) so that microbatches and
devices combine exactly.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ConfigError, Family

Array = jax.Array
Batch = Mapping[str, Any]
LossFn = Callable[[nn.Module, Any, Batch, Array], tuple[Array, dict[str, Array]]]
ObjectiveName = Literal["causal_lm", "prefix_lm", "masked_lm", "span_corruption"]


def _single_stack_inputs(batch: Batch) -> tuple[tuple, dict]:
    """Decoder and encoder models take the same arguments; a decoder prefix-LM batch adds `prefix`."""
    kwargs = dict(positions_BT=batch["positions"], segment_ids_BT=batch["segment_ids"])
    if "prefix" in batch:
        kwargs["prefix_mask_BT"] = batch["prefix"]
    return (batch["inputs"],), kwargs


def _encoder_decoder_inputs(batch: Batch) -> tuple[tuple, dict]:
    return (batch["encoder_inputs"], batch["decoder_inputs"]), dict(
        encoder_segment_ids_BS=batch["encoder_segment_ids"], decoder_segment_ids_BT=batch["decoder_segment_ids"],
        encoder_positions_BS=batch["encoder_positions"], decoder_positions_BT=batch["decoder_positions"])


@dataclasses.dataclass(frozen=True)
class Objective:
    """How one objective feeds its model and where its targets are."""

    name: ObjectiveName
    family: Family
    model_inputs: Callable[[Batch], tuple[tuple, dict]]  # batch -> (args, kwargs) of model.__call__
    targets_key: str
    length_keys: tuple[str, ...]  # fields whose length must fit within the model's max_len
    extra_keys: tuple[str, ...] = ()  # other fields the model reads (decoder prefix LM: "prefix")

    def check_batch(self, batch: Mapping[str, Any], max_len: int) -> None:
        """Fail with one line if `batch` lacks a field this objective reads or is too long."""
        needed = {self.targets_key, "loss_weights", *self.length_keys, *self.extra_keys}
        missing = sorted(needed - set(batch))
        if missing:
            raise ConfigError(f"objective {self.name!r} on a {self.family} model needs batch fields {missing}; "
                              f"got {sorted(batch)}.")
        for key in self.length_keys:
            length = batch[key].shape[1]
            if length > max_len:
                raise ConfigError(f"{key} has length {length} > the model's max_len={max_len}; shorten "
                                  "the sequence (data seq_len) or raise the model's max_len.")


# The batch schema (and so the call) depends on the family; the objective only says which
# families it can train.
_FAMILY_IO = {
    "decoder": (_single_stack_inputs, "targets", ("inputs",)),
    "encoder": (_single_stack_inputs, "targets", ("inputs",)),
    "encoder_decoder": (_encoder_decoder_inputs, "decoder_targets", ("encoder_inputs", "decoder_inputs")),
}
OBJECTIVE_FAMILIES: dict[str, tuple[str, ...]] = {
    "causal_lm": ("decoder",),
    "prefix_lm": ("decoder", "encoder_decoder"),
    "masked_lm": ("encoder",),
    "span_corruption": ("encoder_decoder",),
}


def get_objective(name: str, family: str) -> Objective:
    """The objective `name` for a `family` model; fails if that family cannot train on it."""
    if name not in OBJECTIVE_FAMILIES:
        raise ConfigError(f"objective={name!r} is not one of {sorted(OBJECTIVE_FAMILIES)}.")
    if family not in OBJECTIVE_FAMILIES[name]:
        fits = sorted(n for n, families in OBJECTIVE_FAMILIES.items() if family in families)
        raise ConfigError(f"objective={name!r} trains {' or '.join(OBJECTIVE_FAMILIES[name])} models, not "
                          f"{family}; use one of {fits}.")
    # Without `prefix` a decoder prefix-LM batch would silently train as a causal LM.
    extra = ("prefix",) if (name, family) == ("prefix_lm", "decoder") else ()
    return Objective(name, family, *_FAMILY_IO[family], extra_keys=extra)


def cross_entropy(logits_BTV: Array, targets_BT: Array, weights_BT: Array,
                  z_loss: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """Weighted mean token cross-entropy (nats) in float32, plus z_loss * mean(log Z ** 2).

    The z-loss (PaLM, Chowdhery et al. 2022) keeps the softmax normaliser near 1, which
    stabilises bf16 training of large vocabularies.
    """
    logits_BTV = logits_BTV.astype(jnp.float32)
    weights_BT = weights_BT.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]
    num_tokens = jnp.sum(weights_BT)
    denominator = jnp.maximum(num_tokens, 1.0)
    nll = jnp.sum((log_z_BT - target_logit_BT) * weights_BT) / denominator
    z_term = jnp.sum(jnp.square(log_z_BT) * weights_BT) / denominator
    correct = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
    aux = {"cross_entropy": nll, "z_loss": z_term, "accuracy": jnp.sum(correct * weights_BT) / denominator,
           "num_tokens": num_tokens}
    return nll + z_loss * z_term, aux


def objective_loss(model: nn.Module, params: Any, batch: Batch, rng: Array | None, *, objective: Objective,
                   z_loss: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """Forward `batch` through `model` as `objective` says and score its targets.

    rng None runs deterministically (evaluation); otherwise it seeds dropout.
    """
    args, kwargs = objective.model_inputs(batch)
    rngs = {} if rng is None else {"dropout": rng}
    logits = model.apply({"params": params}, *args, **kwargs, deterministic=rng is None, rngs=rngs)
    return cross_entropy(logits, batch[objective.targets_key], batch["loss_weights"], z_loss)


def check_z_loss(value: Any) -> float:
    """train.z_loss as a float, or one line: nan passed a "< 0" check, compiled, and the first step
    stopped as a divergence whose advice (lower the learning rate) was wrong. Every path that
    reads train.z_loss checks it here (pretraining, fine-tuning's checks and losses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"train.z_loss={value!r} must be a finite number >= 0 (0 disables; PaLM used 1e-4).")
    return float(value)


def make_loss_fn(objective: Objective, z_loss: float = 0.0) -> LossFn:
    """The pure loss (model, params, batch, rng) -> (loss, aux) of `objective`."""
    check_z_loss(z_loss)
    return functools.partial(objective_loss, objective=objective, z_loss=z_loss)


def init_params(model: nn.Module, objective: Objective, batch: Batch, rng: Array) -> Any:
    """Boxed (logically partitioned) params of `model`, shaped by one batch of `objective`."""
    args, kwargs = objective.model_inputs(batch)
    return model.init({"params": rng}, *args, **kwargs, deterministic=True)["params"]
