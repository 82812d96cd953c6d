"""Document sources: one split of a corpus as a random-access sequence of strings.

`document_source(config, split)` is the only entry point the pipeline uses. Every source is
a grain `MapDataset[str]` (random access, so grain can shuffle, shard and checkpoint by
index) and opening one reads no documents: bad names, globs and splits fail first.
"""
from __future__ import annotations

import bisect
import hashlib
import os
import sysconfig
from typing import Any, Sequence

import grain
import numpy as np

from research.data.config import LOCAL_SPLITS, DataConfig, DataError, SyntheticConfig

# Installed packages may live under the stdlib directory; they are not the standard library.
_NOT_STDLIB = {"site-packages", "dist-packages", "__pycache__"}


def split_bucket(key: str) -> float:
    """Where a document's key (a relative path or path:line) hashes to in [0, 1): it is held out
    for validation when below validation_fraction."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def in_validation(key: str, validation_fraction: float) -> bool:
    """Deterministic split of one document by a hash of its key."""
    return split_bucket(key) < validation_fraction


def empty_split(config: DataConfig, split: str) -> DataError:
    return DataError(
        f"split {split!r} of {config.describe()} has no documents; add data, or for stdlib/files "
        f"raise validation_fraction={config.validation_fraction} (validation) / lower it (train)."
    )


class TextFileSource:
    """grain RandomAccessDataSource: element i is the text of file i (read lazily, UTF-8)."""

    def __init__(self, paths: Sequence[str]):
        self._paths = tuple(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> str:
        with open(self._paths[index], encoding="utf-8", errors="replace") as f:
            return f.read()

    def __repr__(self) -> str:
        return f"TextFileSource({len(self._paths)} files)"


def stdlib_root() -> str:
    """The directory of Python's standard library source (sysconfig's 'stdlib' path)."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(split: str, *, validation_fraction: float = 0.05,
                 max_documents: int | None = None) -> list[str]:
    """Paths of the stdlib .py files in `split`, assigned by a hash of the relative path.

    The order is by that hash (a fixed pseudo-random order), so `max_documents` keeps a
    deterministic sample of the whole library rather than its first directory.
    """
    if split not in LOCAL_SPLITS:
        raise DataError(f"split={split!r} is not one of {LOCAL_SPLITS} for the stdlib corpus.")
    root = stdlib_root()
    keyed = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _NOT_STDLIB)
        for name in filenames:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                if in_validation(rel, validation_fraction) == (split == "validation"):
                    keyed.append((hashlib.sha1(rel.encode()).hexdigest(), rel))
    keyed.sort()
    paths = [os.path.join(root, rel) for _, rel in keyed]
    return paths[:max_documents] if max_documents else paths


def _tfds_source(config: DataConfig, split: str) -> Any:
    """A prepared TFDS dataset's random-access source; every way it can be missing is one line."""
    import tensorflow_datasets as tfds  # imported here: ~0.3 s, only the tfds/files sources need it

    where = config.data_dir or "the TFDS default data_dir (~/tensorflow_datasets)"
    run_split = split in ("train", "validation")
    split = {"train": config.train_split, "validation": config.validation_split}.get(split, split)
    try:
        builder = tfds.builder(config.tfds_name, data_dir=config.data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown TFDS dataset {config.tfds_name!r}: neither a registered builder nor prepared under "
            f"{where}; check the name (e.g. 'lm1b', 'c4/en') and data_dir."
        ) from None
    except (AssertionError, ValueError) as error:  # a malformed name or version ('lm1b:9.9.9', 'Bad Name!')
        raise DataError(f"TFDS dataset name {config.tfds_name!r} is not valid ({_first_line(error)}); give "
                        "'name', 'name/config' or 'name:version' as prepared under data_dir.") from None
    if not builder.is_prepared():
        raise DataError(
            f"TFDS dataset {config.tfds_name!r} is not prepared under {where}; prepare it there with "
            f"`tfds build {config.tfds_name} --file_format=array_record` or set data_dir."
        )
    if config.text_field not in builder.info.features:
        raise DataError(f"TFDS dataset {config.tfds_name!r} has no feature {config.text_field!r}; "
                        f"set text_field to one of {sorted(builder.info.features)}.")
    features = builder.info.features
    if not _is_text(features[config.text_field]):
        # Once str()-ed into documents: a ClassLabel trained on '0' / '1', a Sequence on "[b'x', b'y']".
        texts = sorted(name for name, feature in features.items() if _is_text(feature))
        raise DataError(f"TFDS dataset {config.tfds_name!r}: text_field={config.text_field!r} is a "
                        f"{type(features[config.text_field]).__name__} feature, not text; set text_field to one of "
                        f"its Text features {texts}.")
    reads = _examples_read(builder, config, split)
    if run_split:  # whichever is opened first (a run opens validation before its tokenizer trains on train)
        _check_disjoint(builder, config, split, reads, where)
    try:
        source = builder.as_data_source(split=split)
        size = len(source)  # an empty or reversed slice fails here, not at the first read
    except NotImplementedError:
        raise DataError(
            f"TFDS dataset {config.tfds_name!r} under {where} is not in array_record format; re-prepare it "
            "with --file_format=array_record (random access needs it)."
        ) from None
    except (AssertionError, ValueError) as error:  # 'train[:abc]', 'validation[10:5]'
        raise DataError(f"TFDS split {split!r} of {config.tfds_name!r} cannot be read ({_first_line(error)}); "
                        "write e.g. 'train', 'train[:90%]' or 'train[1000:2000]'.") from None
    if size == 0:
        raise DataError(f"TFDS split {split!r} of {config.tfds_name!r} holds no examples; widen the slice.")
    return source


def _is_text(feature: Any) -> bool:
    """Whether a TFDS feature reads as one string per example (Text, or a scalar string Tensor)."""
    import tensorflow_datasets as tfds

    if isinstance(feature, tfds.features.Text):
        return True
    # Any Tensor subclass: TFDS's Hugging Face wrapper stores string columns as Scalar(np.object_).
    # The shape and dtype keep out ClassLabel (int64), Sequence and Image.
    return (isinstance(feature, tfds.features.Tensor) and tuple(feature.shape) == ()
            and np.dtype(feature.np_dtype).kind in "OSU")  # TFDS stores strings as object / bytes


def _examples_read(builder: Any, config: DataConfig, split: str) -> list[tuple[str, int, int]]:
    """(file, first, end) of each range of examples `split` reads, by TFDS's own split arithmetic
    (percent rounding, '+', the same as as_data_source reads); one line if TFDS cannot read it."""
    if any(part.split("[")[0].strip() not in builder.info.splits for part in split.split("+")):  # 'train+validation'
        raise DataError(f"TFDS dataset {config.tfds_name!r} has no split {split!r}; "
                        f"use one of {sorted(builder.info.splits)}.")
    try:
        instructions = builder.info.splits[split].file_instructions
    except (AssertionError, ValueError, KeyError) as error:  # 'train[:abc]'
        raise DataError(f"TFDS split {split!r} of {config.tfds_name!r} cannot be read ({_first_line(error)}); "
                        "write e.g. 'train', 'train[:90%]' or 'train[1000:2000]'.") from None
    return [(os.path.basename(i.filename), i.skip, i.skip + i.take) for i in instructions]


def _check_disjoint(builder: Any, config: DataConfig, split: str, reads: list[tuple[str, int, int]],
                    where: str) -> None:
    """One line if train_split and validation_split read a common example: validation would then
    score training data ('train' / 'train[:10%]', 'train+validation' / 'validation'), silently.
    `split` is the one being opened (it reads `reads`); the other is compared only if TFDS can read
    it, so a dataset without a validation split (lm1b) still opens its train split."""
    other = config.validation_split if split == config.train_split else config.train_split
    try:
        other_reads = _examples_read(builder, config, other)
    except DataError:  # refused in its own words when it is opened
        return
    shared = sum(max(0, min(end, other_end) - max(first, other_first))
                 for name, first, end in reads for other_name, other_first, other_end in other_reads
                 if name == other_name)
    if shared:
        raise DataError(f"data: train_split={config.train_split!r} and validation_split={config.validation_split!r} "
                        f"of {config.tfds_name!r} under {where} share {shared} examples, so validation would score "
                        "training data; use disjoint slices, e.g. 'train[1%:]' / 'train[:1%]'.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class SyntheticDocuments:
    """grain RandomAccessDataSource: element i is document i of a Markov-source split (see
    research/scaling/synthetic_corpus.py), generated on demand from (seed, i).

    The draw is MarkovSource.sample's for one document, with its per-call set-up (the
    stationary distribution by power iteration, the cumulative transition table) done once
    here and the sequential chain walked with bisect on Python lists: the same float64
    comparisons, so the same characters, about 10x faster (it fed small models too slowly).
    """

    def __init__(self, config: SyntheticConfig, seed: int, num_documents: int):
        from research.scaling.synthetic_corpus import source_of
        self._source = source_of(config)
        self._symbols = np.array(list(config.alphabet))
        self._seed, self._length, self._doc_chars = seed, num_documents, config.doc_chars
        cdf_SV = np.cumsum(self._source.transitions_SV, axis=1)
        cdf_SV[:, -1] = 1.0  # as MarkovSource.sample: guard the last bin against rounding below 1
        self._cdf_rows = cdf_SV.tolist()
        self._stationary_cdf_S = np.cumsum(self._source.stationary_S())
        self._alphabet_size, self._num_contexts = len(config.alphabet), cdf_SV.shape[0]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> str:
        # The same draw as synthetic_documents(seed, 1, doc_chars, start=index): (cdf < u).sum()
        # there is bisect_left(cdf, u) here, on the same float64 values.
        uniforms = np.random.default_rng([self._seed, int(index)]).random(self._doc_chars + 1)
        pi_cdf = self._stationary_cdf_S
        context = int(min(np.searchsorted(pi_cdf, uniforms[0] * pi_cdf[-1]), self._num_contexts - 1))
        rows, size, contexts = self._cdf_rows, self._alphabet_size, self._num_contexts
        ids = []
        for u in uniforms[1:].tolist():
            symbol = bisect.bisect_left(rows[context], u)
            ids.append(symbol)
            context = (context * size) % contexts + symbol
        return "".join(self._symbols[np.asarray(ids, np.int64)])

    def __repr__(self) -> str:
        return f"SyntheticDocuments({self._length} x {self._doc_chars} chars, seed={self._seed})"


def _synthetic_source(config: DataConfig, split: str) -> SyntheticDocuments:
    if split not in LOCAL_SPLITS:
        raise DataError(f"split={split!r} is not one of {LOCAL_SPLITS} for source='synthetic'.")
    synthetic, validation = config.synthetic, split == "validation"
    count = synthetic.num_documents
    if validation:
        count = max(1, round(count * config.validation_fraction))
    # A seed per split: validation documents are independent draws from the same source.
    return SyntheticDocuments(synthetic, seed=2 * synthetic.sample_seed + int(validation), num_documents=count)


def _decode_field(field: str):
    def decode(example: dict) -> str:
        value = example[field]
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            return value
        # _tfds_source refuses non-text fields before reading; str() here made documents of
        # '0' or "[b'x', b'y']", so anything else that gets through is refused, not trained on.
        raise DataError(f"text_field={field!r} holds {type(value).__name__} values, not text; set text_field "
                        "to a Text feature.")
    return decode


def document_source(config: DataConfig, split: str) -> grain.MapDataset:
    """One split of `config`'s corpus as a `MapDataset[str]` of documents, capped at max_documents."""
    if config.source == "stdlib":
        ds = grain.MapDataset.source(TextFileSource(stdlib_files(
            split, validation_fraction=config.validation_fraction, max_documents=config.max_documents)))
    elif config.source == "synthetic":
        ds = grain.MapDataset.source(_synthetic_source(config, split))
        if config.max_documents:
            ds = ds[: config.max_documents]
    else:
        if config.source == "files":
            from research.data.text_files import text_files_builder  # imports TFDS (~0.3 s)
            if split not in LOCAL_SPLITS:
                raise DataError(f"split={split!r} is not one of {LOCAL_SPLITS} for source='files'.")
            builder = text_files_builder(config, split)  # refuses an empty split before preparing anything
            # An empty split is not written (TFDS cannot); it reads as no documents.
            source = builder.as_data_source(split=split) if split in builder.info.splits else []
            field = "text"
        else:
            source, field = _tfds_source(config, split), config.text_field
        ds = grain.MapDataset.source(source)
        if config.max_documents:
            ds = ds[: config.max_documents]
        ds = ds.map(_decode_field(field))
    if len(ds) == 0:
        raise empty_split(config, split)
    return ds
