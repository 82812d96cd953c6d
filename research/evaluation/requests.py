"""Request and result types of the harness, with lm-evaluation-harness semantics, and the
token-level bookkeeping that turns a request into scored token rows.

Three requests (lm-eval's `loglikelihood`, `loglikelihood_rolling`, `generate_until`):

    LoglikelihoodRequest(context, continuation) -> LoglikelihoodResult: log p(continuation | context)
        summed over the continuation's tokens, and is_greedy (every continuation token is
        the argmax of its next-token distribution).
    RollingRequest(text) -> RollingResult: log p(text), scored in windows of at most the
        model's context when the text is longer (`rolling_windows`).
    GenerateRequest(context, until, max_new_tokens) -> GenerateResult: greedy continuation,
        cut before the first stop string.

A "row" is one sequence the model scores: `ScoredRow(tokens, num_scored)` means feed
tokens[:-1] and score the last `num_scored` next-token predictions (targets tokens[1:]).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np

from research.models.config import ConfigError


@dataclasses.dataclass(frozen=True)
class LoglikelihoodRequest:
    """log p(continuation | context). With end_until (stop strings, as GenerateRequest.until),
    also the decision to end right after the continuation: the next token is one that
    generate_until stops on (eos, or a stop string that is one token)."""

    context: str
    continuation: str
    end_until: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class RollingRequest:
    text: str


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    context: str
    until: tuple[str, ...] = ()  # stop strings; the output is cut before the first one
    max_new_tokens: int = 32


@dataclasses.dataclass(frozen=True)
class LoglikelihoodResult:
    """Per-token arrays cover the continuation's N tokens.

    log_prob: sum of token_log_probs (nats). is_greedy: all(token_is_greedy). tokens: the N
    continuation ids scored.
    token_brier: multi-class Brier score of each next-token distribution against the
    continuation token, sum_v (p_v - [v = target])^2 = 1 - 2 p_target + sum_v p_v^2, in [0, 2].
    """

    log_prob: float
    is_greedy: bool
    token_log_probs: np.ndarray  # [N] float32
    token_is_greedy: np.ndarray  # [N] bool
    token_brier: np.ndarray  # [N] float32
    truncated: bool = False  # the context was cut from the left to fit the model
    # The continuation's N scored ids, as tokenized in context (encode_pair): which of them
    # are a task's delimiter and which its answer is only known from the ids (evaluator).
    tokens: tuple[int, ...] = ()
    # With the request's end_until (None without): log of the next-token probability mass on
    # the ids generation stops on, and whether the greedy next token is one of them.
    end_log_prob: float | None = None
    end_is_greedy: bool | None = None


@dataclasses.dataclass(frozen=True)
class RollingResult:
    """log_prob of the whole text (nats) and the log-prob of each of its N tokens."""

    log_prob: float
    token_log_probs: np.ndarray  # [N]
    num_windows: int


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    text: str  # generated text, cut before the first stop string (and before eos)
    tokens: tuple[int, ...]  # the generated ids that produced `text`'s prefix, eos excluded
    truncated: bool = False


class ScoredRow(NamedTuple):
    tokens: np.ndarray  # [n] int32: inputs are tokens[:-1], targets tokens[1:]
    num_scored: int  # the last num_scored targets are scored


def as_ids(ids: Sequence[int] | np.ndarray) -> list[int]:
    """Token ids from a tokenizer (list or array) as a list of Python ints."""
    return [int(i) for i in np.asarray(ids).reshape(-1)]


def encode_pair(tokenizer, context: str, continuation: str, prefix_token: int, *, joint: bool = True,
                encode_context: Callable[[str], Sequence[int]] | None = None) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), tokenized as lm-eval does.

    Trailing whitespace of the context moves to the continuation. The context is encoded
    with `encode_context` (default tokenizer.encode; the harness passes the tokenizer's
    encode_context, which adds special tokens such as Llama's <s> or T5's </s> as lm-eval's
    hf model does), the continuation alone with tokenizer.encode (no special tokens).
    joint=True (causal models): the pair is encoded as one string with encode_context and
    the continuation is what follows the context's own encoding, so a subword that merges
    across the boundary is scored as part of the continuation. joint=False
    (encoder-decoder): the parts are encoded separately. An empty context becomes
    [prefix_token] (tokenizer_loading.prefix_token), so the first continuation token has something to be
    predicted from; a continuation that itself opens with prefix_token gives that token up
    as the context instead (lm-eval's rule).
    """
    encode_context = tokenizer.encode if encode_context is None else encode_context
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    context = stripped
    if not continuation:
        raise ConfigError(f"empty continuation for context {context[-40:]!r}; a loglikelihood request "
                          "needs at least one character to score.")
    if not context:
        continuation_ids = as_ids(tokenizer.encode(continuation))
        if continuation_ids[:1] == [prefix_token]:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix_token], continuation_ids
    if not joint:
        return as_ids(encode_context(context)), as_ids(tokenizer.encode(continuation))
    whole = as_ids(encode_context(context + continuation))
    context_ids = as_ids(encode_context(context))
    # lm-eval's rule even where the tokenizer merged across the boundary ("hel" + "lo world"):
    # the continuation is whatever follows len(context ids) in the joint encoding (scoring the
    # parts separately gave -23.42 where lm-eval's HFLM gives -11.35).
    continuation_ids = whole[len(context_ids):]
    if not continuation_ids:  # the merge swallowed it: nothing would be scored
        return context_ids, as_ids(tokenizer.encode(continuation))
    return context_ids, continuation_ids


def conditional_row(context_ids: Sequence[int], continuation_ids: Sequence[int],
                    max_len: int) -> tuple[ScoredRow, bool]:
    """The decoder row scoring `continuation_ids` after `context_ids`, left-truncated so the
    model sees at most `max_len` inputs -> (row, whether context was cut).

    Left truncation (lm-eval's behaviour) keeps the tokens nearest the continuation; a
    continuation longer than max_len cannot be scored in one pass and is an error.
    """
    if not continuation_ids:
        raise ConfigError("the continuation encodes to no tokens; give a non-empty continuation.")
    if len(continuation_ids) > max_len:
        raise ConfigError(f"continuation of {len(continuation_ids)} tokens exceeds the model context of "
                          f"{max_len}; shorten it or score it as a rolling (perplexity) request.")
    full = list(context_ids) + list(continuation_ids)
    truncated = len(full) - 1 > max_len
    full = full[-(max_len + 1):]
    return ScoredRow(np.asarray(full, np.int32), len(continuation_ids)), truncated


def rolling_windows(token_ids: Sequence[int], max_len: int, prefix_token: int,
                    context_len: int = 1) -> list[ScoredRow]:
    """Rows that score every token of a text exactly once, each row at most `max_len` inputs.

    lm-eval's rolling-window semantics (get_rolling_token_windows + make_disjoint_window):
    the first window predicts the first min(max_len, N) tokens from [prefix_token] + text;
    each later window predicts the next up to max_len - context_len + 1 tokens, conditioned
    on the max_len tokens before its last target (so on at least `context_len` tokens of
    earlier text). context_len=1 gives disjoint windows that each see only the previous
    window's last token, lm-eval's default; larger values trade compute for context.

    No tokens (an empty text, from a tokenizer that adds no bos) give no windows, which score
    log p 0, as lm-eval's hf model scores them. Refusing it failed a suite at that document,
    after earlier tasks had run.
    """
    n = len(token_ids)
    if not 1 <= context_len <= max_len:
        raise ConfigError(f"context_len={context_len} must be in [1, max_len={max_len}].")
    if n == 0:
        return []
    tokens = np.asarray(token_ids, np.int32)
    first = min(max_len, n)
    rows = [ScoredRow(np.concatenate([np.asarray([prefix_token], np.int32), tokens[:first]]), first)]
    predicted, stride = first, max_len - context_len + 1
    while predicted < n:
        num_scored = min(n - predicted, stride)
        end = predicted + num_scored
        # Inputs tokens[end - max_len - 1 : end - 1] predict tokens[end - max_len : end];
        # end > max_len here because the first window already took max_len tokens.
        rows.append(ScoredRow(tokens[end - max_len - 1:end], num_scored))
        predicted = end
    return rows


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            index = text.find(stop)
            if index != -1:
                cut = min(cut, index)
    return text[:cut]
