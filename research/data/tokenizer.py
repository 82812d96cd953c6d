"""SentencePiece tokenizers: train on a corpus (cached in a workdir), load, encode, decode.

Train from the command line (prints the cached .model path):

    python -m research.data.tokenizer --train --source=stdlib --vocab_size=8192 \\
        --model_type=bpe --workdir=/tmp/tok
    python -m research.data.tokenizer --model=/tmp/tok/tokenizers/<name>.model --encode="def f(): pass"

Trained models reserve ids 0..5 for pad, eos, unk, bos, <mask>, newline (config.SPECIAL_PIECES;
T5's pad 0 / eos 1 / unk 2), use identity normalization by default so whitespace
round-trips, and fall back to UTF-8 byte pieces for unseen characters.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import sentencepiece as spm

from research.atomic_files import unwritable_reason, write_bytes_atomically
from research.data.config import SPECIAL_PIECES, DataConfig, DataError, TokenizerConfig

log = logging.getLogger(__name__)

# SentencePiece rejects longer "sentences"; documents are fed in chunks cut at newlines.
_MAX_CHUNK_CHARS = 4096
# A unigram vocabulary depends on SentencePiece's thread count (1, 2 and 4 threads learned different
# pieces from the same text), so it is fixed rather than min(4, cpu_count): the same corpus and
# config then train the same tokenizer on every machine. BPE's pieces do not depend on it.
_TRAINING_THREADS = 4


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """The ids objectives need, independent of SentencePiece (tests build these by hand)."""

    vocab_size: int  # all ids, extra ids included
    pad_id: int
    eos_id: int
    bos_id: int | None  # None: the model has no bos piece (T5)
    mask_id: int | None  # None: no <mask> / [MASK] piece (masked LM then needs one)
    num_extra_ids: int = 0  # sentinels: extra id i = vocab_size - 1 - i
    special_ids: tuple[int, ...] = ()  # never masked or chosen as a random replacement

    def sentinel_id(self, index: int) -> int:
        return self.vocab_size - 1 - index


class Tokenizer:
    """A SentencePiece model plus `num_extra_ids` T5 sentinels above its pieces; picklable."""

    def __init__(self, model_proto: bytes, *, num_extra_ids: int = 0, path: str | None = None):
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.num_extra_ids = num_extra_ids
        self.path = path
        # Empty bytes parse as a model with no pieces, which then "had no eos piece": the wrong lead.
        if self._sp.get_piece_size() == 0:
            raise DataError(f"{path or 'the SentencePiece model'!r} holds no pieces ({len(model_proto)} bytes), so it "
                            "is not a SentencePiece model; give a .model file (a truncated copy: copy it again).")
        if self._sp.eos_id() < 0:  # a legal SentencePiece option (eos_id=-1), and -1 would reach batches as a token
            raise DataError(f"{path or 'the SentencePiece model'!r} has no eos piece (eos_id=-1), and objectives end "
                            "every document with eos; train it with an eos_id (SentencePieceTrainer's eos_id=1), or train "
                            "one here (python -m research.data.tokenizer --train).")

    @classmethod
    def load(cls, path: str, *, num_extra_ids: int = 0) -> "Tokenizer":
        if "://" not in path and os.path.isdir(path):
            raise DataError(f"tokenizer model {path!r} is a directory, not a SentencePiece .model file; give the "
                            "file itself (a run trains its own into <workdir>/tokenizers/).")
        if not _is_model_file(path):
            raise DataError(f"tokenizer model {path!r} does not exist; give a SentencePiece .model file.")
        with (_cloud_path(path) if "://" in path else pathlib.Path(path)).open("rb") as f:
            proto = f.read()
        try:
            return cls(proto, num_extra_ids=num_extra_ids, path=path)
        except RuntimeError:
            raise DataError(f"{path!r} is not a SentencePiece model; give a .model file.") from None

    @property
    def model_proto(self) -> bytes:
        """The SentencePiece model, serialized (the .model file's bytes)."""
        return self._proto

    def __getstate__(self):
        return {"proto": self._proto, "num_extra_ids": self.num_extra_ids, "path": self.path}

    def __setstate__(self, state):
        self.__init__(state["proto"], num_extra_ids=state["num_extra_ids"], path=state["path"])

    @property
    def piece_size(self) -> int:
        """Pieces in the SentencePiece model (extra ids not included)."""
        return self._sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        """Every id this tokenizer can emit: pieces + extra ids. A model needs V >= this."""
        return self.piece_size + self.num_extra_ids

    def _optional_id(self, value: int) -> int | None:
        return value if value >= 0 else None

    @property
    def pad_id(self) -> int:
        """The pad piece, or 0 when the model has none (padding is masked by segment ids anyway)."""
        return self._optional_id(self._sp.pad_id()) or 0

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def bos_id(self) -> int | None:
        return self._optional_id(self._sp.bos_id())

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def mask_id(self) -> int | None:
        for piece in ("<mask>", "[MASK]"):
            index = self._sp.piece_to_id(piece)
            if index != self._sp.unk_id() and self._sp.id_to_piece(index) == piece:
                return index
        return None

    def sentinel_id(self, index: int) -> int:
        """T5 sentinel `index` (<extra_id_index>): counts down from the top of the vocabulary."""
        return self.vocab_size - 1 - index

    def special_tokens(self) -> SpecialTokens:
        control = [i for i in range(self.piece_size) if self._sp.is_control(i)]
        extra = list(range(self.piece_size, self.vocab_size))
        # <unk> too: it is no token of the text, so masked LM must neither predict nor insert it
        # (Hugging Face's DataCollatorForLanguageModeling counts unk among the special tokens).
        unk = [self.unk_id] if self.unk_id >= 0 else []
        # The mask too where it is a user-defined piece (a model trained elsewhere): not a control
        # piece, it was drawn as a "random" replacement and a literal one chosen as a target.
        mask = [] if self.mask_id is None else [self.mask_id]
        return SpecialTokens(vocab_size=self.vocab_size, pad_id=self.pad_id, eos_id=self.eos_id,
                             bos_id=self.bos_id, mask_id=self.mask_id, num_extra_ids=self.num_extra_ids,
                             special_ids=tuple(sorted(set(control + extra + unk + mask + [self.pad_id]))))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text`, int32 [N], without bos/eos (objectives add those)."""
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def _check_ids(self, ids: np.ndarray) -> None:
        """DataError naming the first id outside [0, vocab_size). Extra id i is vocab_size - 1 - i,
        so without this an id past the top (a padded model vocabulary) became '<extra_id_-56>'."""
        outside = ids[(ids < 0) | (ids >= self.vocab_size)]
        if outside.size:
            raise DataError(f"token id {int(outside[0])} is outside this tokenizer's vocabulary [0, {self.vocab_size}) "
                            f"({self.piece_size} pieces + {self.num_extra_ids} extra ids); a model whose vocabulary "
                            "is padded above it must decode with vocab_limit (research.decoding.vocab_limit_for).")

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; control pieces decode to nothing, extra ids to '<extra_id_i>'. An id
        outside [0, vocab_size) is a DataError, not text."""
        ids = np.asarray(ids).reshape(-1)
        self._check_ids(ids)
        out, run = [], []
        for index in ids.tolist():
            if index >= self.piece_size:
                out.append(self._decode_run(run, after_sentinel=bool(out)))
                run = []
                out.append(f"<extra_id_{self.vocab_size - 1 - index}>")
            else:
                run.append(index)
        out.append(self._decode_run(run, after_sentinel=bool(out)))
        return "".join(out)

    def _decode_run(self, run: list[int], *, after_sentinel: bool) -> str:
        """Text of the pieces between sentinels. SentencePiece drops one leading "▁" as the dummy
        prefix it adds to a text's start; after a sentinel it is the text's own space (T5's
        "<extra_id_0> value"), so it is put back, as decoding all pieces at once keeps it. Exactly
        one: a run opening with "▁▁" (indented code) already decodes to " ", and still lost one."""
        text = self._sp.decode(run)
        first = next((i for i in run if not self._sp.is_control(i)), None)
        if after_sentinel and first is not None and self._strips_leading_space(first):
            text = " " + text
        return text

    def _strips_leading_space(self, index: int) -> bool:
        """Whether SentencePiece drops the leading "▁" of piece `index` at a text's start, asked of
        SentencePiece itself: whether it does depends on the model's normalizer settings."""
        piece = self._sp.id_to_piece(index)
        return piece.startswith("\u2581") and self._sp.decode([index]) == piece[1:].replace("\u2581", " ")

    def id_to_piece(self, index: int) -> str:
        self._check_ids(np.asarray([index]))
        return f"<extra_id_{self.vocab_size - 1 - index}>" if index >= self.piece_size else self._sp.id_to_piece(int(index))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, path={self.path!r})"


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """One-line error when the tokenizer emits ids a model's embedding table cannot hold."""
    if tokenizer.vocab_size > model_vocab_size:
        raise DataError(
            f"tokenizer vocab_size={tokenizer.vocab_size} is larger than the model's vocab_size="
            f"{model_vocab_size}; raise the model's vocab_size or train a smaller tokenizer."
        )


def encoder_decoder_ids(tokenizer_config: TokenizerConfig, family: str, model_fields: Mapping[str, Any]
                        ) -> dict[str, int]:
    """{field: pad} for pad_token_id and decoder_start_token_id where an encoder-decoder's config.model
    (`model_fields`) leaves them unset and the tokenizer's pad is not their default 0 ({} for other
    families and pad-0 tokenizers: those configs stay as they were). Its decoder inputs start with the
    pad in training (objectives), while generation, scoring and to_hf start from decoder_start_token_id:
    a given value other than the pad is a DataError. Only an encoder-decoder's given model_path is read
    here (the run loads its tokenizer later anyway)."""
    if family != "encoder_decoder":
        return {}
    pad = 0  # train_tokenizer's pad_id
    if tokenizer_config.model_path:
        pad = Tokenizer.load(tokenizer_config.model_path, num_extra_ids=tokenizer_config.num_extra_ids).pad_id
    given = {field: model_fields.get(field) for field in ("pad_token_id", "decoder_start_token_id")}
    for field, value in given.items():
        if value is not None and value != pad:
            raise DataError(f"model.{field}={value} is not the pad id {pad} of the tokenizer "
                            f"({tokenizer_config.model_path or 'trained here'}), from which the decoder's inputs "
                            f"start in training; leave model.{field} unset or give {pad}.")
    return {field: pad for field, value in given.items() if value is None and pad != 0}


def _cloud_path(path: str) -> Any:
    """`path` (a URL: gs://...) as etils.epath.Path, which reads and writes cloud storage (os and
    open took 'gs://b/x' for a local folder ./gs:/b/x, which never reached the bucket)."""
    from etils import epath
    return epath.Path(path)


def _is_model_file(path: str) -> bool:
    return _cloud_path(path).is_file() if "://" in path else os.path.isfile(path)


def _write_model(path: str, proto: bytes) -> None:
    """Write a .model file whole: locally through a temporary renamed over it (concurrent trainers,
    several hosts, never see half a file); to cloud storage as one object, which is whole or absent."""
    if "://" in path:
        _cloud_path(path).parent.mkdir(parents=True, exist_ok=True)
        _cloud_path(path).write_bytes(proto)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomically(path, proto)


def _training_chunks(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Documents cut at newlines into <= _MAX_CHUNK_CHARS pieces, at most `max_chars` in all."""
    total = 0
    for text in texts:
        start = 0
        while start < len(text) and total < max_chars:
            end = min(len(text), start + _MAX_CHUNK_CHARS)
            if end < len(text):
                cut = text.rfind("\n", start, end)
                end = cut + 1 if cut > start else end
            chunk = text[start:end][: max_chars - total]
            total += len(chunk)
            start = end
            if chunk.strip():
                yield chunk
        if total >= max_chars:
            return


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig, model_path: str) -> Tokenizer:
    """Train a SentencePiece model on `texts` and write it to `model_path` (atomically)."""
    _check_writable(model_path)
    chunks = list(_training_chunks(texts, config.max_training_chars))
    if not chunks:
        raise DataError("tokenizer: the training text is empty; give a corpus with some text.")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(chunks), model_writer=model,
            model_type=config.model_type, vocab_size=config.vocab_size,
            byte_fallback=config.byte_fallback, character_coverage=config.character_coverage,
            normalization_rule_name=config.normalization, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=True,
            pad_id=0, eos_id=1, unk_id=2, bos_id=3,
            control_symbols=[SPECIAL_PIECES[4]], user_defined_symbols=[SPECIAL_PIECES[5]],
            max_sentence_length=4 * _MAX_CHUNK_CHARS, num_threads=_TRAINING_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(_training_failure(str(e), config, sum(map(len, chunks)))) from None
    _write_model(model_path, model.getvalue())
    return Tokenizer(model.getvalue(), num_extra_ids=config.num_extra_ids, path=model_path)


def _check_writable(model_path: str) -> None:
    """DataError before any training when `model_path` cannot be written (a workdir under a file):
    it was a NotADirectoryError traceback after the whole training. A URL (a model written to a
    bucket from the tokenizer CLI) is left to the storage library."""
    if "://" in model_path:
        return
    reason = unwritable_reason(os.path.dirname(os.path.abspath(model_path)))
    if reason:
        raise DataError(f"tokenizer: cannot write {model_path!r} ({reason}); give a writable workdir.")


def _training_failure(message: str, config: TokenizerConfig, num_chars: int) -> str:
    """SentencePiece's failure as one line whose advice fits it: too few pieces for the corpus'
    characters needs a larger vocab_size, too little text for vocab_size a smaller one."""
    reason = message.strip().splitlines()[-1]
    found = re.search(r"smaller than required_chars\. \d+ vs (\d+)", reason)
    if found:
        return (f"tokenizer: vocab_size={config.vocab_size} cannot hold the {found.group(1)} pieces the special "
                f"pieces and the corpus' characters (character_coverage={config.character_coverage}) need; raise "
                f"vocab_size to at least {found.group(1)}, or lower character_coverage.")
    found = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", reason)
    if found:
        return (f"tokenizer: vocab_size={config.vocab_size} is more pieces than {num_chars} chars of training "
                f"text yield; lower vocab_size to at most {found.group(1)}, or train on more text.")
    return (f"tokenizer: SentencePiece could not train vocab_size={config.vocab_size} on {num_chars} chars "
            f"({reason}); check vocab_size and the training text.")


def cached_model_path(data_config: DataConfig, workdir: str, *, legacy: bool = False) -> str:
    """Where `build_tokenizer` caches the model trained for `data_config` under `workdir`.
    legacy=True: the name the same model had before 2026-12-06 (no thread count for unigram,
    the file patterns and data_dir for source="files"), which runs trained then still use."""
    tok = data_config.tokenizer
    key = dataclasses.asdict(data_config)
    key["tokenizer"] = {k: v for k, v in key["tokenizer"].items() if k not in ("model_path", "num_extra_ids")}
    if tok.model_type == "unigram" and not legacy:  # its pieces depend on the thread count (min(4, cpu_count) before)
        key["tokenizer"]["num_threads"] = _TRAINING_THREADS
    if data_config.source == "files":
        # The files themselves, not how they are named: an edited corpus is a different corpus, while a
        # relative or overlapping pattern, or another data_dir (where the prepared copy lives), is not.
        from research.data.text_files import expand_patterns
        key["files"] = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns)
                        for p in expand_patterns(data_config.file_patterns)]
        if not legacy:
            del key["file_patterns"], key["data_dir"]
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = f"{data_config.source}_{tok.model_type}_{tok.vocab_size}_{digest}.model"
    return os.path.join(workdir, "tokenizers", name)


def build_tokenizer(data_config: DataConfig, workdir: str) -> Tokenizer:
    """Load `data_config.tokenizer.model_path`, or train on the train split (once; cached in workdir)."""
    tok = data_config.tokenizer
    if tok.model_path:
        return Tokenizer.load(tok.model_path, num_extra_ids=tok.num_extra_ids)
    path = cached_model_path(data_config, workdir)
    if _is_model_file(path):
        return Tokenizer.load(path, num_extra_ids=tok.num_extra_ids)
    # A model cached under the name it had before: a run trained with it resumes with it (trained
    # again under the new name, a unigram model could get other pieces on a machine of < 4 cores).
    legacy = cached_model_path(data_config, workdir, legacy=True)
    if _is_model_file(legacy):
        return Tokenizer.load(legacy, num_extra_ids=tok.num_extra_ids)
    _check_writable(path)  # before reading (for source="files", preparing) the corpus
    _warn_about_other_models(path)
    from research.data.sources import document_source
    texts = document_source(data_config, "train")
    return train_tokenizer((texts[i] for i in range(len(texts))), tok, path)


def _warn_about_other_models(path: str) -> None:
    """Say so when training beside models of the same kind trained for another corpus, config or
    trainer (unigram models cached before the thread count was fixed): a resumed run would
    otherwise switch tokenizers silently."""
    prefix = os.path.basename(path).rsplit("_", 1)[0] + "_"
    folder = os.path.dirname(path)
    names = ([p.name for p in _cloud_path(folder).iterdir()] if _cloud_path(folder).is_dir() else []) \
        if "://" in folder else os.listdir(folder) if os.path.isdir(folder) else []
    others = sorted(n for n in names if n.startswith(prefix) and n.endswith(".model"))
    if others:
        log.warning("training tokenizer %s beside %s, trained for another corpus, config or trainer version; a "
                    "run that trained with one of those keeps it only with data.tokenizer.model_path=<it>.",
                    path, others)


def build_shared_tokenizer(data_config: DataConfig, workdirs: Sequence[str]) -> Tokenizer:
    """`build_tokenizer` for runs trained together on one corpus: trained once (in the first
    workdir), then copied to each other workdir that lacks it, so every workdir holds its
    tokenizer as if trained alone (training it K times took 6-13 s per model on the stdlib
    corpus).

    The validation split is opened first: a corpus without one (a TFDS dataset with only 'train',
    validation_fraction=0) is refused in one line before a tokenizer trains for the run that cannot
    evaluate, and is lost with its withdrawn workdir."""
    from research.data.sources import document_source
    document_source(data_config, "validation")
    tokenizer = build_tokenizer(data_config, workdirs[0])
    if data_config.tokenizer.model_path:
        return tokenizer
    for workdir in workdirs[1:]:
        path = cached_model_path(data_config, workdir)
        if not _is_model_file(path):
            _write_model(path, tokenizer.model_proto)
    return tokenizer


def _main(argv: Sequence[str]) -> None:
    try:
        _run_cli()
    except DataError as e:  # a user mistake: its one line, not a traceback
        raise SystemExit(f"error: {e}") from None


def _run_cli() -> None:
    from absl import flags
    f = flags.FLAGS
    if f.model:
        tokenizer = Tokenizer.load(f.model, num_extra_ids=f.num_extra_ids)
    elif f.train:
        data_config = DataConfig(
            source=f.source, tfds_name=f.tfds_name, data_dir=f.data_dir, file_patterns=tuple(f.files),
            text_field=f.text_field, max_documents=f.max_documents,
            tokenizer=TokenizerConfig(model_type=f.model_type, vocab_size=f.vocab_size,
                                      byte_fallback=f.byte_fallback, normalization=f.normalization,
                                      max_training_chars=f.max_training_chars, num_extra_ids=f.num_extra_ids))
        tokenizer = build_tokenizer(data_config, f.workdir)
    else:
        raise DataError("give --train (with --workdir and a corpus) or --model=path/to.model.")
    print(f"{tokenizer.path}\tvocab_size={tokenizer.vocab_size}")
    if f.encode:
        ids = tokenizer.encode(f.encode)
        print(ids.tolist())
        print(repr(tokenizer.decode(ids)))


def _define_flags() -> None:
    # Defined only when run as a script, so importing this module adds no global flags.
    from absl import flags
    flags.DEFINE_bool("train", False, "Train (or reuse the cached) tokenizer for the corpus below.")
    flags.DEFINE_string("model", "", "Load this .model instead of training.")
    flags.DEFINE_string("workdir", "/tmp/research_tokenizers", "Cache directory for trained models.")
    flags.DEFINE_enum("source", "stdlib", ["stdlib", "tfds", "files"], "Corpus to train on.")
    flags.DEFINE_string("tfds_name", "", "TFDS dataset name when --source=tfds.")
    flags.DEFINE_string("data_dir", "", "TFDS data_dir.")
    flags.DEFINE_list("files", [], "Glob(s) when --source=files.")
    flags.DEFINE_string("text_field", "text", "Text feature / JSON key.")
    flags.DEFINE_integer("max_documents", None, "Use at most this many documents.")
    flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "SentencePiece algorithm.")
    flags.DEFINE_integer("vocab_size", 8192, "Number of SentencePiece pieces.")
    flags.DEFINE_bool("byte_fallback", True, "Encode unseen characters as UTF-8 bytes.")
    flags.DEFINE_enum("normalization", "identity", ["identity", "nmt_nfkc"], "Text normalization.")
    flags.DEFINE_integer("max_training_chars", 20_000_000, "Train on at most this many characters.")
    flags.DEFINE_integer("num_extra_ids", 0, "T5 sentinel ids appended above the pieces.")
    flags.DEFINE_string("encode", "", "Also encode and decode this text.")


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(_main)
