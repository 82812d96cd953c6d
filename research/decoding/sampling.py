"""Greedy and sampled generation (temperature, top-k, nucleus) over the KV cache.

One prefill over the left-padded prompts, then a jitted `lax.while_loop` of single-token
steps that exits as soon as every sequence has emitted a stop token. Compiled once per
(model, prompt width P, max_new_tokens, number of stop tokens, greedy / top_k / nucleus on
or off, vocab_limit); temperature and top_p are traced, so sweeping them does not recompile.
vocab_limit is static because it is fixed per model + tokenizer: one compile per pair, never
one per call.

Extra dimension letters: P prompt width, N new tokens.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.decoding.adapters import adapter_for
from research.decoding.prompts import (PaddedPrompts, check_request, check_vocab_limit, is_integer, is_real,
                                       pad_prompts, stop_token_tuple)
from research.models.config import ConfigError

Array = jax.Array


class GenerateOutput(NamedTuple):
    """tokens_BN: generated ids (stop token included), config.pad_token_id after it.
    log_probs_BN: log p(token | prefix) under the model's own distribution (temperature 1,
    no top-k / top-p), 0 on padding; the sum over a row is the sequence's log-likelihood,
    independent of the sampling knobs, so outputs of different settings score comparably.
    lengths_B: generated tokens per row, stop token included.
    """

    tokens_BN: Array
    log_probs_BN: Array
    lengths_B: Array


def filter_logits(logits_BV: Array, *, top_k: int = 0, top_p: float | Array | None = None) -> Array:
    """Set logits outside the top-k and outside the nucleus to -inf (float32).

    top_k=0 disables top-k. Nucleus (Holtzman et al. 2020): keep the most probable tokens
    until their probability mass reaches top_p (the token that crosses top_p is kept, so
    the argmax always survives); None disables it. Both keep every token tied with the
    threshold logit. Applied in that order, as in HF transformers.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)
    if top_p is not None:
        sorted_BV = -jnp.sort(-logits_BV, axis=-1)
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        # The top token always stays: a top_p below float32's smallest normal is 0 on XLA:CPU,
        # which kept no token (every logit -inf, so every sample was id 0).
        keep_BV = (mass_before_BV < top_p) | (jnp.arange(sorted_BV.shape[-1]) == 0)
        threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV >= threshold_B1, logits_BV, -jnp.inf)
    return logits_BV


def temper(logits_BV: Array, temperature: Array | float) -> Array:
    """logits / temperature shifted so the top logit is 0: the same softmax, with no overflow.

    Divided unshifted, a tiny temperature (1e-38) turned finite logits into +-inf and the
    softmax into NaN (garbage samples); shifted, the other logits only head to -inf, so
    sampling tends to greedy as temperature -> 0. The top logits are set to 0 outright
    rather than computed as 0 / temperature, which is NaN once a subnormal temperature is
    flushed to 0.
    """
    max_B1 = jnp.max(logits_BV, axis=-1, keepdims=True)
    return jnp.where(logits_BV == max_B1, 0.0, (logits_BV - max_B1) / temperature)


def limit_vocab(logits_BV: Array, vocab_limit: int | None) -> Array:
    """-inf on ids >= vocab_limit (the padded ids no tokenizer piece owns); a no-op for None.

    vocab_limit is a Python int, so this is a static slice, not a [V] mask built each step.
    """
    if vocab_limit is None:
        return logits_BV
    return logits_BV.at[..., vocab_limit:].set(-jnp.inf)


def greedy_choice(logits_BV: Array) -> Array:
    """jnp.argmax over the last axis (the first maximum; the first NaN if any), as int32.

    Two plain reductions (max, then the smallest index holding it) instead of argmax's
    variadic (value, index) reduce, which XLA:CPU does not vectorize: over GPT-2's 50257
    logits that reduce took 3-4% of a batch-8 decoding step.
    """
    max_B1 = jnp.max(logits_BV, axis=-1, keepdims=True)
    index_BV = jax.lax.broadcasted_iota(jnp.int32, logits_BV.shape, logits_BV.ndim - 1)
    nan_BV = jnp.isnan(logits_BV)
    # XLA:CPU's max may skip NaNs; argmax picks the first NaN, so look for NaNs alone then.
    hit_BV = jnp.where(jnp.any(nan_BV, axis=-1, keepdims=True), nan_BV, logits_BV == max_B1)
    return jnp.min(jnp.where(hit_BV, index_BV, logits_BV.shape[-1]), axis=-1)


def generate(model: nn.Module, params: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float | None = 1.0,
             stop_tokens: int | Sequence[int] | None = (),
             rng: Array | None = None, pad_to_multiple: int = 1, bidirectional_prompt: bool = False,
             vocab_limit: int | None = None) -> GenerateOutput:
    """Continue each prompt (a list of token ids; lengths may differ) by up to `max_new_tokens`.

    temperature 0 is greedy (argmax); otherwise tokens are drawn from
    softmax(filter_logits(temper(logits, temperature), top_k, top_p)) (temper: logits /
    temperature, shifted so none overflows) with key fold_in(rng, step),
    so a fixed rng (a jax.random key) reproduces the output. top_k=0 and top_p=1 or None turn
    those filters off. A row ends after its first token in `stop_tokens` (a list of ids, or
    one id).
    For encoder-decoder models the prompts are the encoder inputs and decoding starts from
    config.decoder_start_token_id. pad_to_multiple rounds the padded prompt width up, so
    batches of similar prompt lengths reuse one compiled program (results are unchanged).
    bidirectional_prompt: a prefix-LM decoder reads its prompt as the bidirectional prefix.
    vocab_limit: only ids below it are ever chosen (pass the tokenizer's vocab_size when the
    model's vocabulary is padded above it; research.decoding.vocab_limit_for). The limit
    restricts the choice, not log_probs_BN: those stay the model's own softmax over its full
    vocabulary, as teacher-forced scoring computes them. None (default) limits nothing.
    """
    config = model.config
    stop_tokens = stop_token_tuple(stop_tokens)
    check_request(config, prompts, max_new_tokens, stop_tokens, pad_to_multiple)
    if not (is_real(temperature) and math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"temperature={temperature!r} must be a number >= 0 (0 means greedy).")
    temperature = float(temperature)
    if not is_integer(top_k) or not 0 <= top_k <= config.vocab_size:
        raise ConfigError(f"top_k={top_k!r} must be an int in [0, {config.vocab_size}] (0 disables it).")
    top_k = int(top_k)  # a static argument: np.int64(5) and 5 share one compiled program
    if top_p is None:  # filter_logits' "off", accepted here too
        top_p = 1.0
    if not (is_real(top_p) and 0 < top_p <= 1):
        raise ConfigError(f"top_p={top_p!r} must be a number in (0, 1] (1 or None disables nucleus filtering).")
    top_p = float(top_p)
    vocab_limit = check_vocab_limit(config, vocab_limit)
    greedy = temperature == 0
    if not greedy and rng is None:
        raise ConfigError(f"temperature={temperature} samples, so pass rng=jax.random.key(seed) (or temperature=0).")
    if rng is not None:
        check_rng(rng)
    adapter = adapter_for(model, bool(bidirectional_prompt))
    padded = pad_prompts(prompts, config.pad_token_id, adapter.pad_side, pad_to_multiple)
    return _generate(params, padded, jnp.asarray(stop_tokens, jnp.int32),
                     jax.random.key(0) if rng is None else rng, jnp.float32(temperature if not greedy else 1.0),
                     jnp.float32(top_p), model=model, max_new_tokens=int(max_new_tokens), greedy=greedy,
                     top_k=top_k, nucleus=top_p < 1, bidirectional_prompt=bool(bidirectional_prompt),
                     vocab_limit=vocab_limit)


def check_rng(rng: Any) -> None:
    """ConfigError unless `rng` is one jax.random key: a typed key (jax.random.key) or the raw
    uint32 key data of jax.random.PRNGKey. Checked here: inside the compiled loop an int seed
    fails as a JAX trace error."""
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.shape == ():
            return
    elif isinstance(rng, (jax.Array, np.ndarray)) and rng.dtype == np.uint32 and rng.ndim == 1:
        try:  # the key data's length is the PRNG implementation's (2 for the default threefry)
            jax.random.wrap_key_data(rng)
            return
        except (TypeError, ValueError):
            pass
    shown = f"an array of shape {rng.shape} and dtype {rng.dtype}" if hasattr(rng, "dtype") else repr(rng)
    raise ConfigError(f"rng={shown} must be one jax.random key, e.g. rng=jax.random.key(0) "
                      "(or jax.random.PRNGKey(0)).")


def is_stop(tokens: Array, stop_tokens_S: Array) -> Array:
    """Elementwise: is each token one of the stop tokens (False when there are none)."""
    return jnp.any(tokens[..., None] == stop_tokens_S, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "greedy", "top_k", "nucleus",
                                             "bidirectional_prompt", "vocab_limit"))
def _generate(params: Any, prompts: PaddedPrompts, stop_tokens_S: Array, rng: Array, temperature: Array,
              top_p: Array, *, model: nn.Module, max_new_tokens: int, greedy: bool, top_k: int,
              nucleus: bool, bidirectional_prompt: bool = False, vocab_limit: int | None = None) -> GenerateOutput:
    adapter = adapter_for(model, bidirectional_prompt)
    pad_id = model.config.pad_token_id
    params = adapter.prepare(params)  # once, outside the token loop
    logits_BV, state, first_position_B = adapter.prefill(params, prompts, max_new_tokens)
    batch = logits_BV.shape[0]

    def choose(logits_BV, step, done_B):
        # Padded ids leave before temperature / top-k / top-p, so the nucleus is renormalized over
        # real tokens; the reported log-prob below still uses the unrestricted logits.
        allowed_BV = limit_vocab(logits_BV, vocab_limit)
        if greedy:
            token_B = greedy_choice(allowed_BV)
        else:
            scaled_BV = filter_logits(temper(allowed_BV, temperature), top_k=top_k, top_p=top_p if nucleus else None)
            token_B = jax.random.categorical(jax.random.fold_in(rng, step), scaled_BV, axis=-1).astype(jnp.int32)
        log_prob_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV, axis=-1), token_B[:, None], axis=-1)[:, 0]
        return jnp.where(done_B, pad_id, token_B), jnp.where(done_B, 0.0, log_prob_B)

    token_B, log_prob_B = choose(logits_BV, 0, jnp.zeros((batch,), bool))
    tokens_BN = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token_B)
    log_probs_BN = jnp.zeros((batch, max_new_tokens), jnp.float32).at[:, 0].set(log_prob_B)
    carry = (jnp.int32(1), state, token_B, is_stop(token_B, stop_tokens_S), tokens_BN, log_probs_BN,
             jnp.ones((batch,), jnp.int32))

    def keep_going(carry):
        step, _, _, done_B, *_ = carry
        return (step < max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
        step, state, token_B, done_B, tokens_BN, log_probs_BN, lengths_B = carry
        # Finished rows keep stepping (on pad) so the batch stays rectangular; their output is masked.
        logits_BV, state = adapter.step(params, token_B, first_position_B + step - 1, state)
        token_B, log_prob_B = choose(logits_BV, step, done_B)
        tokens_BN = jax.lax.dynamic_update_slice_in_dim(tokens_BN, token_B[:, None], step, axis=1)
        log_probs_BN = jax.lax.dynamic_update_slice_in_dim(log_probs_BN, log_prob_B[:, None], step, axis=1)
        lengths_B = lengths_B + (~done_B).astype(jnp.int32)
        return step + 1, state, token_B, done_B | is_stop(token_B, stop_tokens_S), tokens_BN, log_probs_BN, lengths_B

    _, _, _, _, tokens_BN, log_probs_BN, lengths_B = jax.lax.while_loop(keep_going, body, carry)
    return GenerateOutput(tokens_BN, log_probs_BN, lengths_B)
