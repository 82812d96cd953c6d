"""PreparationConfig: which stages run, with which thresholds, on which engine.

Frozen, typed dataclasses validated in `__post_init__` (a bad value fails with one line
before any file is read). Quality thresholds default to the published values: Gopher
(Rae et al. 2021, "Scaling Language Models", Appendix A) and C4 (Raffel et al. 2020,
Section 2.2), as implemented by datatrove's filters.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, Mapping

from research.data.config import DataError

UnicodeForm = Literal["NFC", "NFKC"]
InvalidUtf8 = Literal["repair", "drop"]
Executor = Literal["local", "slurm", "ray"]


def _nested(value: Any, cls: type) -> Any:
    return cls(**value) if isinstance(value, Mapping) else value


def _check_number(section: str, name: str, value: Any, *, low: float, high: float | None = None,
                  integer: bool = False, optional: bool = True) -> None:
    """A DataError unless `value` is a number (an int if `integer`) in [low, high], or None if `optional`.
    datatrove's filters check none of this: a bad threshold is a TypeError in a worker, or a silent drop-all."""
    off = " or None (the rule off)" if optional else ""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise DataError(f"{section}: {name}={value!r} must be {'an integer' if integer else 'a number'}{off}.")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise DataError(f"{section}: {name}={value!r} must be {bounds}{off}.")


def _check_not_zero(section: str, config: Any, names: tuple[str, ...]) -> None:
    """datatrove tests these thresholds for truth (`if threshold and ...`): 0 turned the rule off
    instead of dropping every document the rule counts anything in."""
    for name in names:
        if getattr(config, name) == 0:
            raise DataError(f"{section}: {name}=0 would turn the rule off (datatrove reads 0 as unset); give a tiny "
                            f"positive value (e.g. 1e-9) to drop any document it counts something in, or None for off.")


def _check_order(section: str, low_name: str, low: Any, high_name: str, high: Any) -> None:
    if low is not None and high is not None and low > high:
        raise DataError(f"{section}: {low_name}={low} is above {high_name}={high}; every document would be dropped. "
                        f"Lower {low_name} or raise {high_name}.")


def _check_flags(section: str, config: Any) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(field.default, bool) and not isinstance(value, bool):
            raise DataError(f"{section}: {field.name}={value!r} must be True or False.")


def _ngram_fractions(section: str, name: str, pairs: Any) -> tuple[tuple[int, float], ...]:
    """((n, fraction), ...) from a tuple or list of pairs, each n >= 1 and fraction in [0, 1]."""
    example = "e.g. ((2, 0.2), (3, 0.18))"
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (tuple, list)):
        raise DataError(f"{section}: {name}={pairs!r} must be a tuple of (n, fraction) pairs, {example}.")
    for pair in pairs:
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or isinstance(pair[0], bool)
                or not isinstance(pair[0], int) or pair[0] < 1 or isinstance(pair[1], bool)
                or not isinstance(pair[1], (int, float)) or not 0 <= pair[1] <= 1):
            raise DataError(f"{section}: {name} entry {pair!r} must be (n, fraction) with an integer n >= 1 and a "
                            f"fraction in [0, 1], {example}.")
    return tuple(tuple(pair) for pair in pairs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class StandardiseConfig:
    """Unicode normalisation, line endings, whitespace and control characters."""

    unicode_form: UnicodeForm = "NFC"  # NFC keeps code and typography; NFKC also folds compatibility forms
    invalid_utf8: InvalidUtf8 = "repair"  # repair: undecodable bytes become U+FFFD; drop: the document goes
    max_invalid_fraction: float = 0.01  # even when repairing, drop documents with more bad bytes than this
    max_blank_lines: int = 2  # longer runs of blank lines are cut to this many

    def __post_init__(self):
        if self.unicode_form not in UnicodeForm.__args__:
            raise DataError(f"standardise: unicode_form={self.unicode_form!r} is not one of {UnicodeForm.__args__}.")
        if self.invalid_utf8 not in InvalidUtf8.__args__:
            raise DataError(f"standardise: invalid_utf8={self.invalid_utf8!r} is not one of {InvalidUtf8.__args__}.")
        if not 0.0 <= self.max_invalid_fraction <= 1.0:
            raise DataError(f"standardise: max_invalid_fraction={self.max_invalid_fraction} must be in [0, 1].")
        if self.max_blank_lines < 0:
            raise DataError(f"standardise: max_blank_lines={self.max_blank_lines} must be >= 0.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GopherQualityConfig:
    """Gopher's quality rules; None turns one rule off. Defaults are the paper's."""

    enabled: bool = True
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1  # '#' and '...' per word
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8  # at least this share of words holds a letter
    min_stop_words: int | None = 2  # of: the, be, to, of, and, that, have, with

    def __post_init__(self):
        section = "gopher_quality"
        _check_flags(section, self)
        for name in ("min_doc_words", "max_doc_words", "min_stop_words"):
            _check_number(section, name, getattr(self, name), low=0, integer=True)
        for name in ("min_avg_word_length", "max_avg_word_length", "max_symbol_word_ratio"):
            _check_number(section, name, getattr(self, name), low=0)
        for name in ("max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "max_non_alpha_words_ratio"):
            _check_number(section, name, getattr(self, name), low=0, high=1)
        _check_not_zero(section, self, ("max_doc_words", "max_avg_word_length", "max_symbol_word_ratio",
                                        "max_bullet_lines_ratio", "max_ellipsis_lines_ratio"))
        _check_order(section, "min_doc_words", self.min_doc_words, "max_doc_words", self.max_doc_words)
        _check_order(section, "min_avg_word_length", self.min_avg_word_length,
                     "max_avg_word_length", self.max_avg_word_length)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GopherRepetitionConfig:
    """Gopher's repetition rules (duplicate lines / paragraphs / n-grams); defaults are the paper's."""

    enabled: bool = True
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __post_init__(self):
        section = "gopher_repetition"
        _check_flags(section, self)
        for name in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"):
            _check_number(section, name, getattr(self, name), low=0, high=1)
        _check_not_zero(section, self, ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"))
        for name in ("top_n_grams", "dup_n_grams"):  # configs give lists: tuples again
            object.__setattr__(self, name, _ngram_fractions(section, name, getattr(self, name)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class C4QualityConfig:
    """C4's rules: keep lines ending in terminal punctuation with >= 3 words, drop pages with
    < 5 sentences, 'lorem ipsum' or '{'. Off by default: they delete code and markdown.

    3 words and 5 sentences are the paper's text (Raffel et al. 2020, Section 2.2) and datatrove's
    defaults; the code that built the released C4 (tensorflow_datasets/text/c4_utils.py) uses the
    opposite, _MIN_WORDS_PER_LINE = 5 and _MIN_NUM_SENTENCES = 3: set min_words_per_line=5,
    min_num_sentences=3 to reproduce the released corpus."""

    enabled: bool = False
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5  # -1 turns it off
    min_words_per_line: int = 3  # -1 turns it off
    max_word_length: int = 1000  # -1 turns it off
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def __post_init__(self):
        section = "c4_quality"
        _check_flags(section, self)
        for name in ("min_num_sentences", "min_words_per_line"):
            _check_number(section, name, getattr(self, name), low=-1, integer=True, optional=False)
        _check_number(section, "max_word_length", self.max_word_length, low=-1, integer=True, optional=False)
        if self.max_word_length == 0:  # every line has a word longer than 0 characters
            raise DataError(f"{section}: max_word_length=0 would drop every line; give a length >= 1, or -1 to turn "
                            "the rule off.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlocklistConfig:
    """Drop documents containing any of `words` (case-insensitive, whole words or phrases)."""

    words: tuple[str, ...] = ()
    words_file: str = ""  # one word or phrase per line, added to `words`

    def __post_init__(self):
        object.__setattr__(self, "words", (self.words,) if isinstance(self.words, str) else tuple(self.words))
        for word in self.words:
            # An empty alternative in the blocklist's regex matches everywhere: every document would go.
            if not isinstance(word, str) or not word.strip():
                raise DataError(f"blocklist: words entry {word!r} must be a non-blank word or phrase (an empty one "
                                f"blocks every document); remove it from words={self.words!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Exact dedup on normalised text; MinHash LSH near-dedup (datatrove's minhash stages).

    Near-dedup shingles are shingle_size-word n-grams (document_stages.SHINGLE_WORDS) of the text
    as datatrove's simplify_text leaves it, in this order: lower-cased; with normalize_numbers, each
    run of digits (any script, with one decimal part such as 3.14 or 2,5) replaced by '0';
    datatrove's punctuation list (ASCII, CJK and typographic marks, control characters) replaced
    by spaces; whitespace runs collapsed; diacritics removed
    (combining marks after NFD). Two tables or logs that differ only in their numbers are then
    the same text: set normalize_numbers=False to compare their numbers too."""

    exact: bool = True
    near: bool = True
    # The Jaccard similarity of shingle sets (normalised as above) that MinHash LSH's bands x rows are
    # chosen for: at the default 0.8 (13 bands x 8 rows, lsh.py) a pair at 0.8 is found with probability
    # 0.91, at 0.9 1.00, at 0.7 0.54: a soft threshold, not a cut.
    jaccard_threshold: float = 0.8
    shingle_size: int = 5  # words per shingle
    num_permutations: int = 112  # minhash hashes, split into bands x rows chosen for the threshold
    seed: int = 1
    normalize_numbers: bool = True  # digit runs read as '0' before shingling (FineWeb's choice, datatrove's default)

    def __post_init__(self):
        _check_flags("dedup", self)
        if not 0.0 < self.jaccard_threshold < 1.0:
            raise DataError(f"dedup: jaccard_threshold={self.jaccard_threshold} must be in (0, 1).")
        # Above ~100 words a shingle outgrows most paragraphs (a document shorter than one is never
        # compared) and hashing costs grow with it: 10,000 took 1.3 s per document, 10**6 hung.
        if not 1 <= self.shingle_size <= 100:
            raise DataError(f"dedup: shingle_size={self.shingle_size} must be in [1, 100] words (5 is usual).")
        if self.num_permutations < 2:
            raise DataError(f"dedup: num_permutations={self.num_permutations} must be >= 2.")
        # numpy's generator range: outside it the minhash stage failed after the whole reading stage.
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise DataError(f"dedup: seed={self.seed!r} must be a whole number in [0, {2**32 - 1}].")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecontaminationConfig:
    """Drop documents sharing a word n-gram with an evaluation item (GPT-3, Appendix C):
    n is each task's 5th-percentile item length, clipped to [min_ngram, max_ngram];
    items shorter than min_ngram words cannot be matched reliably and are skipped."""

    tasks: tuple[str, ...] = ()  # research.evaluation catalog names, or .json task files
    all_catalog_tasks: bool = True  # also every research.evaluation catalog task
    min_ngram: int = 8
    max_ngram: int = 13
    num_test: int | None = None  # items per generated task (None: the task's default)

    def __post_init__(self):
        object.__setattr__(self, "tasks", (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks))
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise DataError(f"decontamination: need 1 <= min_ngram={self.min_ngram} <= max_ngram={self.max_ngram}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """The TFDS dataset written: `num_shards` hash partitions (the unit of parallel work after
    reading, and of the output files); split by a hash of each document's normalised text.
    num_shards also decides which member of a near-duplicate cluster is kept (datatrove's
    union-find keeps one by its partition): datasets prepared with other num_shards hold the
    same number of documents but not always the same copies (17 of 47 removals differed
    between 2 and 3 shards on a planted corpus)."""

    validation_fraction: float = 0.05
    num_shards: int = 4
    version: str = "1.0.0"

    def __post_init__(self):
        if not 0.0 < self.validation_fraction < 1.0:
            raise DataError(f"output: validation_fraction={self.validation_fraction} must be in (0, 1) "
                            "(the dataset has train and validation splits).")
        if self.num_shards < 1:
            raise DataError(f"output: num_shards={self.num_shards} must be >= 1.")
        # TFDS reads <name>/<version> only for a version x.y.z: another one was published, then not loadable.
        if not re.fullmatch(r"\d+\.\d+\.\d+", str(self.version)):
            raise DataError(f"output: version={self.version!r} must be a TFDS version x.y.z, e.g. "
                            "--config.output.version=1.0.0.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    """The datatrove executor: local (processes on this machine), slurm, or ray.

    read_tasks: how many tasks share the reading and document stages; workers: how many
    tasks run at once (local). Neither changes the output.
    """

    executor: Executor = "local"
    read_tasks: int = 4
    workers: int = 1
    slurm_partition: str = ""
    slurm_time: str = "04:00:00"
    slurm_cpus_per_task: int = 1
    slurm_mem_per_cpu_gb: int = 2
    slurm_env_command: str = ""  # e.g. "source ~/venv/bin/activate"

    def __post_init__(self):
        if self.executor not in Executor.__args__:
            raise DataError(f"execution: executor={self.executor!r} is not one of {Executor.__args__}.")
        if self.read_tasks < 1 or self.workers < 1:
            raise DataError(f"execution: read_tasks={self.read_tasks} and workers={self.workers} must be >= 1.")
        if self.executor == "slurm" and not self.slurm_partition:
            raise DataError("execution: executor='slurm' needs slurm_partition, e.g. --config.execution.slurm_partition=cpu.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreparationConfig:
    """Every stage's settings; stages run in the order of the fields below."""

    standardise: StandardiseConfig = StandardiseConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    c4_quality: C4QualityConfig = C4QualityConfig()
    blocklist: BlocklistConfig = BlocklistConfig()
    decontamination: DecontaminationConfig = DecontaminationConfig()
    dedup: DedupConfig = DedupConfig()
    output: OutputConfig = OutputConfig()
    execution: ExecutionConfig = ExecutionConfig()
    max_examples: int = 3  # dropped documents shown per rule in the report

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if dataclasses.is_dataclass(field.default):
                object.__setattr__(self, field.name, _nested(getattr(self, field.name), type(field.default)))
        if isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int) or self.max_examples < 0:
            raise DataError(f"prepare_data config: max_examples={self.max_examples!r} (dropped documents shown per "
                            "rule in the report) must be a whole number >= 0, e.g. --config.max_examples=3.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PreparationConfig":
        """From a (nested) dict or ConfigDict; an unknown key is a one-line error."""
        values = dict(values)
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise DataError(f"prepare_data config: unknown field {key!r}; known: {sorted(known)}.")
            default = known[key].default
            if dataclasses.is_dataclass(default):
                value = dict(value)
                sub_fields = {f.name for f in dataclasses.fields(default)}
                unknown = sorted(set(value) - sub_fields)
                if unknown:
                    raise DataError(f"prepare_data config: {key} has no field(s) {unknown}; known: {sorted(sub_fields)}.")
                value = type(default)(**value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
