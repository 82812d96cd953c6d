"""Fine-tuning records: JSONL files checked row by row, and grain batching of tokenized rows.

A record is one JSON object per line. Each path names the fields it needs (SFT:
`messages`, or `instruction` + `response` with an optional `input`; preferences: `prompt`,
`chosen`, `rejected`; classification: `text` + `label`; ...). A row that is not UTF-8 or JSON,
holds a lone UTF-16 surrogate or lacks a field fails with `file:line`, before anything is trained.

Batches come from grain datasets, so the iterator's position is saved with each
checkpoint and a resumed run sees exactly the batches it would have seen. The run seed reaches
grain as pretraining's does (research/data/pipeline.py _grain_seed): grain orders epoch e by
seed + e, so seeds passed as they are share orders an epoch apart (seed s's epoch e + 1 was seed
s + 1's epoch e); seed 0 maps to 0, so its order is the one it always was.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator, Mapping, Sequence

import grain
import grain.experimental as grain_exp
import numpy as np

from research.data.pipeline import _grain_seed, to_batch_row
from research.models.config import ConfigError

Record = dict[str, Any]
Row = dict[str, np.ndarray]


class RecordError(ConfigError):
    """A bad fine-tuning record; the message starts with `file:line`."""


def read_jsonl(path: str, required: Sequence[Sequence[str]]) -> list[tuple[str, Record]]:
    """[(where, record)] of a JSONL file; `where` is "path:line" for later errors.

    required: alternatives, each a tuple of fields; a row must hold every field of at
    least one alternative (e.g. (("messages",), ("instruction", "response"))).
    """
    if not os.path.isfile(path):
        raise RecordError(f"{path}: no such JSONL file.")
    records = []
    # Bytes, decoded line by line: a text-mode read raised a bare UnicodeDecodeError at a buffer
    # offset, naming no line (and, being no RecordError, left the workdir claimed). splitlines
    # ends lines at \n, \r\n or \r, as text mode's universal newlines did.
    with open(path, "rb") as f:
        for number, raw in enumerate(f.read().splitlines(), start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise RecordError(f"{where}: not valid UTF-8 ({error.reason}: byte "
                                  f"{raw[error.start:error.start + 1]!r} at column {error.start + 1}); save the "
                                  "file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(f"{where}: not valid JSON ({error.msg}).") from None
            if not isinstance(record, dict):
                raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}.")
            _check_encodable(where, record)
            if not any(all(field in record for field in option) for option in required):
                wanted = " or ".join("+".join(option) for option in required)
                raise RecordError(f"{where}: row lacks field(s) {wanted}; it has {sorted(record)}.")
            records.append((where, record))
    if not records:
        raise RecordError(f"{path}: the file holds no records.")
    return records


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _check_encodable(where: str, record: Record) -> None:
    """RecordError naming the row when a string holds a lone UTF-16 surrogate: JSON's "\\ud83d"
    escape (half of an emoji's pair, common in scraped chat dumps) decodes to one, and every
    tokenizer then failed on it (HF: TypeError, SentencePiece: RuntimeError) without a row."""
    for text in _strings(record):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise RecordError(f"{where}: {text[:40]!r} holds a lone UTF-16 surrogate "
                              f"({text[error.start]!r}), which no tokenizer encodes; fix the escape (an emoji is "
                              "a pair such as \\ud83d\\ude00) or drop it.") from None


def check_fits(where: str, length: int, seq_len: int, what: str = "example") -> None:
    """One line when a tokenized example cannot fit the context (nothing is truncated silently)."""
    if length > seq_len:
        raise RecordError(f"{where}: {what} has {length} tokens > seq_len={seq_len}; raise train.seq_len "
                          "(up to the model's max_len) or shorten the record.")


def pad_row(values: Sequence[int | float], length: int, dtype=np.int32) -> np.ndarray:
    out = np.zeros((length,), dtype)
    out[:len(values)] = values
    return out


def packed_batches(examples: list[Row], *, batch_size: int, seq_len: int, seed: int,
                   num_epochs: int | None = None, shuffle: bool = True) -> grain.IterDataset:
    """Causal-LM batches from unpacked examples {inputs, targets, loss_weights} (1-D, any length
    <= seq_len), first-fit packed into rows of seq_len by grain: segment ids 1, 2, .. per
    example and positions restarting at 0, so attention never crosses examples."""
    seed = _grain_seed(seed)
    ds = grain.MapDataset.source(examples)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).to_iter_dataset()
    lengths = {"inputs": seq_len, "targets": seq_len, "loss_weights": seq_len}
    ds = grain_exp.FirstFitPackIterDataset(ds, length_struct=lengths, num_packing_bins=max(batch_size, 8),
                                           seed=(seed + 1) % 2**32)
    ds = ds.map(functools.partial(to_batch_row, encoder_decoder=False))
    return ds.batch(batch_size, drop_remainder=False, batch_fn=functools.partial(_stack_and_pad, batch_size=batch_size))


def row_batches(rows: list[Row], *, batch_size: int, seed: int, num_epochs: int | None = None,
                shuffle: bool = True) -> grain.IterDataset:
    """Batches of fixed-length rows (preference pairs, classification, text-to-text)."""
    ds = grain.MapDataset.source(rows)
    if shuffle:
        ds = ds.shuffle(seed=_grain_seed(seed))
    ds = ds.repeat(num_epochs).to_iter_dataset()
    return ds.batch(batch_size, drop_remainder=False, batch_fn=functools.partial(_stack_and_pad, batch_size=batch_size))


def _stack_and_pad(rows: list[Row], batch_size: int) -> dict[str, np.ndarray]:
    """Stack rows; a final short batch gets all-zero rows (weight 0: they count nowhere)."""
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    missing = batch_size - len(rows)
    if not missing:
        return batch
    return {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


def as_records(items: Sequence[Mapping[str, Any]], name: str) -> list[tuple[str, Record]]:
    """In-memory records (e.g. a synthetic set) with `name:index` as their place in errors."""
    return [(f"{name}:{i + 1}", dict(item)) for i, item in enumerate(items)]
