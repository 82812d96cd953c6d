"""Tokenizers for evaluation, named the way a command line names them.

    load_tokenizer("char")                      # CharTokenizer (printable ASCII, one id per character)
    load_tokenizer("run/tokenizers/x.model")    # a SentencePiece model (research.data.Tokenizer)
    load_tokenizer("path/to/hf_folder")         # a Hugging Face tokenizer folder (tokenizer.json, ...)

Every result satisfies research.evaluation.tokenizer.TextTokenizer: encode adds no
special tokens, decode drops them. A Hugging Face tokenizer also has encode_context, the
ids of a model input with the special tokens the tokenizer adds by default (Llama's leading
<s>, T5's trailing </s>), which the evaluation harness encodes contexts with, as lm-eval's
`hf` model does; load_tokenizer(folder, add_bos_token=False) turns them off, as lm-eval's
add_bos_token=False does.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from research.evaluation.tokenizer import CharTokenizer, TextTokenizer
from research.models.config import ConfigError
from research.optional_imports import import_optional

CHAR = "char"
# Files any of which marks a folder as holding a Hugging Face tokenizer: a fast tokenizer's
# tokenizer.json, or the vocabulary files of the slow tokenizers AutoTokenizer builds (T5 and
# Llama's SentencePiece models, XLM-R's sentencepiece.bpe.model, DeBERTa-v2's spm.model, GPT-2's
# vocab.json + merges.txt).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model",
                      "sentencepiece.bpe.model", "spm.model")
# A WordPiece vocab.txt is any text file by its name alone; with the model's config.json beside it
# (older BERT repositories hold just those two), AutoTokenizer builds the tokenizer config.json names.
HF_VOCAB_WITH_CONFIG = ("vocab.txt",)


class HFTokenizer:
    """A transformers tokenizer behind the TextTokenizer interface.

    encode: ids of the text alone (add_special_tokens=False), what fine-tuning and a generated
    or scored continuation need (generation's prompts, as contexts, use encode_context).
    encode_context: ids of a text the model is conditioned on, encoded as lm-eval 0.4.13's
    HFLM.tok_encode encodes it: with the tokenizer's own special tokens (add_bos_token=None),
    none (False) or add_special_tokens=True (True), and none when the text already starts with
    the prefix token's text (bos, else eos).
    eos_id is required (generation stops on it); pad_id falls back to eos.
    """

    def __init__(self, tokenizer: Any, path: str = "", *, add_bos_token: bool | None = None):
        # BERT's tokenizers define no eos: its [SEP] ends a sequence (a stock bert-base folder was
        # refused, though classification and tagging never generate).
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(tokenizer, "sep_token_id", None)
        if eos is None:
            raise ConfigError(f"Hugging Face tokenizer {path!r} defines no eos (nor sep) token; generation needs one "
                              "to stop.")
        self._tokenizer = tokenizer
        self.path = path
        self.eos_id = int(eos)
        self._around: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self.bos_id = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        self.mask_id = None if getattr(tokenizer, "mask_token_id", None) is None else int(tokenizer.mask_token_id)
        # Every id the tokenizer can produce or decode: len() counts the pieces, which misses ids
        # above a gap in the numbering (a vocab with unused ids, added tokens placed higher), and
        # decoding's vocab_limit would then never generate those tokens.
        self.vocab_size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
        self.add_bos_token = add_bos_token
        # lm-eval leaves a text that already opens with the prefix token's text (e.g. "<s>") as
        # it is, so a prompt that spells its own bos does not get a second one.
        self._prefix_text = tokenizer.decode([self.eos_id if self.bos_id is None else self.bos_id])

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_context(self, text: str) -> list[int]:
        """ids of a context / prompt / rolling text, special tokens as lm-eval's hf model adds them."""
        if self.add_bos_token is False or (self._prefix_text and text.startswith(self._prefix_text)):
            return self.encode(text)
        # add_bos_token=None: the tokenizer's own default, which is add_special_tokens=True;
        # True differs from it only through the tokenizer load_tokenizer built with it.
        return list(self._tokenizer.encode(text, add_special_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def special_tokens_around(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(ids before, ids after) the text that the tokenizer's own template adds to one sequence:
        BERT's ([CLS],), ([SEP],); T5's (), (</s>,); Llama's (<s>,), (). Read off the encoding
        of a probe text with and without special tokens, so any template (a fast tokenizer's
        post-processor included) is what the model was trained with."""
        if self._around is None:
            plain = list(self._tokenizer.encode("a", add_special_tokens=False))
            full = list(self._tokenizer.encode("a", add_special_tokens=True))
            start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
            self._around = ((), ()) if start is None or not plain else (
                tuple(full[:start]), tuple(full[start + len(plain):]))
        return self._around

    def encode_words(self, words: Sequence[str]) -> list[list[int]]:
        """ids of each of `words`, as transformers encodes a pre-split text (is_split_into_words=True,
        no special tokens): what a tagger fine-tuned with transformers read. A WordPiece (BERT) word
        is its pieces; a byte-level BPE word carries a leading space only where the tokenizer adds
        a prefix space (add_prefix_space), never a separate space token between words."""
        if not words:
            return []
        split = dict(is_split_into_words=True, add_special_tokens=False)
        encoded = self._tokenizer(list(words), **split)
        try:
            owners = encoded.word_ids()
        except ValueError:  # a Python (slow) tokenizer keeps no word map; it encodes the words one by one
            return [[int(i) for i in self._tokenizer([word], **split)["input_ids"]] for word in words]
        out: list[list[int]] = [[] for _ in words]
        for index, word in zip(encoded["input_ids"], owners):
            if word is not None:
                out[word].append(int(index))
        return out

    def decode_keeping_special(self, ids: Sequence[int]) -> str:
        """The text with special tokens spelled out ("<|im_end|>"): where a stop string may lie."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, path={self.path!r})"


def context_encoder(tokenizer: Any, family: str) -> Callable[[str], list[int]]:
    """How a model input (a prompt, a scored context) is encoded: a Hugging Face tokenizer's
    encode_context (its template's special tokens); this codebase's own tokenizers add none,
    except the eos that closed every encoder input of an encoder-decoder model in pretraining
    (span corruption and prefix LM, research/data/objectives.py): a T5 pretrained here was
    prompted without it, on inputs unlike any it was trained on."""
    own = getattr(tokenizer, "encode_context", None)
    if own is not None:
        return own
    before, after = pretraining_special_tokens(tokenizer, family)
    return (lambda text: [*before, *tokenizer.encode(text), *after]) if before or after else tokenizer.encode


def pretraining_special_tokens(tokenizer: Any, family: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids before, ids after) a model input of this codebase's own pretraining
    (research/data/objectives.py): the eos after an encoder-decoder's encoder input; the bos (where
    the tokenizer has one) and eos around every masked-LM window of an encoder, for a tokenizer
    pretraining runs with (research.data.Tokenizer: special_tokens()); nothing otherwise (a
    decoder's document is tokens + eos, and a prompt is no whole document)."""
    if family == "encoder_decoder":
        return (), (int(tokenizer.eos_id),)
    special = getattr(tokenizer, "special_tokens", None)
    if family != "encoder" or special is None:  # char and other tokenizers no pretraining run uses
        return (), ()
    special = special()
    return (() if special.bos_id is None else (int(special.bos_id),)), (int(special.eos_id),)


def special_tokens_around(tokenizer: Any, family: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids before, ids after) every input of a `family` model carries: a Hugging Face tokenizer's
    template (BERT's [CLS] ... [SEP], T5's ... </s>: HFTokenizer.special_tokens_around), as the
    model was pretrained and transformers encodes; for this codebase's own tokenizers what its
    pretraining put there (pretraining_special_tokens). Without them a BERT's pooler read the first
    word where it was trained on [CLS] (or <s>)."""
    around = getattr(tokenizer, "special_tokens_around", None)
    return around() if around is not None else pretraining_special_tokens(tokenizer, family)


def prefix_token(tokenizer: Any) -> int:
    """The token an empty context, an empty prompt and a text's first rolling window are
    conditioned on. A Hugging Face tokenizer (encode_context): lm-eval's prefix_token_id, bos
    else eos. This codebase's own tokenizers: eos, the token every pretraining document ends
    with (objectives: a decoder's document is tokens + eos, an encoder-decoder's input ends with
    eos); no decoder pretrained here ever read bos (mean log p of a text's first token -5.2 from
    bos, -4.1 from eos, on a tiny decoder)."""
    bos = getattr(tokenizer, "bos_id", None)
    if getattr(tokenizer, "encode_context", None) is not None and bos is not None:
        return int(bos)
    return int(tokenizer.eos_id)


def encode_words(tokenizer: Any, words: Sequence[str]) -> tuple[list[int], list[int | None]]:
    """(ids, the index in ids of each word's first token, None for a word of no token) of `words`
    read as one text. A Hugging Face tokenizer: as transformers encodes pre-split words
    (HFTokenizer.encode_words). This codebase's own: ids are what the tokenizer gives for
    " ".join(words): a SentencePiece word already opens with its word-start piece, so no space
    is put between words (an encoded " " there was a second space, 'def   hello'), while a
    character tokenizer's words are joined by its space."""
    own = getattr(tokenizer, "encode_words", None)
    if own is not None:
        return _joined(own(words), [])
    encode = lambda text: [int(i) for i in tokenizer.encode(text)]
    text = " ".join(words)
    pieces, whole = [encode(word) for word in words], encode(text)
    for between in ([], encode(" ")):
        ids, starts = _joined(pieces, between)
        if ids == whole:
            return ids, starts
    # A token across a word boundary (a SentencePiece model that does not split at whitespace, an
    # empty word's double space): a word starts at the first token the text before it does not give.
    starts, offset, last = [], 0, -1
    for word, alone in zip(words, pieces):
        before = encode(text[:offset]) if offset else []
        start = next((k for k, (a, b) in enumerate(zip(before, whole)) if a != b), min(len(before), len(whole)))
        has_own = bool(alone) and last < start < len(whole)  # not the token an earlier word starts in
        starts.append(start if has_own else None)
        last = start if has_own else last
        offset += len(word) + 1
    return whole, starts


def _joined(pieces: Sequence[Sequence[int]], between: Sequence[int]) -> tuple[list[int], list[int | None]]:
    """(the words' ids with `between` after each but the last, each word's first index or None)."""
    ids: list[int] = []
    starts: list[int | None] = []
    for k, word in enumerate(pieces):
        ids += list(between) if k else []
        starts.append(len(ids) if word else None)
        ids += word
    return ids, starts


def has_hf_tokenizer(folder: str) -> bool:
    """Whether `folder` holds the files of a Hugging Face tokenizer."""
    if not os.path.isdir(folder):
        return False
    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(folder, name))
    return any(map(has, HF_TOKENIZER_FILES)) or (has("config.json") and any(map(has, HF_VOCAB_WITH_CONFIG)))


def load_tokenizer(spec: str, *, num_extra_ids: int = 0, add_bos_token: bool | None = None) -> TextTokenizer:
    """The tokenizer `spec` names: "char", a SentencePiece .model file (with `num_extra_ids` T5
    sentinels above its pieces, as the run that trained it had), or a Hugging Face tokenizer folder.

    add_bos_token (Hugging Face folders only): lm-eval's HFLM option of that name, passed to
    transformers as lm-eval passes it and kept for HFTokenizer.encode_context; None (default)
    leaves the tokenizer's own special tokens on, False turns them off."""
    if add_bos_token is not None and not has_hf_tokenizer(spec):
        raise ConfigError(f"add_bos_token={add_bos_token} applies to Hugging Face tokenizer folders only, and "
                          f"tokenizer {spec!r} is not one; leave add_bos_token unset.")
    if spec == CHAR:
        return CharTokenizer()
    if os.path.isfile(spec):
        from research.data import DataError, Tokenizer
        try:
            return Tokenizer.load(spec, num_extra_ids=num_extra_ids)
        except DataError as e:
            raise ConfigError(f"tokenizer {spec!r}: {e}") from None
    if has_hf_tokenizer(spec):
        # ~2 s to import, and not in the runtime: only Hugging Face tokenizers need it.
        transformers = import_optional("transformers", f"the Hugging Face tokenizer folder {spec!r}")
        # As lm-eval's HFLM: transformers rebuilds the special-token template from add_bos_token.
        options = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(spec, local_files_only=True, **options)
        except (OSError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"tokenizer folder {spec!r} could not be loaded by transformers "
                              f"({first_line}).") from None
        except Exception as e:
            # The tokenizers library (Rust) raises a bare Exception for a tokenizer.json it cannot
            # parse ("data did not match any variant of untagged enum ModelUntagged"): damaged, or
            # written by a newer version. A subclass is some other failure, a bug to see whole.
            if type(e) is not Exception:
                raise
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
            raise ConfigError(f"tokenizer folder {spec!r}: the installed tokenizers library cannot read its "
                              f"tokenizer.json ({first_line}); it is damaged or from a newer version: copy it "
                              "again or upgrade tokenizers.") from None
        return HFTokenizer(tokenizer, spec, add_bos_token=add_bos_token)
    if not os.path.exists(spec):  # a moved file or a typo, not a file of the wrong kind
        raise ConfigError(f"tokenizer {spec!r} does not exist; give 'char', a SentencePiece .model file, or a "
                          "Hugging Face tokenizer folder.")
    raise ConfigError(f"tokenizer {spec!r} is neither 'char', a SentencePiece .model file, nor a folder with "
                      f"one of {list(HF_TOKENIZER_FILES)} (or config.json with vocab.txt); give one of those.")


def check_vocabulary(tokenizer: TextTokenizer, vocab_size: int, model_name: str) -> None:
    """ConfigError when the tokenizer can emit ids the model's embedding table lacks."""
    size = getattr(tokenizer, "vocab_size", None)
    if size is not None and size > vocab_size:
        raise ConfigError(f"tokenizer {tokenizer!r} has {size} ids but model {model_name!r} embeds only "
                          f"{vocab_size}; pass the tokenizer the model was trained with (--tokenizer).")
