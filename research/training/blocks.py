"""Several train steps per compiled call: a `lax.scan` of the one pure train step.

A small model's step takes a few milliseconds of device time; calling it once per step
from Python adds dispatch, a host-to-device copy per batch and a metrics fetch per step,
which cost more than the step. A block runs up to `block_len` steps in one call over
batches stacked on a leading step axis, and returns every step's metrics stacked, so the
host touches the devices once per block. The block length is static, the number of steps
to run is not: steps past `num_steps` are skipped by a `lax.cond`, so one compiled program
serves every block (a short first block, the blocks cut at evaluation and checkpoint
steps, the last one), and blocked training is bit-identical to one step per call.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from research.models.config import ConfigError

Step = Callable[..., tuple[Any, dict[str, jax.Array]]]

MAX_AUTO_BLOCK = 128  # steps; beyond this the per-call overhead is already < 1%
AUTO_CALL_SECONDS = 0.2  # auto: aim for calls about this long (progress updates stay lively)
AUTO_MFU_GUESS = 0.3  # to estimate a step's seconds from its FLOPs and the measured peak
MAX_BLOCK_BYTES = 256 * 2**20  # auto: the stacked batches of one block stay below this


def make_block_step(step: Step) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """(state, batches [N, ...], num_steps, *args) -> (state, metrics [N]): `step(state, batch,
    *args)` applied to the first `num_steps` of the N stacked batches; later entries of the
    metrics are zeros."""

    def block_step(state, batches, num_steps, *args):
        def one(carry, index_and_batch):
            index, batch = index_and_batch
            metrics_shape = jax.eval_shape(step, carry, batch, *args)[1]

            def skip(carry, batch):
                return carry, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape)

            return jax.lax.cond(index < num_steps, lambda c, b: step(c, b, *args), skip, carry, batch)

        length = jax.tree.leaves(batches)[0].shape[0]
        return jax.lax.scan(one, state, (jnp.arange(length), batches))

    return block_step


def jit_block_step(block_step: Callable, state_shardings: Any, block_sharding: NamedSharding,
                   num_extra_args: int = 0):
    """Compiled once; the state's buffers are donated. Extra args (per-model hyperparameters)
    are replicated."""
    replicated = NamedSharding(block_sharding.mesh, PartitionSpec())
    return jax.jit(block_step, in_shardings=(state_shardings, block_sharding, replicated,
                                             *([replicated] * num_extra_args)),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def block_sharding(batch_sharding: NamedSharding, leading_axes: int = 1) -> NamedSharding:
    """The batch sharding behind `leading_axes` unsplit axes (the step axis, then the model axis)."""
    return NamedSharding(batch_sharding.mesh, PartitionSpec(*([None] * leading_axes), *batch_sharding.spec))


def auto_block_len(flops_per_step: float, peak_flops: float, batch_bytes: int) -> int:
    """Steps per call when the config says 0: enough that a call lasts ~AUTO_CALL_SECONDS at a
    guessed MFU (1 for a model whose step alone takes that long: large models are unaffected),
    at most MAX_AUTO_BLOCK, and with the block's batches under MAX_BLOCK_BYTES."""
    step_seconds = flops_per_step / max(peak_flops * AUTO_MFU_GUESS, 1.0)
    steps = int(AUTO_CALL_SECONDS / max(step_seconds, 1e-9))
    steps = min(steps, MAX_AUTO_BLOCK, MAX_BLOCK_BYTES // max(batch_bytes, 1))
    return max(1, steps)


def longest_block(num_steps: int, *every: int) -> int:
    """The most steps a block of the run can hold: blocks end at every multiple of `every`
    (evaluation, checkpoint steps), and none holds more than the run's num_steps, rounded up
    to a power of two so runs of different lengths still share one compiled block program."""
    return min(1 << max(num_steps - 1, 0).bit_length(), *(e for e in every if e > 0))


def resolve_block_len(steps_per_call: int, *, flops_per_step: float, peak_flops: float, batch_bytes: int,
                      longest_block: int | None = None) -> int:
    """The block length: steps_per_call, or auto_block_len's for 0, never above `longest_block`
    (the most steps any block of the run can hold: blocks end at evaluation and checkpoint steps).
    Every block's batches are stacked to the full length, so a length past what any block
    holds would only cost memory (steps_per_call=10**6 for an 8-step run: 8.9 GB)."""
    if steps_per_call < 0:
        raise ConfigError(f"train.steps_per_call={steps_per_call} must be >= 1, or 0 to choose it from the "
                          "model's FLOPs per step.")
    chosen = steps_per_call or auto_block_len(flops_per_step, peak_flops, batch_bytes)
    return max(1, min(chosen, longest_block)) if longest_block else chosen


def block_plan(start_step: int, end_step: int, block_len: int,
               is_boundary: Callable[[int], bool]) -> Iterator[int]:
    """Steps per call from start_step + 1 to end_step: a first call of one step (it compiles;
    the throughput clock starts after it, as it did with one step per call), then calls of
    up to block_len steps, each ending at the next boundary (evaluation, checkpoint) if
    one comes sooner."""
    step = start_step
    while step < end_step:
        n = 1 if step == start_step else min(block_len, end_step - step)
        for k in range(1, n + 1):
            if is_boundary(step + k):
                n = k
                break
        yield n
        step += n


def boundary_test(*every: int, end_step: int) -> Callable[[int], bool]:
    """Is `step` one where the host must act: a multiple of any of `every`, or the last step."""
    return lambda step: step == end_step or any(step % e == 0 for e in every)
