"""Batch streams computed once per process and replayed: for sources that are pure functions
of their config (the synthetic Markov corpus).

Why: every run of a scaling-sweep worker reads the same synthetic documents in the same seeded
order, so its batches are a prefix of one stream, and each evaluation reads the same validation
batches again. Packing them costs ~2.6-3.4 ms of CPU per 16 x 64 batch (grain's first-fit
packing, per element) beside an 18 ms step of a sweep model pinned to one core; the token
cache (token_cache.py) already saves the documents' generation, this saves the rest.

A `ReplayIterator` is a grain `DatasetIterator` over one stream: batch n is read from the
stream when some iterator of the same key has computed it, else computed by its own iterator
of the real pipeline (moved to position n with grain's own set_state) and appended. Its
states are the real pipeline's states at the same position, so checkpoints are
interchangeable with an uncached run's; a state it has not seen (a resume in a new process)
makes it follow a real iterator from there, uncached. Batches are stored compactly (the
smallest unsigned integer type holding each array's values exactly) and returned as fresh
arrays of their own dtype: bit-identical to the pipeline's (tests/data/test_batch_replay.py).
At most MAX_REPLAY_BYTES are stored per process; past that a stream stops growing and its
iterators read on from the real pipeline.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Hashable

import grain
import numpy as np

from research.data.token_cache import RecentlyUsed

MAX_REPLAY_BYTES = 1 << 28  # 256 MB of stored batches in all (a 16 x 64 causal batch: ~5 KB)
MAX_STREAMS = 4  # e.g. train with two seeds and validation

Batch = dict[str, np.ndarray]
_Compact = tuple[tuple[str, np.dtype, np.ndarray], ...]


def _compact(batch: Batch) -> _Compact:
    """Each array as the smallest unsigned type holding its values exactly (else as it is)."""
    out = []
    for key, value in batch.items():
        stored = value
        for small in (np.uint8, np.uint16):
            candidate = value.astype(small)
            if np.array_equal(candidate.astype(value.dtype), value):
                stored = candidate
                break
        stored = stored.copy() if stored is value else stored
        stored.flags.writeable = False
        out.append((key, value.dtype, stored))
    return tuple(out)


def _expand(compact: _Compact) -> Batch:
    return {key: stored.astype(dtype) for key, dtype, stored in compact}


def _state_key(state: dict[str, Any]) -> str:
    return json.dumps(state, sort_keys=True)


class _Stream:
    """One key's batches in order, with the pipeline's state after each (thread-safe: a
    prefetch thread and the main thread may read different iterators of one stream)."""

    def __init__(self):
        self.batches: list[_Compact] = []
        self.states: list[str] = []  # JSON of the state after batches[i]
        self.initial: str | None = None  # JSON of the state before any batch (set by the first iterator)
        self.positions: dict[str, int] = {}  # state key -> position (batches read)
        self.nbytes = 0
        self.lock = threading.Lock()

    def append(self, position: int, batch: Batch, state: dict[str, Any]) -> None:
        """Store batch number `position` (0-based) if it is the next one and there is room."""
        compact = _compact(batch)
        size = sum(stored.nbytes for _, _, stored in compact)
        with self.lock:
            # An evicted stream (more live keys than MAX_STREAMS: train_together with many seeds)
            # stops growing: _total_bytes() no longer counts it, so its growth escaped the bound.
            if position != len(self.batches) or not _is_kept(self) or _total_bytes() + size > MAX_REPLAY_BYTES:
                return
            self.batches.append(compact)
            self.states.append(json.dumps(state))
            self.positions.setdefault(_state_key(state), position + 1)
            self.nbytes += size


_STREAMS = RecentlyUsed(MAX_STREAMS, _Stream)


def _total_bytes() -> int:
    return sum(stream.nbytes for stream in _STREAMS.values())


def _is_kept(stream: _Stream) -> bool:
    """Whether `stream` is still one of the MAX_STREAMS kept (not evicted by newer keys)."""
    return any(kept is stream for kept in _STREAMS.values())


def clear() -> None:
    """Forget every stored stream (tests; a notebook that wants its memory back)."""
    _STREAMS.clear()


class ReplayIterator(grain.DatasetIterator):
    """The batches of `source` (a fresh iterator of the real pipeline), read from the stream
    stored under `key` where it has them (see the module docstring). `key` must name
    everything the batches depend on."""

    def __init__(self, source: grain.DatasetIterator, key: Hashable):
        super().__init__()
        self._source, self._stream = source, _STREAMS.get(key)
        self._position = 0  # batches read
        self._source_position = 0  # where the source is in the stream (-1: elsewhere)
        self._following = False  # restored to a state the stream has not seen: source only
        with self._stream.lock:
            if self._stream.initial is None:
                initial = source.get_state()
                self._stream.initial = json.dumps(initial)
                self._stream.positions[_state_key(initial)] = 0

    def _source_at(self, position: int) -> grain.DatasetIterator:
        """The real iterator, moved to `position` (which the stream has the state of)."""
        if self._source_position != position:
            with self._stream.lock:
                state = self._stream.initial if position == 0 else self._stream.states[position - 1]
            self._source.set_state(json.loads(state))
            self._source_position = position
        return self._source

    def __next__(self) -> Batch:
        if self._following:
            return next(self._source)
        stream, position = self._stream, self._position
        with stream.lock:
            stored = stream.batches[position] if position < len(stream.batches) else None
        if stored is not None:
            self._position += 1
            return _expand(stored)
        source = self._source_at(position)
        batch = next(source)
        self._source_position = self._position = position + 1
        stream.append(position, batch, source.get_state())
        return batch

    def get_state(self) -> dict[str, Any]:
        if self._following:
            return self._source.get_state()
        with self._stream.lock:
            if self._position <= len(self._stream.states):
                return json.loads(self._stream.states[self._position - 1] if self._position
                                  else self._stream.initial)
        return self._source.get_state()  # past the stored batches the source is where this iterator is

    def set_state(self, state: dict[str, Any]) -> None:
        with self._stream.lock:
            position = self._stream.positions.get(_state_key(state))
        if position is not None:
            self._position, self._following = position, False
            return
        self._source.set_state(state)
        self._following, self._source_position = True, -1

    def close(self) -> None:
        self._source.close()
        super().close()
