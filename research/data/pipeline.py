"""grain pipelines: documents -> tokens -> objective examples -> packed rows -> batches.

    documents (MapDataset[str], one shard: docs[shard_index::shard_count])
      .map(tokenize) .shuffle(seed) .repeat(num_epochs)   new order every epoch
      .random_map(objective.examples)                     rng seeded by (seed, index): exact resume
      .to_iter_dataset()  flat_map(windows)
      FirstFitPackIterDataset                             grain's packing: segment ids 1, 2, .. per
                                                          example, 0 on padding; positions restart
      .map(to_batch_row) .batch(batch_size)

Every stage is a grain dataset, so `iter(dataset)` is a checkpointable `DatasetIterator`
whose `get_state()` is a small JSON-able dict (indices, not data) and `set_state(state)`
resumes at exactly the same batch.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import grain
import grain.experimental as grain_exp
import numpy as np

from research.data.batch_replay import ReplayIterator
from research.data.config import DataConfig, DataError
from research.data.objectives import Example, Objective, ObjectiveName, get_objective
from research.data.sources import document_source
from research.data.token_cache import cached_token_documents, caches, tokenizer_digest
from research.data.tokenizer import SpecialTokens, Tokenizer

Batch = dict[str, np.ndarray]

# Packed feature -> batch key, for each family. Segment ids / positions of the encoder come
# from encoder_inputs, of the decoder from decoder_targets (grain packs each feature alike).
_DECODER_KEYS = {"inputs": "inputs", "targets": "targets", "inputs_segment_ids": "segment_ids",
                 "inputs_positions": "positions", "loss_weights": "loss_weights"}
_ENCODER_DECODER_KEYS = {
    "encoder_inputs": "encoder_inputs", "encoder_inputs_segment_ids": "encoder_segment_ids",
    "encoder_inputs_positions": "encoder_positions", "decoder_inputs": "decoder_inputs",
    "decoder_targets": "decoder_targets", "decoder_targets_segment_ids": "decoder_segment_ids",
    "decoder_targets_positions": "decoder_positions", "loss_weights": "loss_weights",
}


class _ObjectiveExamples(grain.transforms.RandomMap):
    """One document's token ids -> its list of unpacked examples (see objectives.py)."""

    def __init__(self, objective: Objective, seq_len: int, special: SpecialTokens):
        self._objective, self._seq_len, self._special = objective, seq_len, special

    def random_map(self, tokens: np.ndarray, rng: np.random.Generator) -> list[Example]:
        return self._objective.examples(tokens, rng, self._seq_len, self._special)


class _Flatten(grain.experimental.FlatMapTransform):
    max_fan_out = 1 << 20  # a document yields one example per window; the iter flat-map ignores this

    def flat_map(self, examples: list[Example]) -> list[Example]:
        return examples


def to_batch_row(packed: dict[str, np.ndarray], *, encoder_decoder: bool) -> dict[str, np.ndarray]:
    """grain's packed features ({f, f_segment_ids, f_positions}) -> one row of the batch schema."""
    keys = _ENCODER_DECODER_KEYS if encoder_decoder else _DECODER_KEYS
    if not encoder_decoder and "prefix" in packed:
        keys = {**keys, "prefix": "prefix"}  # decoder prefix LM: the bidirectional prefix mask
    return {new: packed[old].astype(np.float32 if new == "loss_weights" else np.int32)
            for old, new in keys.items()}


def _stack_and_pad(rows: list[dict[str, np.ndarray]], batch_size: int) -> Batch:
    """Stack rows; a final short batch gets all-zero rows (segment id 0, loss weight 0)."""
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    missing = batch_size - len(rows)
    return {k: np.pad(v, ((0, missing), (0, 0))) for k, v in batch.items()} if missing else batch


# grain's shuffle orders epoch e by seed + e, so adjacent run seeds passed as they are share
# orders: seed s's epoch e + 1 was seed s + 1's epoch e (train_together's and the sweeps' seed
# repeats then saw the same document sequence one epoch apart, understating seed noise). Run seeds
# are spread over grain's 32-bit range by an odd stride (a bijection mod 2**32, so distinct seeds
# stay distinct): seed s's epochs start at s * STRIDE, and seeds up to 1000 apart are >= 10**6 seeds
# apart, so their epoch orders meet only past epoch 10**6. Seed 0 maps to 0: its stream (the
# published studies') is the one it always was.
_SEED_STRIDE = 0x9E3779B9  # 2**32 / golden ratio, odd: well spread multiples


def _grain_seed(seed: int) -> int:
    """The base seed handed to grain for run seed `seed` (32-bit; see _SEED_STRIDE)."""
    return (int(seed) % 2**32) * _SEED_STRIDE % 2**32


def check_yields_examples(documents: grain.MapDataset, *, objective: Objective, special: SpecialTokens,
                          seq_len: int, what: str = "the documents") -> None:
    """One line unless some document of `documents` (token ids) yields an example.

    Why: with none, grain's flat-map skips empty documents over an endless epoch stream, and the
    first next() hung for ever (a split of blank texts, a shard of them). Reads documents in order
    up to the first that yields one: usually the first, so this costs a full pass only when it fails.
    """
    rng = np.random.default_rng(0)  # whether a document yields an example does not depend on the draw
    for index in range(len(documents)):
        if objective.examples(documents[index], rng, seq_len, special):
            return
    raise DataError(f"{what} has no document that yields an example: all {len(documents)} tokenize to no "
                    "tokens (blank texts?); check text_field and the data, or use another split.")


def batches_from_token_documents(documents: grain.MapDataset, *, objective: Objective, special: SpecialTokens,
                                 batch_size: int, seq_len: int, seed: int = 0, num_epochs: int | None = None,
                                 num_packing_bins: int | None = None, read_threads: int | None = None,
                                 what: str = "the documents") -> grain.IterDataset:
    """Batches of `objective` from documents of token ids (int32 [N], no bos/eos).

    num_epochs=None repeats forever (drops nothing); a finite run pads its last batch
    with empty rows so every batch is [batch_size, length]. read_threads: grain's reader
    threads (None: one per core, up to 16; 0: read on the iterating thread). The batches
    do not depend on it. A DataError naming `what` when no document yields an example.
    """
    check_yields_examples(documents, objective=objective, special=special, seq_len=seq_len, what=what)
    seed = _grain_seed(seed)
    ds = documents.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.random_map(_ObjectiveExamples(objective, seq_len, special), seed=(seed + 1) % 2**32)
    threads = min(16, os.cpu_count() or 1) if read_threads is None else read_threads
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=64 if threads else 0))
    ds = grain_exp.FlatMapIterDataset(ds, _Flatten())
    ds = grain_exp.FirstFitPackIterDataset(
        ds, length_struct=objective.packed_lengths(seq_len),
        # More bins fill rows better but hold more examples in memory; a batch's worth is plenty.
        num_packing_bins=num_packing_bins or max(batch_size, 8), seed=(seed + 2) % 2**32)
    # functools.partial, not lambdas: the dataset stays picklable for grain's mp_prefetch.
    ds = ds.map(functools.partial(to_batch_row, encoder_decoder=objective.encoder_decoder))
    return ds.batch(batch_size, drop_remainder=False, batch_fn=functools.partial(_stack_and_pad, batch_size=batch_size))


def _synthetic_key(data_config: DataConfig, tokenizer: Tokenizer, split: str, shard_index: int,
                   shard_count: int) -> tuple | None:
    """What a synthetic shard's documents depend on (None for other sources: files and TFDS may
    change between runs in one process).

    Every DataConfig field is in it, not a hand-picked list: a list left validation_fraction out,
    and a second run with another fraction was replayed the first run's validation batches. Only
    the tokenizer's config is swapped for what the tokenizer does (its digest), so runs whose
    tokenizers were trained or loaded from different paths but are the same model still share.
    """
    if data_config.source != "synthetic":
        return None
    fields = tuple((f.name, getattr(data_config, f.name)) for f in dataclasses.fields(data_config)
                   if f.name != "tokenizer")
    return (repr(fields), split, shard_index, shard_count, tokenizer_digest(tokenizer))


def _default_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only for the process topology; the pipeline itself is numpy
        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index={shard_index} must be in [0, shard_count={shard_count}).")
    return shard_index, shard_count


def check_batch_shape(batch_size: int, seq_len: int, model_max_len: int | None = None,
                      objective: ObjectiveName | Objective | None = None) -> None:
    """One line if batches of batch_size x seq_len cannot be made, or are longer than the model
    takes; callers check this before anything is written (a workdir, a tokenizer).

    With `objective`, its settings are checked at seq_len (objective.check_settings: a mask_rate
    of 1.5, more noise spans than kept tokens, a seq_len of 1), which make_batch_dataset refused
    only after the tokenizer was trained; and every packed row it makes is checked, not only
    seq_len: span corruption's decoder rows follow from seq_len and noise_density (longer than
    seq_len above density 0.5), and were refused only by the loss's batch check.
    """
    if batch_size <= 0 or seq_len <= 0:
        raise DataError(f"batch_size={batch_size} and seq_len={seq_len} must be positive.")
    if model_max_len is not None and seq_len > model_max_len:
        raise DataError(f"seq_len={seq_len} is longer than the model's max_len={model_max_len}; "
                        "lower seq_len or use a model with a longer max_len.")
    if objective is None:
        return
    objective = get_objective(objective)
    objective.check_settings(seq_len)
    if model_max_len is None:
        return
    for key, length in objective.packed_lengths(seq_len).items():
        if length > model_max_len:
            raise DataError(f"{objective.name} at seq_len={seq_len} packs {key} rows of {length} tokens, longer "
                            f"than the model's max_len={model_max_len}; lower seq_len (or noise_density) or "
                            "use a model with a longer max_len.")


def make_batch_dataset(data_config: DataConfig, *, tokenizer: Tokenizer, objective: ObjectiveName | Objective,
                       batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
                       shard_index: int | None = None, shard_count: int | None = None,
                       num_epochs: int | None = None, model_max_len: int | None = None,
                       model_vocab_size: int | None = None, num_packing_bins: int | None = None) -> grain.IterDataset:
    """The grain dataset behind `make_batch_iterator` (add e.g. `.mp_prefetch(...)` to it)."""
    from research.data.tokenizer import check_vocab_fits

    objective = get_objective(objective)
    check_batch_shape(batch_size, seq_len, model_max_len, objective)
    if num_epochs is not None and num_epochs <= 0:
        raise DataError(f"num_epochs={num_epochs} must be positive (or None to repeat forever).")
    if model_vocab_size is not None:
        check_vocab_fits(tokenizer, model_vocab_size)
    special = tokenizer.special_tokens()
    objective.validate(special, seq_len)
    shard_index, shard_count = _default_shard(shard_index, shard_count)

    documents = document_source(data_config, split)
    shard = documents[shard_index::shard_count]
    if len(shard) == 0:
        raise DataError(f"shard {shard_index} of {shard_count} is empty: split {split!r} of "
                        f"{data_config.describe()} has only {len(documents)} documents; use fewer shards.")
    # Synthetic documents are a pure function of their config: every run in this process
    # shares their tokens. Other sources are cached per iterator (research/data/token_cache.py).
    shared_key = _synthetic_key(data_config, tokenizer, split, shard_index, shard_count)
    # Cached documents are read on the iterating thread: a read from memory costs less than grain's
    # thread-pool hand-off (emergence mixture, warm cache: 12.8 against 17 ms per 16 x 128 batch),
    # and the training loop already prepares batches on a thread of its own (research/data/prefetch.py).
    return batches_from_token_documents(
        cached_token_documents(shard, tokenizer.encode, shared_key=shared_key), objective=objective,
        special=special, batch_size=batch_size, seq_len=seq_len, seed=seed, num_epochs=num_epochs,
        num_packing_bins=num_packing_bins, read_threads=0 if caches(shard) else None,
        what=f"split {split!r} of {data_config.describe()}" + (f" (shard {shard_index} of {shard_count})"
                                                               if shard_count > 1 else ""))


def make_batch_iterator(data_config: DataConfig, *, tokenizer: Tokenizer, objective: ObjectiveName | Objective,
                        batch_size: int, seq_len: int, split: str = "train", seed: int = 0,
                        shard_index: int | None = None, shard_count: int | None = None,
                        num_epochs: int | None = None, model_max_len: int | None = None,
                        model_vocab_size: int | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator of batches: dicts of numpy [batch_size, length] arrays.

    batch_size is per process; shard_index / shard_count default to jax.process_index() /
    jax.process_count(); num_epochs=None repeats forever. model_max_len / model_vocab_size,
    when given, are checked against the objective's packed row lengths / the tokenizer before
    any data is read.
    Schema per objective: research/data/objectives.py; state: get_state() / set_state().
    Synthetic batches are computed once per process and replayed (research/data/batch_replay.py).
    """
    iterator = iter(make_batch_dataset(
        data_config, tokenizer=tokenizer, objective=objective, batch_size=batch_size, seq_len=seq_len,
        split=split, seed=seed, shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs,
        model_max_len=model_max_len, model_vocab_size=model_vocab_size))
    shard_index, shard_count = _default_shard(shard_index, shard_count)
    documents_key = _synthetic_key(data_config, tokenizer, split, shard_index, shard_count)
    if documents_key is None:
        return iterator
    stream_key = (documents_key, repr(get_objective(objective)), batch_size, seq_len, seed, num_epochs)
    return ReplayIterator(iterator, stream_key)
