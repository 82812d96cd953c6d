"""The datatrove pipeline steps that run our stages and move documents between them.

Documents leave the reading tasks hash-partitioned by their normalised text
(`dedup_key`), so exact duplicates meet in one partition, each partition is sorted by key,
and everything after reading is a function of the partition alone: the output does not
depend on how many tasks read the inputs or how many workers ran them.

    read tasks:       DocumentReader -> DocumentStagesStep -> PartitionWriter
    partition tasks:  PartitionReader -> ExactDedupStep -> PartitionStore -> MinhashDedupSignature
    (minhash buckets and clustering: datatrove's own steps)
    partition tasks:  StoredPartitionReader -> NearDedupStep(MinhashDedupFilter) -> ShardWriter
"""
from __future__ import annotations

import collections
import glob
import json
import os
from typing import Iterator, Sequence

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from research.data.config import DataError
from research.data.preparation.config import PreparationConfig
from research.data.preparation.counters import StageCounters
from research.data.preparation.decontamination import ContaminationIndex
from research.data.preparation.document_stages import build_document_stages, dedup_key


def one_line_data_errors(record: dict) -> None:
    """loguru patcher: a DataError (bad input, e.g. a .jsonl record without the text field) that
    datatrove logs as it fails a task becomes one DEBUG line without a traceback: the task's log
    file keeps the message, the console shows nothing, and the driver prints it as one line.
    datatrove's `logger.exception` printed ~130 lines first, with the value of each frame's
    variables (loguru's diagnose), i.e. the documents' text. Other exceptions keep their traceback."""
    exception = record["exception"]
    if (exception is not None and isinstance(exception.value, DataError)
            and (record["name"] or "").startswith("datatrove.")):
        # A patcher cannot drop a record: below the console sink's level (INFO), it skips it.
        debug = logger.level("DEBUG")
        record["exception"] = None
        record["level"] = type(record["level"])(debug.name, debug.no, debug.icon)


def _install_patcher() -> None:
    """one_line_data_errors as loguru's patcher, after any patcher already installed (configure
    replaces it: a user's own patcher was dropped by importing this module). Once per process."""
    previous = getattr(logger, "_core", None) and logger._core.patcher  # loguru keeps no public getter
    if previous is _patch or getattr(previous, "__wrapped__", None) is _patch:
        return

    def patch(record: dict) -> None:
        if previous is not None:
            previous(record)
        _patch(record)
    patch.__wrapped__ = _patch
    logger.configure(patcher=patch)


_patch = one_line_data_errors
# Installed on import: every process that runs a stage imports this module (the driver builds the
# pipelines from it, local workers preload it, Slurm and Ray workers unpickle these steps), and a
# patcher outlives the logger.remove() / add() with which datatrove sets up each task's sinks.
_install_patcher()


def _atomic_jsonl(path: str, records: Iterator[dict]) -> Iterator[dict]:
    """Write records to `path` (via a temp file renamed at the end), passing them through."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            yield record
    os.replace(tmp, path)


def _read_jsonl(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _as_document(record: dict) -> Document:
    return Document(text=record["text"], id=record["origin"], metadata={"origin": record["origin"], "key": record["key"]})


def _as_record(doc: Document) -> dict:
    return {"key": doc.metadata["key"], "origin": doc.metadata["origin"], "text": doc.text}


class DocumentStagesStep(PipelineStep):
    """Runs the per-document stages (standardise, quality, blocklist, decontamination), counting each."""

    name = "document stages"
    type = "FILTER"

    def __init__(self, config: PreparationConfig, contamination: ContaminationIndex | None, counters_dir: str,
                 words: Sequence[str] | None = None):
        super().__init__()
        self.config, self.contamination, self.counters_dir = config, contamination, counters_dir
        self.words = words  # the blocklist as the driver read it (None: read config.blocklist here)

    def run(self, data: Iterator[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        stages = build_document_stages(self.config, self.contamination, self.words)
        counters = StageCounters(self.config.max_examples)
        for stage in stages:
            counters.stage(stage.name)  # every enabled stage appears in the report, even with no input
        for doc in data:
            origin = doc.metadata["origin"]
            for stage in stages:
                counters.entered(stage.name, doc.text)
                verdict = stage.apply(doc)
                if not verdict.kept:
                    counters.dropped(stage.name, verdict.reason, origin, doc.text)
                    self.stat_update(f"dropped_{stage.name}")
                    break
                counters.kept(stage.name, verdict.text, rewritten=verdict.text != doc.text)
                if verdict.note:
                    counters.noted(stage.name, verdict.note, origin, doc.text)
                doc.text = verdict.text
            else:
                doc.metadata["key"] = dedup_key(doc.text)
                yield doc
        counters.save(os.path.join(self.counters_dir, "1_document_stages", f"{rank:05d}.json"))


class PartitionWriter(PipelineStep):
    """Appends each document to partition int(key) % num_partitions: one file per (partition, task)."""

    name = "partition by normalised-text hash"
    type = "WRITER"

    def __init__(self, folder: str, num_partitions: int):
        super().__init__()
        self.folder, self.num_partitions = folder, num_partitions

    def run(self, data: Iterator[Document], rank: int = 0, world_size: int = 1) -> None:
        tmp_paths, files = {}, {}
        try:
            for doc in data:
                partition = int(doc.metadata["key"][:15], 16) % self.num_partitions
                if partition not in files:
                    path = os.path.join(self.folder, f"{partition:05d}", f"{rank:05d}.jsonl")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    tmp_paths[partition] = f"{path}.tmp{os.getpid()}"
                    files[partition] = open(tmp_paths[partition], "w", encoding="utf-8")
                files[partition].write(json.dumps(_as_record(doc), ensure_ascii=False) + "\n")
        finally:
            for f in files.values():
                f.close()
        # A rerun of this task rewrites its files; stale ones from an earlier attempt go first.
        for stale in glob.glob(os.path.join(self.folder, "*", f"{rank:05d}.jsonl")):
            os.remove(stale)
        for partition, tmp in tmp_paths.items():
            os.replace(tmp, tmp[: tmp.rindex(".tmp")])


class PartitionReader(PipelineStep):
    """Partition `rank`'s documents from every reading task, sorted by (key, origin)."""

    name = "read partition"
    type = "READER"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        records = [r for path in sorted(glob.glob(os.path.join(self.folder, f"{rank:05d}", "*.jsonl")))
                   for r in _read_jsonl(path)]
        records.sort(key=lambda r: (r["key"], r["origin"]))
        for record in records:
            yield _as_document(record)


class ExactDedupStep(PipelineStep):
    """Keeps the first document of each run of equal keys (the smallest origin)."""

    name = "exact dedup"
    type = "DEDUP"

    def __init__(self, counters_dir: str, max_examples: int):
        super().__init__()
        self.counters_dir, self.max_examples = counters_dir, max_examples

    def run(self, data: Iterator[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        counters = StageCounters(self.max_examples)
        counters.stage("exact_dedup")
        last_key, last_origin = None, None
        for doc in data:
            counters.entered("exact_dedup", doc.text)
            if doc.metadata["key"] == last_key:
                counters.dropped("exact_dedup", "exact_duplicate", doc.metadata["origin"], doc.text,
                                 duplicate_of=last_origin)
                continue
            last_key, last_origin = doc.metadata["key"], doc.metadata["origin"]
            counters.kept("exact_dedup", doc.text)
            yield doc
        counters.save(os.path.join(self.counters_dir, "2_exact_dedup", f"{rank:05d}.json"))


class PartitionStore(PipelineStep):
    """Stores partition `rank` (sorted, deduplicated) and passes it on; the filter stage rereads it
    in the same order, which is what datatrove's minhash filter needs (it drops by position)."""

    name = "store partition"
    type = "WRITER"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: Iterator[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        path = os.path.join(self.folder, f"{rank:05d}.jsonl")
        for record in _atomic_jsonl(path, (_as_record(doc) for doc in data)):
            yield _as_document(record)


class StoredPartitionReader(PipelineStep):
    name = "read stored partition"
    type = "READER"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for record in _read_jsonl(os.path.join(self.folder, f"{rank:05d}.jsonl")):
            yield _as_document(record)


class NearDedupStep(PipelineStep):
    """datatrove's MinhashDedupFilter, counted: a document that goes in and does not come out was
    removed as a near duplicate (the filter keeps order, so a queue of pending inputs finds them)."""

    name = "near dedup (minhash filter)"
    type = "DEDUP"

    def __init__(self, minhash_filter: PipelineStep, counters_dir: str, max_examples: int):
        super().__init__()
        self.minhash_filter, self.counters_dir, self.max_examples = minhash_filter, counters_dir, max_examples

    def run(self, data: Iterator[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        counters = StageCounters(self.max_examples)
        counters.stage("near_dedup")
        pending: collections.deque[Document] = collections.deque()

        def entering() -> Iterator[Document]:
            for doc in data:
                counters.entered("near_dedup", doc.text)
                pending.append(doc)
                yield doc

        def drop_until(doc: Document | None) -> None:
            while pending and pending[0] is not doc:
                gone = pending.popleft()
                counters.dropped("near_dedup", "near_duplicate", gone.metadata["origin"], gone.text)

        for doc in self.minhash_filter.run(entering(), rank, world_size):
            drop_until(doc)
            pending.popleft()
            counters.kept("near_dedup", doc.text)
            yield doc
        drop_until(None)
        counters.save(os.path.join(self.counters_dir, "3_near_dedup", f"{rank:05d}.json"))
