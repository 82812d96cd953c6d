"""Beam search with a GNMT length penalty, jitted as one `lax.while_loop` over the KV cache.

Two pools of W beams per example, as in T5X / Tensor2Tensor: *alive* beams (no stop token
yet), ranked by raw log-probability, and *finished* beams, ranked by the length-penalized
score. Each step expands the alive beams by every token, keeps the top W non-stop
candidates alive and merges the stop-token candidates into the finished pool. The loop
exits early once no alive beam can still beat the worst finished one; at
max_new_tokens the alive beams are finished as they stand.

Score of a finished beam = log p(tokens | prompt) / ((5 + n) / 6) ** alpha (Wu et al. 2016,
GNMT; T5X's brevity penalty), n = generated tokens including the stop token. alpha = 0
ranks by plain log-probability; alpha > 0 favours longer outputs.

num_beams=1 is greedy search only without stop tokens: the one alive beam then takes the
argmax each step (any alpha; it only rescales the final score). With stop tokens it is
not, because the finished pool keeps the best finished hypothesis seen, which may be a
short one. Each step takes the top W * (1 + S) continuations (S stop tokens): the alive beam
continues with the best non-stop one among them (greedy's tokens up to greedy's stop), and
a stop token among them finishes a hypothesis that competes for the pool. So the result is
the best-scoring of the n-token alive beam and "the alive beam's first t tokens + a stop
token" for the steps t + 1 at which a stop token ranked among the top 1 + S; a stop token
ranked lower never finishes. E.g. a stop token ranked second at step 1 (log p -1.7) beats a
greedy run of log p -9.8 that never stops: width 1 returns [stop] where greedy returns n
tokens.

Extra dimension letters: P prompt width, N new tokens, W beams, C candidates, R = B * W rows,
M = W + C (finished pool plus new candidates).
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.decoding.adapters import adapter_for
from research.decoding.prompts import (PaddedPrompts, check_request, check_vocab_limit, is_integer, is_real,
                                       pad_prompts, stop_token_tuple)
from research.decoding.sampling import is_stop, limit_vocab
from research.models.config import ConfigError

Array = jax.Array


class BeamSearchOutput(NamedTuple):
    """The W best finished beams per prompt, best first.

    tokens_BWN: generated ids (stop token included), config.pad_token_id after it.
    scores_BW: length-penalized scores (the ranking). log_probs_BW: log p(tokens | prompt).
    lengths_BW: generated tokens per beam, stop token included. A slot with no hypothesis
    (only possible when W exceeds the number of distinct continuations) scores -inf.
    """

    tokens_BWN: Array
    scores_BW: Array
    log_probs_BW: Array
    lengths_BW: Array


def length_penalty(length: Array | int, alpha: Array | float) -> Array:
    """GNMT's ((5 + length) / 6) ** alpha; a beam's score is its log-prob divided by this."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


class _Beams(NamedTuple):
    alive_tokens_BWN: Array
    alive_log_prob_BW: Array
    finished_tokens_BWN: Array
    finished_score_BW: Array
    finished_log_prob_BW: Array
    finished_length_BW: Array


def beam_search(model: nn.Module, params: Any, prompts: Sequence[Sequence[int]], *, num_beams: int,
                max_new_tokens: int, alpha: float = 0.6, stop_tokens: int | Sequence[int] | None = (),
                pad_to_multiple: int = 1, bidirectional_prompt: bool = False,
                vocab_limit: int | None = None) -> BeamSearchOutput:
    """The `num_beams` highest-scoring continuations of each prompt (lengths may differ).

    alpha: length-penalty exponent (T5X's default 0.6). For encoder-decoder models the
    prompts are the encoder inputs. stop_tokens, pad_to_multiple, bidirectional_prompt: as in
    `generate`.
    vocab_limit: no beam is extended by an id >= vocab_limit (as in `generate`); scores and
    log_probs_BW stay log-probabilities under the model's full vocabulary.
    """
    config = model.config
    stop_tokens = stop_token_tuple(stop_tokens)
    check_request(config, prompts, max_new_tokens, stop_tokens, pad_to_multiple)
    if not is_integer(num_beams) or num_beams < 1:
        raise ConfigError(f"num_beams={num_beams!r} must be a positive integer.")
    if not (is_real(alpha) and math.isfinite(alpha)):
        raise ConfigError(f"alpha={alpha!r} must be a finite number, the length-penalty exponent (0 disables it).")
    vocab_limit = check_vocab_limit(config, vocab_limit)
    adapter = adapter_for(model, bool(bidirectional_prompt))
    padded = pad_prompts(prompts, config.pad_token_id, adapter.pad_side, pad_to_multiple)
    return _beam_search(params, padded, jnp.asarray(stop_tokens, jnp.int32), jnp.float32(alpha), model=model,
                        max_new_tokens=int(max_new_tokens), num_beams=int(num_beams),
                        bidirectional_prompt=bool(bidirectional_prompt), vocab_limit=vocab_limit)


def _take(x_BC: Array, index_BW: Array) -> Array:
    """Gather along axis 1, broadcasting over trailing axes: [B, C, ...] x [B, W] -> [B, W, ...]."""
    return jnp.take_along_axis(x_BC, index_BW.reshape(index_BW.shape + (1,) * (x_BC.ndim - 2)), axis=1)


def _expand(beams: _Beams, logits_BWV: Array, step: Array, stop_tokens_S: Array,
            alpha: Array, vocab_limit: int | None = None) -> tuple[_Beams, Array]:
    """Choose token `step` of every beam -> (new beams, parent alive beam of each new alive beam [B, W])."""
    batch, width, vocab = logits_BWV.shape
    log_probs_BWV = beams.alive_log_prob_BW[..., None] + jax.nn.log_softmax(logits_BWV, axis=-1)
    # Padded ids are removed after the softmax, not before: beams are ranked by their
    # log-probability under the model's full vocabulary, the same number scoring reports.
    log_probs_BWV = limit_vocab(log_probs_BWV, vocab_limit)
    # Each alive beam yields at most S stop candidates, so W * (1 + S) candidates always
    # hold W that can stay alive.
    num_candidates = min(width * (1 + stop_tokens_S.shape[0]), width * vocab)
    cand_log_prob_BC, flat_BC = jax.lax.top_k(log_probs_BWV.reshape(batch, width * vocab), num_candidates)
    parent_BC, token_BC = flat_BC // vocab, flat_BC % vocab
    stop_BC = is_stop(token_BC, stop_tokens_S)
    cand_tokens_BCN = _take(beams.alive_tokens_BWN, parent_BC).at[:, :, step].set(token_BC)

    alive_log_prob_BW, alive_pick_BW = jax.lax.top_k(jnp.where(stop_BC, -jnp.inf, cand_log_prob_BC), width)
    length = step + 1
    stop_score_BC = jnp.where(stop_BC, cand_log_prob_BC / length_penalty(length, alpha), -jnp.inf)
    pool_score_BM = jnp.concatenate([beams.finished_score_BW, stop_score_BC], axis=1)
    finished_score_BW, finished_pick_BW = jax.lax.top_k(pool_score_BM, width)
    pool = lambda old, new: _take(jnp.concatenate([old, new], axis=1), finished_pick_BW)
    new_beams = _Beams(
        alive_tokens_BWN=_take(cand_tokens_BCN, alive_pick_BW),
        alive_log_prob_BW=alive_log_prob_BW,
        finished_tokens_BWN=pool(beams.finished_tokens_BWN, cand_tokens_BCN),
        finished_score_BW=finished_score_BW,
        finished_log_prob_BW=pool(beams.finished_log_prob_BW, cand_log_prob_BC),
        finished_length_BW=pool(beams.finished_length_BW, jnp.full(token_BC.shape, length, jnp.int32)),
    )
    return new_beams, _take(parent_BC, alive_pick_BW)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_beams", "bidirectional_prompt",
                                             "vocab_limit"))
def _beam_search(params: Any, prompts: PaddedPrompts, stop_tokens_S: Array, alpha: Array, *, model: nn.Module,
                 max_new_tokens: int, num_beams: int, bidirectional_prompt: bool = False,
                 vocab_limit: int | None = None) -> BeamSearchOutput:
    adapter = adapter_for(model, bidirectional_prompt)
    pad_id = model.config.pad_token_id
    params = adapter.prepare(params)  # once, outside the token loop
    logits_BV, state, first_position_B = adapter.prefill(params, prompts, max_new_tokens)
    (batch, vocab), width, n = logits_BV.shape, num_beams, max_new_tokens
    tile_R = jnp.repeat(jnp.arange(batch), width)
    state = adapter.select_rows(state, tile_R)
    first_position_R = first_position_B[tile_R]
    # Only beam 0 starts alive, so the first expansion does not produce W identical copies.
    start_log_prob_BW = jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf)[None].repeat(batch, axis=0)
    no_tokens_BWN = jnp.full((batch, width, n), pad_id, jnp.int32)
    beams = _Beams(no_tokens_BWN, start_log_prob_BW, no_tokens_BWN, jnp.full((batch, width), -jnp.inf),
                   jnp.full((batch, width), -jnp.inf), jnp.zeros((batch, width), jnp.int32))
    expand = functools.partial(_expand, stop_tokens_S=stop_tokens_S, alpha=alpha, vocab_limit=vocab_limit)
    beams, parent_BW = expand(beams, jnp.broadcast_to(logits_BV[:, None], (batch, width, vocab)), jnp.int32(0))

    def keep_going(carry):
        length, _, beams, _ = carry
        # A beam alive at `length` finishes at some length in (length, n] with no higher
        # log-prob, so its best reachable score divides by the largest penalty in that range.
        best_lp = jnp.maximum(length_penalty(length + 1, alpha), length_penalty(n, alpha))
        best_reachable_B = jnp.max(beams.alive_log_prob_BW, axis=1) / best_lp
        settled_B = jnp.min(beams.finished_score_BW, axis=1) >= best_reachable_B
        return (length < n) & ~jnp.all(settled_B)

    def body(carry):
        length, state, beams, parent_BW = carry
        state = adapter.select_rows(state, (jnp.arange(batch)[:, None] * width + parent_BW).reshape(-1))
        last_token_R = jax.lax.dynamic_index_in_dim(beams.alive_tokens_BWN, length - 1, axis=2,
                                                    keepdims=False).reshape(-1)
        logits_RV, state = adapter.step(params, last_token_R, first_position_R + length - 1, state)
        beams, parent_BW = expand(beams, logits_RV.reshape(batch, width, vocab), length)
        return length + 1, state, beams, parent_BW

    length, _, beams, _ = jax.lax.while_loop(keep_going, body, (jnp.int32(1), state, beams, parent_BW))
    # Beams still alive at max_new_tokens are complete; after an early exit they are not
    # (and cannot outscore the finished pool anyway).
    alive_score_BW = jnp.where(length == n, beams.alive_log_prob_BW / length_penalty(n, alpha), -jnp.inf)
    scores_BW, pick_BW = jax.lax.top_k(jnp.concatenate([beams.finished_score_BW, alive_score_BW], axis=1), width)
    pool = lambda finished, alive: _take(jnp.concatenate([finished, alive], axis=1), pick_BW)
    return BeamSearchOutput(
        tokens_BWN=pool(beams.finished_tokens_BWN, beams.alive_tokens_BWN),
        scores_BW=scores_BW,
        log_probs_BW=pool(beams.finished_log_prob_BW, beams.alive_log_prob_BW),
        lengths_BW=pool(beams.finished_length_BW, jnp.full((batch, width), n, jnp.int32)),
    )
