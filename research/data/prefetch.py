"""Batches for whole blocks of train steps, prepared on a background thread ahead of need.

The loop runs several steps per compiled call (research/training/blocks.py); each call
takes a block of batches stacked on a leading step axis, already on the devices. A
`BlockPrefetcher` pulls those batches from the host iterators (grain packing, the
synthetic source: pure Python, the slow part for small models), stacks and pads them to
the compiled block length, and transfers them with one device put per key, while the
devices run the previous block. JAX's compiled calls release the GIL, so on a machine
with a spare core the data is ready when the step needs it.

Exact resume needs the data position *at a block's end*, not where the prefetcher has
got to: each block carries the iterators' states taken right after its last batch, as
`IteratorPosition`s that research/training/checkpointing.py saves like the iterator itself.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np

Batch = dict[str, np.ndarray]


class IteratorPosition:
    """A grain iterator's state frozen at one moment; saved by grain's checkpoint handler
    (non-DatasetIterator items are asked for `get_state()` as bytes: the same JSON file)."""

    def __init__(self, state: dict[str, Any] | bytes):
        # A grain iterator's state is a dict; other checkpointable iterators give their bytes already.
        self._bytes = state if isinstance(state, bytes) else json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._bytes


@dataclasses.dataclass(frozen=True)
class Block:
    """`num_steps` batches (then zero padding) stacked as [block_len, (K,) B, ...] on device."""

    num_steps: int
    batches: Any
    positions: tuple[IteratorPosition, ...]  # one per source, after this block's last batch


def stack_block(per_step: Sequence[Sequence[Batch]], block_len: int, per_member: bool) -> Batch:
    """[step][source] host batches -> {key: [block_len, (K,) B, ...]}; steps past the data are zeros
    (the compiled block skips them). Without `per_member` there is one source and no K axis."""
    first = per_step[0]
    out = {}
    for key in first[0]:
        rows = [np.stack([b[key] for b in step]) if per_member else step[0][key] for step in per_step]
        block = np.zeros((block_len, *rows[0].shape), rows[0].dtype)
        block[:len(rows)] = rows
        out[key] = block
    return out


class BlockPrefetcher:
    """Iterator of `Block`s, one per entry of `block_steps`, built `depth` blocks ahead.

    sources: host batch iterators (one shared by every model, or one per model: then
    `per_member` stacks a model axis after the step axis). put: host block -> device block.
    """

    def __init__(self, sources: Sequence[Iterator[Batch]], block_steps: Sequence[int], block_len: int,
                 put: Callable[[Batch], Any], *, per_member: bool = False, depth: int = 2):
        self._sources, self._steps, self._block_len = list(sources), tuple(block_steps), block_len
        self._remaining = len(self._steps)
        self._put, self._per_member = put, per_member
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="block-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            given = 0  # steps whose batches every source has given
            for n in self._steps:
                per_step = []
                for _ in range(n):
                    try:
                        per_step.append([next(source) for source in self._sources])
                    except StopIteration:
                        # Raised from __next__, a StopIteration would end the consumer's for loop as
                        # if the plan were done: training would stop early, silently, unsaved.
                        raise RuntimeError(
                            f"a data source ran out after {given} batches, but the training plan needs "
                            f"{sum(self._steps)}; train from a source that repeats (num_epochs=None).") from None
                    given += 1
                positions = tuple(IteratorPosition(source.get_state()) for source in self._sources)
                block = Block(n, self._put(stack_block(per_step, self._block_len, self._per_member)), positions)
                while not self._stop.is_set():
                    try:
                        self._queue.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer, raised there
            self._queue.put(error)

    def __iter__(self) -> "BlockPrefetcher":
        return self

    def __next__(self) -> Block:
        if not self._remaining:
            raise StopIteration
        self._remaining -= 1
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the producer (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
