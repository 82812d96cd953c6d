"""Turn a ragged batch of prompts into padded arrays, and validate a decoding request.

Everything here runs in numpy before tracing, so a bad request fails with one line
naming the value and the fix, never inside a compiled loop.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any, Iterable, Literal, NamedTuple, Sequence

import jax
import numpy as np

from research.models.config import ConfigError, ModelConfig

Array = jax.Array
PadSide = Literal["left", "right"]
log = logging.getLogger(__name__)
# (model name, max_len) already warned about decoding past its trained context: the evaluation
# harness makes one request per batch, and one line says it all.
_WARNED_PAST_CONTEXT: set[tuple[str, int]] = set()


def is_integer(value: Any) -> bool:
    """A Python or numpy integer, not a bool: what every integer-valued decoding option accepts."""
    # numpy registers its integer types as numbers.Integral; bool is an int subclass.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A Python or numpy real number, or a 0-d array of one; not a bool (nor a string like '0.7')."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    return (isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
            and (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)))


def stop_token_tuple(stop_tokens: int | Sequence[int] | None) -> tuple[int, ...]:
    """`stop_tokens` as a tuple of ids. One id alone (as transformers takes an int eos_token_id)
    or None (no stop tokens) are accepted too; anything but integer ids is a ConfigError."""
    if stop_tokens is None:
        return ()
    if isinstance(stop_tokens, Iterable) and not isinstance(stop_tokens, (str, bytes, np.ndarray, jax.Array)):
        stop_tokens = list(stop_tokens)  # sets and generators too, which np.asarray would wrap as one object
    try:
        ids = np.asarray(stop_tokens)
    except ValueError:  # ragged nesting
        ids = np.asarray(None)
    if ids.ndim > 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        is_array = isinstance(stop_tokens, (np.ndarray, jax.Array))  # whose repr spans lines
        shown = f"an array of shape {ids.shape}" if is_array else repr(stop_tokens)
        raise ConfigError(f"stop_tokens={shown} must be a token id or a list of token ids, e.g. [eos_id].")
    return tuple(int(t) for t in ids.reshape(-1))


class PaddedPrompts(NamedTuple):
    """A batch of B prompts padded to P tokens.

    tokens_BP: token ids, `pad_id` on padding. segment_ids_BP: 1 on real tokens, 0 on
    padding. positions_BP: position of each real token counted from the example's first
    real token (0 on padding). lengths_B: number of real tokens.
    """

    tokens_BP: np.ndarray
    segment_ids_BP: np.ndarray
    positions_BP: np.ndarray
    lengths_B: np.ndarray


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, side: PadSide = "left",
                multiple: int = 1) -> PaddedPrompts:
    """Pad token-id lists of different lengths into [B, P] arrays, P a multiple of `multiple`.

    Decoder prompts are left-padded so that every example's last real token sits in the
    last column: one prefill then yields each example's next-token logits at column P-1,
    and all examples write their generated tokens to the same cache slot at each step.
    Encoder inputs are right-padded (the T5 convention). Padding is masked out, so a
    larger `multiple` changes no result; it only lets prompts of similar lengths share
    one compiled program.
    """
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    batch, width = len(prompts), -(-int(lengths.max()) // multiple) * multiple
    tokens = np.full((batch, width), pad_id, np.int32)
    segment_ids = np.zeros((batch, width), np.int32)
    positions = np.zeros((batch, width), np.int32)
    for b, prompt in enumerate(prompts):
        n = len(prompt)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        tokens[b, cols] = np.asarray(prompt, np.int32)
        segment_ids[b, cols] = 1
        positions[b, cols] = np.arange(n, dtype=np.int32)
    return PaddedPrompts(tokens, segment_ids, positions, lengths)


def check_request(config: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  stop_tokens: Sequence[int], pad_to_multiple: int = 1) -> None:
    """Raise ConfigError (one line) for a request the model cannot serve."""
    if not is_integer(pad_to_multiple) or pad_to_multiple < 1:
        raise ConfigError(f"pad_to_multiple={pad_to_multiple!r} must be a positive integer (1 = no rounding).")
    if isinstance(prompts, (str, bytes)) or not len(prompts):
        raise ConfigError(f"prompts={prompts!r} must be a non-empty list of token-id lists; tokenize text first.")
    for b, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)) or np.ndim(prompt) != 1 or not len(prompt):
            raise ConfigError(f"prompts[{b}]={prompt!r} must be a non-empty 1-D list of token ids.")
        ids = np.asarray(prompt)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ConfigError(f"prompts[{b}] has dtype {ids.dtype}; token ids must be integers.")
        outside = ids[(ids < 0) | (ids >= config.vocab_size)]
        if outside.size:
            raise ConfigError(f"prompts[{b}] holds token id {int(outside[0])} outside the vocabulary "
                              f"[0, {config.vocab_size}) of {config.name}.")
    if not is_integer(max_new_tokens) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer.")
    if max(len(p) for p in prompts) + max_new_tokens >= 2**31:  # positions and lengths are int32 on the device
        raise ConfigError(f"max_new_tokens={max_new_tokens} with a {max(len(p) for p in prompts)}-token prompt "
                          f"passes {2**31 - 1} positions, the most int32 can index.")
    bad_stops = [t for t in stop_tokens if not 0 <= int(t) < config.vocab_size]
    if bad_stops:
        raise ConfigError(f"stop_tokens {bad_stops} are outside the vocabulary [0, {config.vocab_size}).")
    if config.family == "encoder_decoder":
        return  # relative positions (ModelConfig's rule), and the prompt is the encoder's, not the decoder's
    # The last new token is returned, never fed back, so it takes no position: generation reads
    # positions 0 .. prompt + max_new_tokens - 2 (as HF: GPT-2 with n_positions=16 generates 16 + 1).
    longest = max(len(p) for p in prompts)
    if config.position != "learned":
        _warn_past_context(config, longest, max_new_tokens)
        return
    if longest > config.max_len:
        # No max_new_tokens fits: the prompt alone overflows the position table.
        raise ConfigError(f"the longest prompt is {longest} tokens, more than max_len={config.max_len} of "
                          f"{config.name}'s learned position table; shorten it to at most {config.max_len} tokens.")
    needed = longest + max_new_tokens - 1
    if needed > config.max_len:
        raise ConfigError(
            f"longest prompt + max_new_tokens - 1 = {needed} exceeds max_len={config.max_len} of {config.name}'s "
            f"learned position table (the last new token takes no position); shorten the prompt or lower "
            f"max_new_tokens to at most {max_new_tokens - (needed - config.max_len)}.")


def _warn_past_context(config: ModelConfig, longest: int, max_new_tokens: int) -> None:
    # RoPE has no table to overflow, and transformers decodes past max_position_embeddings too, so
    # this is no refusal; but the model never saw those positions, and said nothing about it.
    needed = longest + max_new_tokens - 1
    key = (config.name, config.max_len)
    if needed <= config.max_len or key in _WARNED_PAST_CONTEXT:
        return
    _WARNED_PAST_CONTEXT.add(key)
    log.warning("longest prompt + max_new_tokens - 1 = %d positions exceed max_len=%d, the context %s was "
                "trained on (position=%r): its output there may degrade; shorten the prompt or lower "
                "max_new_tokens to stay within it (warned once per model).", needed, config.max_len, config.name,
                config.position)


def check_vocab_limit(config: ModelConfig, vocab_limit: int | None) -> int | None:
    """The limit to compile in: None when it excludes nothing (so a limit equal to the model's
    vocabulary reuses the unlimited program, bit for bit), else an int in [1, vocab_size)."""
    if vocab_limit is None:
        return None
    if not is_integer(vocab_limit) or not 1 <= vocab_limit <= config.vocab_size:
        raise ConfigError(f"vocab_limit={vocab_limit!r} must be an int in [1, {config.vocab_size}] (the vocabulary "
                          f"of {config.name}), or None for no limit.")
    return None if vocab_limit == config.vocab_size else int(vocab_limit)


def vocab_limit_for(tokenizer: Any, model_vocab_size: int) -> int | None:
    """The `vocab_limit` that keeps decoding inside `tokenizer`: its vocab_size when smaller than
    the model's. Model vocabularies are padded above the tokenizer (a tiny run embeds 512 ids
    for 400 pieces, presets round 32000 up to 32768); untrained rows of the head can still win
    an argmax, and the tokenizer cannot decode them. None when the tokenizer does not say its
    size, or covers the whole model vocabulary (nothing to exclude)."""
    size = getattr(tokenizer, "vocab_size", None) if tokenizer is not None else None
    if size is None or int(size) >= model_vocab_size:
        return None
    return int(size)
