"""The train loop's evaluation: the same validation batches every time, several per compiled call.

A small model's forward pass on one batch takes a few milliseconds; called once per batch
it paid about as much again in Python (a device put per key, a dispatch, a blocking fetch):
the scaling sweep scores each run on 800 batches. Here up to EVAL_BLOCK_LEN batches are
stacked on a leading axis and evaluated by a `lax.map` of the one eval step inside one call,
every batch's sums are fetched once at the end, and they are added on the host in float64 in
batch order, as before: the figures are those of one call per batch
(tests/training/test_evaluation.py).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from research.data.prefetch import stack_block
from research.training import blocks, partitioning

EVAL_BLOCK_LEN = 64  # batches per call at most
MAX_EVAL_BLOCK_BYTES = 64 * 2**20  # and the stacked batches of one call below this
_SUMS = ("loss_sum", "correct_sum", "num_tokens")
log = logging.getLogger(__name__)


def eval_block_len(num_batches: int, batch_bytes: int) -> int:
    """Batches per call: all of them up to EVAL_BLOCK_LEN, fewer for large batches."""
    return max(1, min(EVAL_BLOCK_LEN, num_batches, MAX_EVAL_BLOCK_BYTES // max(batch_bytes, 1)))


def _rows_every_process_has(count: int) -> int:
    """`count` on one process; on several the smallest any of them has (a collective: every
    process calls it in turn), since their shards of the split end apart."""
    if jax.process_count() == 1:
        return count
    from jax.experimental import multihost_utils
    return int(np.min(multihost_utils.process_allgather(np.int32(count))))


def make_evaluation(eval_fn: Callable, params_shardings: Any, batch_sharding: NamedSharding,
                    batches: Callable[[], list], num_batches: int, num_models: int, *,
                    per_member: bool, batch_bytes: int) -> Callable[[Any], list[dict]]:
    """params -> [per model: eval_loss (nats), eval_perplexity, eval_accuracy] over the same
    num_batches validation batches every time. `eval_fn(params, batch)` gives token-weighted
    sums (research.training.train_step.make_eval_step, or its map over K models); `batches()`
    gives fresh validation iterators: one, or with `per_member` one per model, whose batches
    are stacked on a model axis (as the train blocks', research/data/prefetch.stack_block).
    Iterators of one epoch end the evaluation early when the split holds fewer batches (one
    warning): the scaling preset stdlib_tiny asked 800 of a split of 779 and averaged 21
    batches of a reshuffled second epoch into every eval_loss. On several processes, each
    reading its own shard, all stop at the batch where the shortest shard ends."""
    block_len = eval_block_len(num_batches, batch_bytes)
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    block_sharding = blocks.block_sharding(batch_sharding, 1)

    def eval_block(params, stacked):
        return jax.lax.map(lambda batch: eval_fn(params, batch), stacked)

    compiled = jax.jit(eval_block, in_shardings=(params_shardings, block_sharding), out_shardings=replicated)

    warned = []

    def run(params) -> list[dict[str, float]]:
        iterators = batches()
        pending = []  # (batches in the call, its device outputs): fetched after the last call
        for first in range(0, num_batches, block_len):
            rows, wanted = [], min(block_len, num_batches - first)
            for _ in range(wanted):
                try:
                    rows.append([next(it) for it in iterators])
                except StopIteration:  # one epoch of the validation split is all it holds: each row once
                    break
            rows = rows[:_rows_every_process_has(len(rows))]  # processes stopping apart would hang
            if rows:  # zero batches past the data fill the last call; their sums are not added
                block = stack_block(rows, block_len, per_member)
                pending.append((len(rows), compiled(params, partitioning.shard_batch(block, block_sharding))))
            if len(rows) < wanted:
                if not warned:
                    warned.append(True)
                    log.warning("train.eval_batches=%d is more than the validation split holds (%d batches): each "
                                "evaluation scores those, every row once (a second, reshuffled epoch was averaged "
                                "in before 2026-12-07); set train.eval_batches=%d or fewer to silence this.",
                                num_batches, first + len(rows), first + len(rows))
                break
        sums = {k: np.zeros(num_models) for k in _SUMS}
        for count, outputs in pending:
            host = jax.device_get(outputs)
            for i in range(count):  # batch by batch, in float64, as one call per batch added them
                for k in _SUMS:
                    sums[k] = sums[k] + np.reshape(np.asarray(host[k][i], np.float64), -1)
        results = []
        for i in range(num_models):
            n = max(float(sums["num_tokens"][i]), 1.0)
            loss = float(sums["loss_sum"][i]) / n
            results.append({"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
                            "eval_accuracy": float(sums["correct_sum"][i]) / n})
        return results

    return run
