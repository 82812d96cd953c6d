"""The output: a TFDS dataset (array_record, features `text` and `origin`) written without TensorFlow.

Each partition task writes its train and validation shard (`ShardWriter`); the final task
numbers the non-empty shards, writes TFDS's metadata (`tfds.folder_dataset.write_metadata`)
and moves the finished version directory into place with one rename, so a dataset either
is complete under `{output_dir}/{name}/{version}` or is not there at all:

    {output_dir}/{name}/{version}/{name}-train.array_record-00000-of-00004, dataset_info.json, ...

Pretraining reads it with `--config.data.source=tfds --config.data.tfds_name={name}
--config.data.data_dir={output_dir}`.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Iterator

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from research.data.sources import in_validation

SPLITS = ("train", "validation")
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def features():
    import tensorflow_datasets as tfds
    return tfds.features.FeaturesDict({"text": tfds.features.Text(), "origin": tfds.features.Text()})


def serialize(feature_dict, example: dict) -> bytes:
    """TFDS's tf.train.Example bytes with the feature map in sorted key order: the plain
    `serialize_example` follows the protobuf map's order, which differs between processes."""
    encoded = feature_dict.encode_example(example)
    proto = feature_dict._example_serializer.get_tf_example(encoded)  # pylint: disable=protected-access
    return proto.SerializeToString(deterministic=True)


def split_of(key: str, validation_fraction: float) -> str:
    """train or validation, by a hash of the document's normalised-text key (stable across runs)."""
    return "validation" if in_validation(key, validation_fraction) else "train"


class ShardWriter(PipelineStep):
    """Writes partition `rank` as one array_record shard per split, plus a JSON of their sizes."""

    name = "write array_record shards"
    type = "WRITER"

    def __init__(self, folder: str, validation_fraction: float):
        super().__init__()
        self.folder, self.validation_fraction = folder, validation_fraction

    def run(self, data: Iterator[Document], rank: int = 0, world_size: int = 1) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter
        os.makedirs(self.folder, exist_ok=True)
        serializer = features()
        sizes = {split: {"examples": 0, "bytes": 0} for split in SPLITS}
        paths = {split: os.path.join(self.folder, f"{split}-{rank:05d}.array_record") for split in SPLITS}
        writers = {split: ArrayRecordWriter(f"{path}.tmp", "group_size:1") for split, path in paths.items()}
        try:
            for doc in data:
                split = split_of(doc.metadata["key"], self.validation_fraction)
                record = serialize(serializer, {"text": doc.text, "origin": doc.metadata["origin"]})
                writers[split].write(record)
                sizes[split]["examples"] += 1
                sizes[split]["bytes"] += len(record)
        finally:
            for writer in writers.values():
                writer.close()
        for split, path in paths.items():
            os.replace(f"{path}.tmp", path)
        with open(os.path.join(self.folder, f"sizes-{rank:05d}.json.tmp"), "w") as f:
            json.dump(sizes, f)
        os.replace(os.path.join(self.folder, f"sizes-{rank:05d}.json.tmp"),
                   os.path.join(self.folder, f"sizes-{rank:05d}.json"))


def assemble_dataset(shard_folder: str, version_dir: str, *, name: str, description: str) -> dict[str, int]:
    """Links the non-empty shards into `version_dir` under TFDS names and writes its metadata.

    Returns examples per split. A split with no examples is an error (TFDS cannot hold one and
    pretraining needs both), raised before anything is written.
    """
    import tensorflow_datasets as tfds
    from research.data.config import DataError

    shards = {split: [] for split in SPLITS}  # (path, examples, bytes) in partition order
    for sizes_path in sorted(glob.glob(os.path.join(shard_folder, "sizes-*.json"))):
        rank = sizes_path[-10:-5]
        with open(sizes_path) as f:
            sizes = json.load(f)
        for split in SPLITS:
            if sizes[split]["examples"]:
                shards[split].append((os.path.join(shard_folder, f"{split}-{rank}.array_record"),
                                      sizes[split]["examples"], sizes[split]["bytes"]))
    empty = [split for split in SPLITS if not shards[split]]
    if empty:
        kept = {split: sum(n for _, n, _ in shards[split]) for split in SPLITS}
        raise DataError(f"after filtering, split(s) {empty} hold no documents (kept {kept}); add input, relax the "
                        "filters, or raise --config.output.validation_fraction.")
    if os.path.isdir(version_dir):  # an interrupted earlier attempt: start the assembly again
        shutil.rmtree(version_dir)
    os.makedirs(version_dir)
    split_infos = []
    for split in SPLITS:
        count = len(shards[split])
        for index, (path, _, _) in enumerate(shards[split]):
            # A link, not a move: the shards stay where a rerun of this step expects them.
            os.link(path, os.path.join(version_dir, f"{name}-{split}.array_record-{index:05d}-of-{count:05d}"))
        split_infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[n for _, n, _ in shards[split]], num_bytes=sum(b for _, _, b in shards[split]),
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=version_dir, template=FILENAME_TEMPLATE, dataset_name=name, split=split,
                filetype_suffix="array_record")))
    tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features(), split_infos=split_infos,
                                       check_data=False, description=description)
    return {split: sum(n for _, n, _ in shards[split]) for split in SPLITS}
