"""Preference objectives as pure losses: DPO (+ IPO, SimPO) and the Bradley-Terry reward loss.

Each has the train loop's loss signature (model, params, batch, rng) -> (loss, aux), with
aux = {cross_entropy: the objective's value, z_loss: the policy's log Z ** 2 on the scored
response tokens, averaged per pair (each pair's mean over its chosen and rejected response tokens,
then the mean over pairs; DPO / IPO / SimPO, added to the loss with weight train.z_loss as SFT's
cross-entropy adds it; the reward model's scalar head has none: checks.py refuses a weight there),
accuracy: preference accuracy, num_tokens: number of pairs}, so research/training's train step
averages it over pairs exactly as it averages cross-entropy over tokens. Every term is a mean over
pairs: a mean over the batch's tokens, weighted by pairs there, made the objective with
train.z_loss > 0 depend on train.microbatches (grad norm 0.62226 at 1, 0.62262 at 2).

Pair batches (research/finetune/preference_data.py), rows right-padded to T:
    chosen_tokens, chosen_mask, rejected_tokens, rejected_mask   [B, T]
    chosen_length, rejected_length                                 [B]
      *_tokens: prompt + response ids, right-padded; *_mask: 1 on response tokens
    ref_chosen_logps, ref_rejected_logps                           [B]  (DPO / IPO: the frozen
      reference's sequence log-probs, added by the loop before each step)
A row whose chosen mask is all zero is padding and counts nowhere.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Literal, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.decoding.sampling import limit_vocab
from research.models.config import ConfigError
from research.training.losses import check_z_loss

log = logging.getLogger(__name__)
Array = jax.Array
PreferenceLoss = Literal["dpo", "ipo", "simpo"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceConfig:
    """config.preference: which loss, beta (DPO/IPO: KL strength; SimPO: reward scale), SimPO margin."""

    loss: PreferenceLoss = "dpo"
    beta: float = 0.1
    simpo_gamma: float = 0.5
    # The assumed label-flip rate of conservative DPO (Mitchell 2023) and of SimPO as trl's CPOTrainer;
    # no effect under IPO, which has no label to smooth (make_preference_loss warns). trl 1.16's DPO
    # "sigmoid" loss ignores it (0.8171 at 0 and at 0.2, where this gives 0.8359): at eps > 0 trl's
    # DPOTrainer is no oracle of this loss (its "robust" loss is another formula, 0.7858).
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.loss not in PreferenceLoss.__args__:
            raise ConfigError(f"preference.loss={self.loss!r} is not one of {PreferenceLoss.__args__}.")
        # nan and inf passed "<= 0" and stopped training at step 1 as a NaN loss (blaming the learning rate).
        if not math.isfinite(self.beta) or self.beta <= 0:
            raise ConfigError(f"preference.beta={self.beta} must be positive and finite (e.g. "
                              "--config.preference.beta=0.1).")
        if not math.isfinite(self.simpo_gamma):
            raise ConfigError(f"preference.simpo_gamma={self.simpo_gamma} must be a finite number (e.g. "
                              "--config.preference.simpo_gamma=0.5).")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"preference.label_smoothing={self.label_smoothing} must be in [0, 0.5): the assumed "
                              "rate of flipped labels (0 = none; e.g. --config.preference.label_smoothing=0.1).")

    @property
    def needs_reference(self) -> bool:
        return self.loss != "simpo"


def token_log_probs_and_log_z(model: nn.Module, params: Any, tokens_BT: Array, rng: Array | None, *,
                              temperature: float = 1.0, vocab_limit: int | None = None) -> tuple[Array, Array]:
    """(token_log_probs [B, T-1], log Z [B, T-1]): log Z is the LM head's own softmax normaliser
    (raw logits, whole vocabulary, temperature 1), the quantity train.z_loss regularises in SFT
    (research.training.losses.cross_entropy), whatever distribution the log-probs are taken under."""
    # Rows are right-padded and attention is causal, so padding never reaches a real token.
    rngs = {} if rng is None else {"dropout": rng}
    logits_BTV = model.apply({"params": params}, tokens_BT[:, :-1], deterministic=rng is None,
                             rngs=rngs).astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    targets_BT1 = tokens_BT[:, 1:, None].astype(jnp.int32)
    if temperature == 1.0 and vocab_limit is None:  # the same normaliser: one full-vocabulary pass, not two
        return jnp.take_along_axis(logits_BTV, targets_BT1, axis=-1)[..., 0] - log_z_BT, log_z_BT
    log_probs_BTV = jax.nn.log_softmax(limit_vocab(logits_BTV / temperature, vocab_limit), axis=-1)
    return jnp.take_along_axis(log_probs_BTV, targets_BT1, axis=-1)[..., 0], log_z_BT


def token_log_probs(model: nn.Module, params: Any, tokens_BT: Array, rng: Array | None, *,
                    temperature: float = 1.0, vocab_limit: int | None = None) -> Array:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) [B, T-1] of a decoder on right-padded rows, under
    softmax(logits / temperature) over ids below vocab_limit (None: the whole vocabulary): the
    distribution research.decoding.generate samples from with the same two settings."""
    return token_log_probs_and_log_z(model, params, tokens_BT, rng, temperature=temperature,
                                     vocab_limit=vocab_limit)[0]


def mean_square(log_z_BT: Array, weights_BT: Array) -> Array:
    """The z-loss term: mean of log Z ** 2 over the weighted (scored) tokens."""
    return jnp.sum(jnp.square(log_z_BT) * weights_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)


def pair_log_probs(model: nn.Module, params: Any, batch: Mapping[str, Array],
                   rng: Array | None) -> tuple[Array, Array, Array, Array, Array]:
    """(chosen logps, rejected logps, chosen lengths, rejected lengths, z-loss term per pair: the
    mean log Z ** 2 over its chosen and rejected response tokens), each [B], one forward over 2B
    rows; logps are sums over the response tokens."""
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]])
    weights_BT = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])[:, 1:].astype(jnp.float32)
    log_probs_BT, log_z_BT = token_log_probs_and_log_z(model, params, tokens, rng)
    logps, lengths = jnp.sum(log_probs_BT * weights_BT, axis=-1), jnp.sum(weights_BT, axis=-1)
    square_sums = jnp.sum(jnp.square(log_z_BT) * weights_BT, axis=-1)
    b = batch["chosen_tokens"].shape[0]
    z_B = (square_sums[:b] + square_sums[b:]) / jnp.maximum(lengths[:b] + lengths[b:], 1.0)
    return logps[:b], logps[b:], lengths[:b], lengths[b:], z_B


def preference_margin_loss(chosen_logps: Array, rejected_logps: Array, ref_chosen_logps: Array | None,
                           ref_rejected_logps: Array | None, chosen_lengths: Array, rejected_lengths: Array,
                           config: PreferenceConfig) -> tuple[Array, Array, Array]:
    """Per-pair (loss, chosen reward, rejected reward) of DPO / IPO / SimPO.

    DPO (Rafailov 2023): -log sigmoid(beta * ((pc - rc) - (pr - rr))), label-smoothed.
    IPO (Azar 2023): ((pc - rc)/|c| - (pr - rr)/|r| - 1/(2 beta))^2, per-token log-ratios as trl.
    SimPO (Meng 2024): -log sigmoid(beta * (pc/|c| - pr/|r|) - gamma), no reference, label-smoothed
    as trl's CPOTrainer (loss_type="simpo").
    Label smoothing eps (DPO, SimPO; IPO ignores it): -(1 - eps) log sigmoid(z) - eps log sigmoid(-z) of
    the margin z, conservative DPO's formula (Mitchell 2023), not trl 1.16's DPO, which ignores eps.
    """
    smoothing = config.label_smoothing
    if config.loss == "simpo":
        chosen = config.beta * chosen_logps / jnp.maximum(chosen_lengths, 1.0)
        rejected = config.beta * rejected_logps / jnp.maximum(rejected_lengths, 1.0)
        z = chosen - rejected - config.simpo_gamma
        return -jax.nn.log_sigmoid(z) * (1 - smoothing) - jax.nn.log_sigmoid(-z) * smoothing, chosen, rejected
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    chosen, rejected = config.beta * chosen_ratio, config.beta * rejected_ratio
    if config.loss == "ipo":
        delta = chosen_ratio / jnp.maximum(chosen_lengths, 1.0) - rejected_ratio / jnp.maximum(rejected_lengths, 1.0)
        return jnp.square(delta - 1.0 / (2.0 * config.beta)), chosen, rejected
    margin = chosen - rejected
    loss = -jax.nn.log_sigmoid(margin) * (1 - smoothing) - jax.nn.log_sigmoid(-margin) * smoothing
    return loss, chosen, rejected


def _pair_aux(loss_B: Array, chosen_B: Array, rejected_B: Array, valid_B: Array, z_B: Array | None = None,
              z_loss: float = 0.0) -> tuple[Array, dict]:
    n = jnp.sum(valid_B)
    denominator = jnp.maximum(n, 1.0)
    mean_loss = jnp.sum(loss_B * valid_B) / denominator
    accuracy = jnp.sum((chosen_B > rejected_B).astype(jnp.float32) * valid_B) / denominator
    # A mean over pairs, as every other term: the train step weights microbatches by num_tokens
    # (pairs here), so k microbatches give one batch's objective exactly (module docstring).
    z_term = jnp.zeros(()) if z_B is None else jnp.sum(z_B * valid_B) / denominator
    return mean_loss + z_loss * z_term, {
        "cross_entropy": mean_loss, "z_loss": z_term, "accuracy": accuracy, "num_tokens": n,
        "margin": jnp.sum((chosen_B - rejected_B) * valid_B) / denominator}


def _valid_pairs(batch: Mapping[str, Array]) -> Array:
    return (jnp.sum(batch["chosen_mask"], axis=-1) > 0).astype(jnp.float32)


def preference_loss(model: nn.Module, params: Any, batch: Mapping[str, Array], rng: Array | None, *,
                    config: PreferenceConfig, z_loss: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """DPO / IPO / SimPO of the policy `params` on a pair batch (see module docstring), plus
    z_loss times the policy's log Z ** 2 on the response tokens it scores, averaged per pair."""
    chosen_logps, rejected_logps, chosen_len, rejected_len, z_B = pair_log_probs(model, params, batch, rng)
    refs = (batch["ref_chosen_logps"], batch["ref_rejected_logps"]) if config.needs_reference else (None, None)
    loss_B, chosen_B, rejected_B = preference_margin_loss(chosen_logps, rejected_logps, *refs, chosen_len,
                                                          rejected_len, config)
    return _pair_aux(loss_B, chosen_B, rejected_B, _valid_pairs(batch), z_B, z_loss)


def make_preference_loss(config: PreferenceConfig, z_loss: float = 0.0):
    if config.loss == "ipo" and config.label_smoothing:
        # IPO regresses the margin onto 1/(2 beta): there is no label to smooth, and trl's DPO / CPO
        # trainers ignore the value for IPO too. Accepted, not refused: the value is part of the run's
        # identity (run_identity.py), so refusing it would strand an IPO run trained with it, while
        # unsetting it would be refused as another run. One warning per job (check_config builds a
        # PreferenceConfig too), so the value is never silently without effect.
        log.warning("preference.label_smoothing=%s has no effect under IPO (as in trl, which ignores it for IPO); "
                    "the loss is IPO's, unsmoothed.", config.label_smoothing)
    if config.loss != "simpo" and config.simpo_gamma != PreferenceConfig.simpo_gamma:
        # Only SimPO's margin reads it; warned, not refused, for the same reason as above (a sweep
        # switching preference.loss left it set and trained identical DPO runs without a word).
        log.warning("preference.simpo_gamma=%s has no effect under %s (SimPO's target margin only).",
                    config.simpo_gamma, config.loss.upper())
    check_z_loss(z_loss)
    return functools.partial(preference_loss, config=config, z_loss=z_loss)


def reference_log_probs(model: nn.Module, reference_params: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
    """The frozen reference's sequence log-probs of a pair batch: the fields DPO / IPO read."""
    chosen, rejected, _, _, _ = pair_log_probs(model, reference_params, batch, None)
    return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}


def bradley_terry_loss(model: nn.Module, params: Any, batch: Mapping[str, Array],
                       rng: Array | None) -> tuple[Array, dict[str, Array]]:
    """-log sigmoid(r(chosen) - r(rejected)) of a scalar reward model (research/finetune/heads.py)."""
    tokens = jnp.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]])
    lengths = jnp.concatenate([batch["chosen_length"], batch["rejected_length"]])
    rngs = {} if rng is None else {"dropout": rng}
    rewards = model.apply({"params": params}, tokens, lengths, deterministic=rng is None, rngs=rngs)
    b = batch["chosen_tokens"].shape[0]
    chosen_B, rejected_B = rewards[:b], rewards[b:]
    return _pair_aux(-jax.nn.log_sigmoid(chosen_B - rejected_B), chosen_B, rejected_B, _valid_pairs(batch))
