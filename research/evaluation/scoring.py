"""Batched, jitted token scoring for the three model families.

Rows of different lengths are sorted by length, cut into batches of exactly
`batch_size` rows (the last one filled with empty rows), and right-padded to a bucket
length: a power of two of at least `min_bucket`, capped at the model's context. So a
whole evaluation compiles each kernel for a handful of [batch_size, bucket] shapes
instead of once per example. Padding carries segment id 0, which the models mask.

Each kernel returns, per scored position, the target's log-probability (float32), whether
the target is the argmax, and the multi-class Brier score of the next-token distribution
(1 - 2 p_target + sum_v p_v^2). Log-probabilities and Brier scores are over the model's full
(padded) vocabulary; the argmax, with `vocab_limit`, over the ids below it, the ones greedy
generation may pick (harness.Harness.vocab_limit), so a token counted right under teacher
forcing is the one generation would write.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.evaluation.requests import ScoredRow

Array = jax.Array


class TokenStats(NamedTuple):
    """Scores of the scored positions of one row, each [N]."""

    log_probs: np.ndarray
    is_greedy: np.ndarray
    brier: np.ndarray


def bucket_length(n: int, max_len: int, min_bucket: int = 16) -> int:
    """Padded length for a row of n tokens: the next power of two >= max(n, min_bucket), capped at max_len."""
    assert 0 < n <= max_len, (n, max_len)
    return min(max_len, max(min_bucket, 1 << (n - 1).bit_length()))


def _token_stats(logits_BTV: Array, targets_BT: Array, vocab_limit: int | None) -> tuple[Array, Array, Array]:
    log_probs_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    target_BT = jnp.take_along_axis(log_probs_BTV, targets_BT[..., None], axis=-1)[..., 0]
    # The argmax among the ids generation may write: a padded id (no tokenizer piece) that
    # outscores the gold token made it "wrong" here while generation, which never picks a
    # padded id, wrote it.
    greedy_BT = jnp.argmax(log_probs_BTV[..., :vocab_limit], axis=-1) == targets_BT
    brier_BT = 1.0 - 2.0 * jnp.exp(target_BT) + jnp.sum(jnp.exp(2.0 * log_probs_BTV), axis=-1)
    return target_BT, greedy_BT, brier_BT


def _end_stats(logits_BTV: Array, end_mask_V: Array, vocab_limit: int | None) -> tuple[Array, Array]:
    """At every position: log of the next-token mass on the ids of end_mask_V, and whether the
    argmax below vocab_limit is one of them."""
    log_probs_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    end_BT = jax.nn.logsumexp(jnp.where(end_mask_V, log_probs_BTV, -jnp.inf), axis=-1)
    return end_BT, end_mask_V[jnp.argmax(log_probs_BTV[..., :vocab_limit], axis=-1)]


def _stats(logits_BTV: Array, targets_BT: Array, end_mask_V: Array | None, vocab_limit: int | None) -> tuple:
    stats = _token_stats(logits_BTV, targets_BT, vocab_limit)
    return stats if end_mask_V is None else (*stats, *_end_stats(logits_BTV, end_mask_V, vocab_limit))


@functools.partial(jax.jit, static_argnames=("model", "vocab_limit"))
def decoder_token_stats(params: Any, tokens_BT: Array, segment_ids_BT: Array, targets_BT: Array,
                        end_mask_V: Array | None = None, prefix_BT: Array | None = None, *, model: nn.Module,
                        vocab_limit: int | None = None) -> tuple:
    """Causal LM: stats of targets_BT[b, t] given tokens_BT[b, :t+1] (right-padded rows), and
    with end_mask_V the _end_stats of every position too. With prefix_BT (1 on each row's
    prefix-LM prefix), the prefix tokens attend each other both ways, as the training loss
    feeds them (research.training.losses: prefix_mask_BT)."""
    options = {} if prefix_BT is None else dict(prefix_mask_BT=prefix_BT)
    logits_BTV = model.apply({"params": params}, tokens_BT, segment_ids_BT=segment_ids_BT, **options)
    return _stats(logits_BTV, targets_BT, end_mask_V, vocab_limit)


@functools.partial(jax.jit, static_argnames=("model", "vocab_limit"))
def seq2seq_token_stats(params: Any, source_BS: Array, source_segment_ids_BS: Array, decoder_inputs_BT: Array,
                        target_segment_ids_BT: Array, targets_BT: Array, end_mask_V: Array | None = None, *,
                        model: nn.Module, vocab_limit: int | None = None) -> tuple:
    """Encoder-decoder: stats of targets_BT given the source and the shifted targets (and with
    end_mask_V the _end_stats of every position)."""
    logits_BTV = model.apply({"params": params}, source_BS, decoder_inputs_BT,
                             encoder_segment_ids_BS=source_segment_ids_BS,
                             decoder_segment_ids_BT=target_segment_ids_BT)
    return _stats(logits_BTV, targets_BT, end_mask_V, vocab_limit)


@functools.partial(jax.jit, static_argnames=("model", "vocab_limit"))
def masked_token_stats(params: Any, tokens_BT: Array, segment_ids_BT: Array, masked_position_B: Array,
                       targets_B: Array, *, model: nn.Module,
                       vocab_limit: int | None = None) -> tuple[Array, Array, Array]:
    """Masked LM: stats of targets_B at the one masked position of each row."""
    logits_BTV = model.apply({"params": params}, tokens_BT, segment_ids_BT=segment_ids_BT)
    logits_BV = jnp.take_along_axis(logits_BTV, masked_position_B[:, None, None], axis=1)[:, 0]
    stats = _token_stats(logits_BV[:, None], targets_B[:, None], vocab_limit)
    return tuple(s[:, 0] for s in stats)


@functools.partial(jax.jit, static_argnames=("model",))
def class_log_probs(params: Any, tokens_BT: Array, segment_ids_BT: Array, *, model: nn.Module) -> Array:
    """Sequence classifier: log-softmax of the class logits, [B, C] float32."""
    logits_BC = model.apply({"params": params}, tokens_BT, segment_ids_BT=segment_ids_BT, method="classify")
    return jax.nn.log_softmax(logits_BC.astype(jnp.float32), axis=-1)


def _batches(lengths: Sequence[int], batch_size: int):
    """Index lists of batch_size rows, longest first, so each batch's bucket is tight."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _right_pad(seqs: Sequence[np.ndarray], batch: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """[batch, width] ids and segment ids (1 real, 0 padding); missing rows are all padding."""
    ids = np.zeros((batch, width), np.int32)
    segments = np.zeros((batch, width), np.int32)
    for r, seq in enumerate(seqs):
        ids[r, :len(seq)] = seq
        segments[r, :len(seq)] = 1
    return ids, segments


def score_decoder_rows(model: nn.Module, params: Any, rows: Sequence[ScoredRow], *, batch_size: int,
                       max_len: int, min_bucket: int, vocab_limit: int | None = None) -> list[TokenStats]:
    """TokenStats of the last `num_scored` targets of every row (inputs tokens[:-1] <= max_len);
    is_greedy among the ids below vocab_limit (None: every id)."""
    return [stats for stats, _ in _decoder_rows(model, params, rows, None, batch_size, max_len, min_bucket,
                                                vocab_limit)]


def score_decoder_rows_and_ends(model: nn.Module, params: Any, rows: Sequence[ScoredRow], end_mask: np.ndarray | None,
                                *, batch_size: int, max_len: int, min_bucket: int, vocab_limit: int | None = None,
                                bidirectional_prefix: bool = False
                                ) -> list[tuple[TokenStats, tuple[float, bool] | None]]:
    """With end_mask, score_decoder_rows of rows whose last target is a placeholder after the
    continuation: TokenStats of the num_scored - 1 targets before it, and (log P(next token in
    end_mask), whether the argmax below vocab_limit is) at the placeholder's position: the
    decision after the continuation, from the continuation's own forward pass. Without it,
    (score_decoder_rows' TokenStats, None). bidirectional_prefix (a prefix-LM decoder): each
    row's inputs before its scored targets (the context) attend each other both ways."""
    return _decoder_rows(model, params, rows, end_mask, batch_size, max_len, min_bucket, vocab_limit,
                         bidirectional_prefix)


def _decoder_rows(model, params, rows, end_mask, batch_size, max_len, min_bucket, vocab_limit, bidirectional=False):
    """(TokenStats, end) of each row: end None without end_mask, else read at its last target,
    which is then left out of the TokenStats."""
    out: list = [None] * len(rows)
    mask = None if end_mask is None else jnp.asarray(end_mask)
    for chunk in _batches([len(r.tokens) - 1 for r in rows], batch_size):
        width = bucket_length(max(len(rows[i].tokens) - 1 for i in chunk), max_len, min_bucket)
        inputs, segments = _right_pad([rows[i].tokens[:-1] for i in chunk], batch_size, width)
        targets, _ = _right_pad([rows[i].tokens[1:] for i in chunk], batch_size, width)
        prefix = None
        if bidirectional:
            # Per row, as data.objectives.prefix_lm_example marks it: 1 on the first
            # len(tokens) - num_scored inputs (the context), whose last predicts the first scored token.
            _, prefix = _right_pad([rows[i].tokens[:len(rows[i].tokens) - rows[i].num_scored] for i in chunk],
                                   batch_size, width)
        stats = jax.device_get(decoder_token_stats(params, inputs, segments, targets, mask, prefix, model=model,
                                                   vocab_limit=vocab_limit))
        for r, i in enumerate(chunk):
            n, k = len(rows[i].tokens) - 1, rows[i].num_scored
            out[i] = _row_result(stats, r, n - k, n, end_mask is not None)
    return out


def _row_result(stats: Sequence[np.ndarray], r: int, first: int, stop: int, with_end: bool):
    """Row r's (TokenStats over positions [first, stop), None) or, with_end, (TokenStats over
    [first, stop - 1), its end stats at stop - 1)."""
    if not with_end:
        return TokenStats(*(np.asarray(x[r, first:stop]) for x in stats[:3])), None
    end, greedy = stats[3], stats[4]
    return (TokenStats(*(np.asarray(x[r, first:stop - 1]) for x in stats[:3])),
            (float(end[r, stop - 1]), bool(greedy[r, stop - 1])))


def score_seq2seq_rows(model: nn.Module, params: Any, pairs: Sequence[tuple[np.ndarray, np.ndarray]], *,
                       batch_size: int, max_len: int, min_bucket: int,
                       vocab_limit: int | None = None) -> list[TokenStats]:
    """TokenStats of every target token of (source ids, target ids) pairs; decoding starts
    from config.decoder_start_token_id, as in teacher-forced training."""
    return [stats for stats, _ in _seq2seq_rows(model, params, pairs, None, batch_size, max_len, min_bucket,
                                                vocab_limit)]


def score_seq2seq_rows_and_ends(model: nn.Module, params: Any, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                                end_mask: np.ndarray | None, *, batch_size: int, max_len: int, min_bucket: int,
                                vocab_limit: int | None = None) -> list[tuple[TokenStats, tuple[float, bool] | None]]:
    """score_decoder_rows_and_ends for (source ids, target ids + placeholder) pairs."""
    return _seq2seq_rows(model, params, pairs, end_mask, batch_size, max_len, min_bucket, vocab_limit)


def _seq2seq_rows(model, params, pairs, end_mask, batch_size, max_len, min_bucket, vocab_limit):
    """(TokenStats, end) of each pair, as _decoder_rows."""
    start = model.config.decoder_start_token_id
    out: list = [None] * len(pairs)
    mask = None if end_mask is None else jnp.asarray(end_mask)
    for chunk in _batches([len(s) + len(t) for s, t in pairs], batch_size):
        source_width = bucket_length(max(len(pairs[i][0]) for i in chunk), max_len, min_bucket)
        target_width = bucket_length(max(len(pairs[i][1]) for i in chunk), max_len, min_bucket)
        source, source_segments = _right_pad([pairs[i][0] for i in chunk], batch_size, source_width)
        targets, target_segments = _right_pad([pairs[i][1] for i in chunk], batch_size, target_width)
        shifted = [np.concatenate([[start], pairs[i][1][:-1]]).astype(np.int32) for i in chunk]
        decoder_inputs, _ = _right_pad(shifted, batch_size, target_width)
        stats = jax.device_get(seq2seq_token_stats(params, source, source_segments, decoder_inputs, target_segments,
                                                   targets, mask, model=model, vocab_limit=vocab_limit))
        for r, i in enumerate(chunk):
            out[i] = _row_result(stats, r, 0, len(pairs[i][1]), end_mask is not None)
    return out


def score_masked_rows(model: nn.Module, params: Any, rows: Sequence[tuple[np.ndarray, int, int]], *,
                      batch_size: int, max_len: int, min_bucket: int,
                      vocab_limit: int | None = None) -> list[TokenStats]:
    """TokenStats (one position each) of (masked ids, masked position, true token) rows."""
    out: list[TokenStats | None] = [None] * len(rows)
    for chunk in _batches([len(r[0]) for r in rows], batch_size):
        width = bucket_length(max(len(rows[i][0]) for i in chunk), max_len, min_bucket)
        tokens, segments = _right_pad([rows[i][0] for i in chunk], batch_size, width)
        positions = np.zeros((batch_size,), np.int32)
        targets = np.zeros((batch_size,), np.int32)
        for r, i in enumerate(chunk):
            positions[r], targets[r] = rows[i][1], rows[i][2]
        stats = jax.device_get(masked_token_stats(params, tokens, segments, positions, targets, model=model,
                                                  vocab_limit=vocab_limit))
        for r, i in enumerate(chunk):
            out[i] = TokenStats(*(np.asarray(s[r:r + 1]) for s in stats))
    return out


def classify_rows(model: nn.Module, params: Any, rows: Sequence[np.ndarray], *, batch_size: int, max_len: int,
                  min_bucket: int) -> list[np.ndarray]:
    """Class log-probabilities [C] of each token row."""
    out: list[np.ndarray | None] = [None] * len(rows)
    for chunk in _batches([len(r) for r in rows], batch_size):
        width = bucket_length(max(len(rows[i]) for i in chunk), max_len, min_bucket)
        tokens, segments = _right_pad([rows[i] for i in chunk], batch_size, width)
        log_probs = np.asarray(jax.device_get(class_log_probs(params, tokens, segments, model=model)))
        for r, i in enumerate(chunk):
            out[i] = log_probs[r]
    return out


def compiled_shapes(kernel: Callable) -> int:
    """How many shapes a kernel above has compiled in this process (for tests and logs)."""
    return kernel._cache_size()
