"""The tokenizer interface the harness needs, and a character-level tokenizer.

Any object with `encode`, `decode`, `eos_id` and `pad_id` works (research.data's
SentencePiece `Tokenizer` does). `bos_id` and `mask_id` are optional: the harness
reads them with getattr, using mask for encoder-only (masked-LM) scoring. So is
`encode_context(text)`: the ids of a text the model is conditioned on (a context, a prompt,
a rolling text) with the special tokens the model expects there (HFTokenizer: the
tokenizer's default, as lm-eval's `hf` model encodes contexts, and bos, else eos, as the
prefix of an empty context); without it the harness encodes those with `encode` too, and
the prefix is eos, which ends every document this codebase pretrains on
(tokenizer_loading.prefix_token).
"""
from __future__ import annotations

import string
from typing import Protocol, Sequence, runtime_checkable

from research.models.config import ConfigError


@runtime_checkable
class TextTokenizer(Protocol):
    """str <-> token ids. encode adds no bos/eos."""

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# Printable ASCII without the vertical tab / form feed, which no task text contains.
DEFAULT_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n\t"


class CharTokenizer:
    """One token per character of a fixed alphabet, after four special ids.

    ids: 0 pad, 1 eos, 2 mask, 3 unk (any character outside the alphabet), then the
    alphabet in order. Decoding drops pad / eos / mask; unk and ids past the alphabet (a
    model's vocabulary may be larger) decode to U+FFFD. Suited to
    the synthetic ability tasks (arithmetic, unscramble, recall), where a per-character
    vocabulary makes per-token metrics per-digit / per-letter.
    """

    pad_id = 0
    eos_id = 1
    mask_id = 2
    unk_id = 3
    bos_id = None
    num_special = 4

    def __init__(self, alphabet: str = DEFAULT_ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
            raise ConfigError(f"CharTokenizer alphabet repeats {repeated!r}; give each character once.")
        self.alphabet = alphabet
        self._ids = {c: i + self.num_special for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        """Every id this tokenizer emits; a model needs vocab_size >= this."""
        return self.num_special + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, self.unk_id) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for index in ids:
            index = int(index)
            if index == self.unk_id or index >= self.vocab_size:
                out.append("\ufffd")
            elif index >= self.num_special:
                out.append(self.alphabet[index - self.num_special])
        return "".join(out)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def check_tokenizer(tokenizer: object) -> None:
    """ConfigError naming what `tokenizer` lacks of the TextTokenizer interface."""
    missing = [name for name in ("encode", "decode", "eos_id", "pad_id") if not hasattr(tokenizer, name)]
    if missing:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} lacks {missing}; it needs encode(str) -> ids, "
                          "decode(ids) -> str, eos_id and pad_id (see research.evaluation.tokenizer).")
