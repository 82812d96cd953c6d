"""Tokenized documents kept in memory after their first read: the same arrays, read once.

Why: small models train on small documents faster than the pipeline can read and tokenize
them. The emergence study's mixture (20k problems of 10-60 tokens, ~44 per batch) cost
24 ms of reading (array_record), decoding and SentencePiece per 16 x 128 batch, and a run
reads its corpus ~9 times; the scaling sweep's synthetic documents cost ~1.6 ms each to
generate and tokenize, and every run of a worker reads the same documents in the same
(seeded) order. Only the read + tokenize stage is cached: shuffling, the objective's
random examples and packing run as before, so every batch is bit-identical to an uncached
pipeline (tests/data/test_token_cache.py).

Two scopes:
  - per dataset (`shared_key=None`): the cache lives as long as the iterator that owns it.
    Right for files and TFDS, whose content may change between runs in one process (a
    notebook rewriting its data file), so nothing outlives the run.
  - process-wide (`shared_key`): for sources whose documents are a pure function of their
    config (the synthetic Markov corpus), shared by every run in the process with the same
    key; the last MAX_SHARED_CACHES keys are kept.

Each cache holds at most MAX_CACHED_TOKENS tokens (then it stops adding, so memory is
bounded and results never depend on it). Cached arrays are read-only, so a transform that
wrote into its input would fail loudly instead of corrupting later reads.
"""
from __future__ import annotations

import collections
import hashlib
import threading
from typing import Any, Callable, Hashable

import grain
import numpy as np

MAX_CACHED_TOKENS = 1 << 25  # 33.5M int32 tokens: 134 MB per cache at most
MAX_CACHED_DOCUMENTS = 1 << 20  # larger corpora (lm1b: 30M documents) are read once per epoch anyway
MAX_SHARED_CACHES = 4  # e.g. train and validation of two sources


class _TokenStore:
    """index -> read-only token array, up to MAX_CACHED_TOKENS tokens (thread-safe: grain
    reads with a pool of threads)."""

    def __init__(self):
        self._arrays: dict[int, np.ndarray] = {}
        self._tokens = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {}  # a copy in another process (grain's mp_prefetch) starts empty

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, index: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
        cached = self._arrays.get(index)
        if cached is not None:
            return cached
        tokens = np.asarray(compute())
        tokens.flags.writeable = False
        with self._lock:
            if self._tokens + tokens.size <= MAX_CACHED_TOKENS and index not in self._arrays:
                self._arrays[index] = tokens
                self._tokens += tokens.size
        return tokens


class RecentlyUsed:
    """The values of the last `capacity` keys used, each made by `make()` on first use
    (thread-safe); process-wide stores keep their memory bounded with it."""

    def __init__(self, capacity: int, make: Callable[[], Any]):
        self._capacity, self._make = capacity, make
        self._values: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._values.pop(key, None) or self._make()
            self._values[key] = value  # most recently used last
            while len(self._values) > self._capacity:
                self._values.popitem(last=False)
            return value

    def values(self) -> list[Any]:
        """Least recently used first."""
        with self._lock:
            return list(self._values.values())

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


_SHARED = RecentlyUsed(MAX_SHARED_CACHES, _TokenStore)


class _CachedTokens:
    """grain RandomAccessDataSource: element i is encode(documents[i]), computed once."""

    def __init__(self, documents: grain.MapDataset, encode: Callable[[str], np.ndarray], store: _TokenStore):
        self._documents, self._encode, self._store = documents, encode, store

    def __len__(self) -> int:
        return len(self._documents)

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        return self._store.get(index, lambda: self._encode(self._documents[index]))


def tokenizer_digest(tokenizer: Any) -> str:
    """A key for what a tokenizer does: the hash of its serialized model and extra ids."""
    state = tokenizer.__getstate__()
    return hashlib.sha256(state["proto"]).hexdigest()[:16] + f"+{state['num_extra_ids']}"


def caches(documents: grain.MapDataset) -> bool:
    """Whether cached_token_documents keeps these documents' tokens (small enough corpora)."""
    return len(documents) <= MAX_CACHED_DOCUMENTS


def cached_token_documents(documents: grain.MapDataset, encode: Callable[[str], np.ndarray], *,
                           shared_key: Hashable | None = None) -> grain.MapDataset:
    """`documents.map(encode)`, with each document encoded once (see the module docstring).
    Corpora of more than MAX_CACHED_DOCUMENTS documents are returned uncached."""
    if not caches(documents):
        return documents.map(encode)
    store = _TokenStore() if shared_key is None else _SHARED.get(shared_key)
    return grain.MapDataset.source(_CachedTokens(documents, encode, store))
