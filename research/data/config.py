"""DataConfig and TokenizerConfig: what text to read and how to turn it into token ids.

Both are frozen, typed dataclasses validated in `__post_init__`, so a bad choice fails
with one line naming the value and the fix, before any file is read or model trained.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

Source = Literal["stdlib", "tfds", "files", "synthetic"]
SpmModelType = Literal["bpe", "unigram"]
Normalization = Literal["identity", "nmt_nfkc"]

# Splits of the corpora this package builds itself (stdlib, files); TFDS datasets take any
# split string their builder knows ("test", "train[:1%]", ...).
LOCAL_SPLITS = ("train", "validation")
# Pieces every trained tokenizer reserves, in id order 0..5 (T5 layout: pad 0, eos 1, unk 2).
SPECIAL_PIECES = ("<pad>", "</s>", "<unk>", "<s>", "<mask>", "\n")


class DataError(ValueError):
    """A user-facing data mistake (bad path, empty split, sizes that do not fit); one line."""


def _check_choice(owner: str, field: str, value: Any, choice: Any) -> None:
    if value not in choice.__args__:
        raise DataError(f"{owner}: {field}={value!r} is not one of {choice.__args__}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """A SentencePiece model: load `model_path`, or train one on the data's train split.

    vocab_size counts SentencePiece pieces (pad, eos, unk, bos, <mask>, newline, 256 bytes
    with byte_fallback, then learned pieces). `num_extra_ids` T5 sentinels are appended
    above them, so the ids a model sees are [0, vocab_size + num_extra_ids).
    """

    model_path: str | None = None  # an existing .model file; None = train (cached in workdir)
    model_type: SpmModelType = "bpe"
    vocab_size: int = 8192
    byte_fallback: bool = True  # unseen characters become UTF-8 byte pieces, never <unk>
    character_coverage: float = 0.9995
    # identity keeps whitespace (indentation, newlines) so code round-trips exactly.
    normalization: Normalization = "identity"
    max_training_chars: int = 20_000_000  # read at most this much of the train split
    num_extra_ids: int = 0  # T5 sentinels: extra id i = total vocab - 1 - i

    def __post_init__(self):
        _check_choice("tokenizer", "model_type", self.model_type, SpmModelType)
        _check_choice("tokenizer", "normalization", self.normalization, Normalization)
        # pad, eos, unk, bos, <mask>, newline + (256 byte pieces) + at least one learned piece.
        floor = len(SPECIAL_PIECES) + (256 if self.byte_fallback else 0) + 1
        if self.model_path is None and self.vocab_size < floor:
            raise DataError(
                f"tokenizer: vocab_size={self.vocab_size} is too small to train"
                f"{' with byte_fallback' if self.byte_fallback else ''}; use vocab_size >= {floor}."
            )
        if self.max_training_chars <= 0:
            raise DataError(f"tokenizer: max_training_chars={self.max_training_chars} must be positive.")
        if self.num_extra_ids < 0:
            raise DataError(f"tokenizer: num_extra_ids={self.num_extra_ids} must be >= 0.")
        if not 0.0 < self.character_coverage <= 1.0:
            raise DataError(f"tokenizer: character_coverage={self.character_coverage} must be in (0, 1].")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Text from a seeded random k-th order Markov source (research/scaling/synthetic_corpus.py)
    whose entropy rate is known exactly. The source is fixed by (source_seed, alphabet, order,
    concentration); document i of a split is a `doc_chars`-character draw seeded by (split, i),
    so the train and validation splits are independent samples of the same source.

    A tokenizer with byte_fallback=False, character_coverage=1.0 and vocab_size =
    `char_vocab_size` is character level (one token per character, plus SentencePiece's
    leading "▁" per document), so losses are in nats per character.
    """

    source_seed: int = 0
    alphabet: str = "abcdefghijklmnopqrstuvwxyz "
    order: int = 2  # context length k in characters
    concentration: float = 0.2  # Dirichlet concentration of each transition row; smaller = lower entropy
    zipf_exponent: float = 0.0  # Zipf base weights of the rows (0 = symmetric); see markov_source
    hierarchical: bool = False  # rows drawn around their shorter contexts' rows (information at every order)
    doc_chars: int = 1024
    num_documents: int = 1_000_000  # train split; validation holds validation_fraction of this (>= 1)
    sample_seed: int = 0

    def __post_init__(self):
        if len(set(self.alphabet)) != len(self.alphabet) or len(self.alphabet) < 2:
            raise DataError(f"data.synthetic: alphabet={self.alphabet!r} needs >= 2 distinct characters, each once.")
        if self.order < 1 or len(self.alphabet) ** self.order > 1_000_000:
            raise DataError(f"data.synthetic: order={self.order} with {len(self.alphabet)} symbols gives "
                            f"{len(self.alphabet)}**{self.order} contexts; use order >= 1 and at most 1e6 contexts.")
        if self.concentration <= 0:
            raise DataError(f"data.synthetic: concentration={self.concentration} must be > 0, e.g. 0.2.")
        if self.doc_chars < 1 or self.num_documents < 1:
            raise DataError(f"data.synthetic: doc_chars={self.doc_chars} and num_documents={self.num_documents} "
                            "must be positive.")

    @property
    def char_vocab_size(self) -> int:
        """SentencePiece pieces of a character-level tokenizer: the special pieces, each character,
        and "▁" (SentencePiece's word-start mark; the space character itself when in the alphabet)."""
        # A character that is already a special piece ("\n", piece 5) is not a second piece.
        return len(SPECIAL_PIECES) + len(set(self.alphabet) - set(SPECIAL_PIECES)) + (" " not in self.alphabet)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where documents come from and how the tokenizer is made.

    source:
      "stdlib": the .py files of Python's standard library (always present), split into
                train / validation by a hash of each file's relative path.
      "tfds":   a TFDS dataset prepared locally as array_record (`tfds_name`, `data_dir`),
                read from `train_split` / `validation_split`.
      "files":  local files matching `file_patterns` (.txt/.md/.py/... = one document per
                file; .jsonl, .ndjson and JSON Lines .json = one document per line, from
                `text_field`; binary files, the data_dir and runs' workdirs are left out), built
                once into array_record under `data_dir` by a TFDS builder.
      "synthetic": documents sampled from a Markov source of known entropy rate (`synthetic`).
    """

    source: Source = "stdlib"
    tfds_name: str = ""  # e.g. "lm1b", "c4/en", "tiny_shakespeare", "wikipedia/20230601.en"
    data_dir: str = ""  # TFDS data_dir ("" = TFDS default, ~/tensorflow_datasets)
    file_patterns: tuple[str, ...] = ()  # globs ("**" recurses), source="files"
    text_field: str = "text"  # feature (tfds) or JSON key (.jsonl) holding the text
    # The TFDS splits read as the run's train / validation splits, e.g. "train[1%:]" / "train[:1%]"
    # for a corpus with no validation split (wikipedia). source="tfds" only.
    train_split: str = "train"
    validation_split: str = "validation"
    validation_fraction: float = 0.05  # stdlib / files / synthetic: share of files (or jsonl lines) held out
    max_documents: int | None = None  # cap per split, for fast tests and smoke runs
    tokenizer: TokenizerConfig = TokenizerConfig()
    synthetic: SyntheticConfig = SyntheticConfig()  # source="synthetic" only

    def __post_init__(self):
        if isinstance(self.tokenizer, Mapping):  # from an ml_collections / dict config
            object.__setattr__(self, "tokenizer", TokenizerConfig(**self.tokenizer))
        if isinstance(self.synthetic, Mapping):
            object.__setattr__(self, "synthetic", SyntheticConfig(**self.synthetic))
        if isinstance(self.file_patterns, str):
            object.__setattr__(self, "file_patterns", (self.file_patterns,))
        object.__setattr__(self, "file_patterns", tuple(self.file_patterns))
        _check_choice("data", "source", self.source, Source)
        if self.source == "tfds" and not self.tfds_name:
            raise DataError("data: source='tfds' needs tfds_name, e.g. tfds_name='lm1b'.")
        if self.source == "files" and not self.file_patterns:
            raise DataError("data: source='files' needs file_patterns, e.g. ('corpus/**/*.txt',).")
        # A field of another source would be ignored: --config.data.file_patterns=... without
        # source='files' trained on the default corpus, silently. The fix names both command lines that
        # build a DataConfig (pretraining's config flags, the tokenizer CLI's --source).
        if self.file_patterns and self.source != "files":
            raise DataError(f"data: file_patterns={self.file_patterns} apply to source='files' only, not "
                            f"source={self.source!r}; add --config.data.source=files (tokenizer CLI: "
                            "--source=files), or drop file_patterns.")
        if self.tfds_name and self.source != "tfds":
            raise DataError(f"data: tfds_name={self.tfds_name!r} applies to source='tfds' only, not "
                            f"source={self.source!r}; add --config.data.source=tfds (tokenizer CLI: "
                            "--source=tfds), or drop tfds_name.")
        if self.data_dir and self.source in ("stdlib", "synthetic"):  # read by TFDS (tfds, files) only
            raise DataError(f"data: data_dir={self.data_dir!r} applies to source='tfds' or 'files' only; "
                            f"source={self.source!r} reads no TFDS data (drop data_dir, or set source).")
        if self.text_field != "text" and self.source in ("stdlib", "synthetic"):
            raise DataError(f"data: text_field={self.text_field!r} applies to source='tfds' or 'files' (.jsonl) "
                            f"only; source={self.source!r} has no fields.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DataError(f"data: validation_fraction={self.validation_fraction} must be in [0, 1).")
        if self.max_documents is not None and self.max_documents <= 0:
            raise DataError(f"data: max_documents={self.max_documents} must be positive (or None for all).")
        if not self.text_field:
            raise DataError("data: text_field must name the feature that holds the text, e.g. 'text'.")
        if not self.train_split or not self.validation_split:
            raise DataError("data: train_split and validation_split must name TFDS splits, e.g. 'train[:1%]'.")
        if self.source == "tfds" and self.train_split.replace(" ", "") == self.validation_split.replace(" ", ""):
            # The same slice for both would report training loss as held-out loss, silently. Slices
            # that overlap otherwise ('train' / 'train[:10%]') need the dataset's sizes: the source
            # refuses them when it opens the builder (sources._check_disjoint).
            raise DataError(f"data: train_split and validation_split are both {self.train_split!r}, so validation "
                            "would score training data; hold out a slice, e.g. 'train[1%:]' / 'train[:1%]'.")
        if self.source != "tfds" and (self.train_split, self.validation_split) != LOCAL_SPLITS:
            raise DataError(f"data: train_split={self.train_split!r} / validation_split={self.validation_split!r} "
                            f"apply to source='tfds' only; source={self.source!r} splits by validation_fraction.")

    def describe(self) -> str:
        """A short human name for messages: 'stdlib', 'tfds:lm1b', 'files:a/*.txt'."""
        if self.source == "tfds":
            return f"tfds:{self.tfds_name}"
        if self.source == "files":
            return "files:" + ",".join(self.file_patterns)
        if self.source == "synthetic":
            return f"synthetic:markov(order={self.synthetic.order}, V={len(self.synthetic.alphabet)})"
        return "stdlib"

    def replace(self, **overrides: Any) -> "DataConfig":
        return dataclasses.replace(self, **overrides)
