"""Data: corpora, SentencePiece tokenizers, grain pipelines with packing, pretraining objectives.

What a trainer calls (all numpy; no TensorFlow needed):

    from research import data

    data_config = data.DataConfig(source="stdlib", tokenizer=data.TokenizerConfig(vocab_size=8192))
    tokenizer = data.build_tokenizer(data_config, workdir)        # trains once, cached in workdir
    data.check_vocab_fits(tokenizer, model_config.vocab_size)     # one-line error if too big
    batches = data.make_batch_iterator(
        data_config, tokenizer=tokenizer, objective="causal_lm",  # | prefix_lm | masked_lm | span_corruption
        batch_size=per_process_batch, seq_len=512, split="train", seed=0,
        model_max_len=model_config.max_len)                      # shards by jax.process_index()
    batch = next(batches)                                         # dict of numpy [B, T] arrays

Batch schema ([B, T] int32 unless noted; segment ids are 1, 2, .. per packed document and
0 on padding, positions restart at 0 per document, so attention masks built from segment
ids never cross documents):

    causal_lm, prefix_lm, masked_lm:
        inputs, targets, segment_ids, positions, loss_weights (float32)
    span_corruption, PrefixLM(encoder_decoder=True):
        encoder_inputs, encoder_segment_ids, encoder_positions            [B, S]
        decoder_inputs, decoder_targets, decoder_segment_ids, decoder_positions, loss_weights
    `get_objective(name).packed_lengths(seq_len)` gives each length (span corruption's
    decoder length follows from seq_len: 512 -> 114, as in T5).

Sources (DataConfig.source): "stdlib" (Python's standard library source, always present,
split by file hash), "tfds" (any TFDS dataset prepared locally as array_record, by name, e.g.
one written by `python -m experiments.prepare_data`, see research/data/preparation),
"files" (globs of .txt/.md/.py/.jsonl, built once into array_record by a TFDS builder).

Resuming: the iterator is a grain `DatasetIterator`; `state = batches.get_state()` is a
small JSON-able dict and `batches.set_state(state)` continues with exactly the same
batches. With orbax, save it next to the train state (one JSON file per process):

    import grain, orbax.checkpoint as ocp
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state), data=grain.checkpoint.CheckpointSave(batches)))
    manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(batches)))

Tokenizer CLI: `python -m research.data.tokenizer --train --source=stdlib --vocab_size=8192 --workdir=DIR`.
"""
from __future__ import annotations

import importlib
from typing import Any

# Exports load lazily, so `python -m research.data.tokenizer` does not import its own module
# twice (runpy warns) and reading a DataConfig does not import grain or SentencePiece.
_EXPORTS = {
    "DataConfig": "config", "DataError": "config", "TokenizerConfig": "config",
    "CausalLM": "objectives", "MaskedLM": "objectives", "Objective": "objectives",
    "ObjectiveName": "objectives", "PrefixLM": "objectives", "SpanCorruption": "objectives",
    "get_objective": "objectives", "objective_for_family": "objectives",
    "check_batch_shape": "pipeline", "make_batch_dataset": "pipeline", "make_batch_iterator": "pipeline",
    "document_source": "sources",
    "SpecialTokens": "tokenizer", "Tokenizer": "tokenizer", "build_tokenizer": "tokenizer", "build_shared_tokenizer": "tokenizer",
    "check_vocab_fits": "tokenizer", "train_tokenizer": "tokenizer",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'research.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"research.data.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(_EXPORTS)


__all__ = sorted(_EXPORTS)
