"""The word list of the unscramble task: common lowercase words taken from Python's own
standard-library source, shipped as words.txt so that tasks do not change with the Python
version. `build_word_list()` regenerates it (python -m research.evaluation.tasks.words).
"""
from __future__ import annotations

import collections
import functools
import io
import os
import re
import sysconfig
import tokenize

WORDS_FILE = os.path.join(os.path.dirname(__file__), "words.txt")
_PIECE = re.compile(r"[A-Z]?[a-z]+")


def _stdlib_modules() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    paths = []
    for root, dirs, files in os.walk(stdlib):
        # Tests and third-party packages are full of made-up identifiers.
        dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "site-packages", "idlelib", "__pycache__"))
        paths.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))
    return paths


def build_word_list(min_files: int = 12, min_length: int = 4, max_length: int = 10) -> list[str]:
    """Lowercase identifier pieces (split at '_' and camelCase) that appear in at least
    `min_files` stdlib modules: frequent pieces are overwhelmingly English words."""
    seen_in: collections.Counter[str] = collections.Counter()
    for path in _stdlib_modules():
        with open(path, "rb") as f:
            source = f.read()
        pieces = set()
        try:
            for token in tokenize.tokenize(io.BytesIO(source).readline):
                if token.type == tokenize.NAME:
                    pieces.update(p.lower() for p in _PIECE.findall(token.string))
        except (tokenize.TokenError, SyntaxError):
            continue
        seen_in.update(pieces)
    return sorted(w for w, n in seen_in.items() if n >= min_files and min_length <= len(w) <= max_length
                  and w.isascii() and w.isalpha())


@functools.lru_cache(maxsize=None)
def word_list() -> tuple[str, ...]:
    """The shipped word list."""
    with open(WORDS_FILE, encoding="utf-8") as f:
        return tuple(line.strip() for line in f if line.strip())


if __name__ == "__main__":
    words = build_word_list()
    with open(WORDS_FILE, "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    print(f"wrote {len(words)} words to {WORDS_FILE}")
