"""Word unscrambling (Brown et al. 2020, GPT-3 section 3.9.2): recover a word from a corrupted spelling.

Corruptions (GPT-3's five):
    cycle             the letters rotated by a random offset            "lueva" -> "value"
    anagram1          all but the first and last letters shuffled       "vlaue" -> "value"
    anagram2          all but the first two and last two shuffled       "cahcnge" ...
    random_insertion  a random punctuation mark or space after letters  "v.a lu!e" -> "value"
    reversed          the letters reversed                              "eulav" -> "value"

Words come from tasks/words.txt (common identifier words of the Python standard library,
the project's default corpus). Difficulty knobs: corruption, min_length / max_length.
"""
from __future__ import annotations

import random
import string
from typing import Literal

from research.evaluation.task_spec import Task, TaskError, TaskSpec
from research.evaluation.tasks.generated import check_range, generated_task
from research.evaluation.tasks.words import word_list

Corruption = Literal["cycle", "anagram1", "anagram2", "random_insertion", "reversed"]
_INSERTS = string.punctuation + " "


def _shuffled(letters: str, rng: random.Random) -> str:
    chars = list(letters)
    rng.shuffle(chars)
    return "".join(chars)


def scramble(word: str, corruption: Corruption, rng: random.Random) -> str:
    """`word` under one corruption; shuffles retry a few times to differ from the word, and a
    word too short for its corruption (anagram2 of 5 letters) comes back unchanged."""
    for _ in range(100):  # a middle of two letters stays as it is 1 time in 2: 10 tries let 1 in 1024 through
        if corruption == "cycle":
            k = rng.randrange(1, len(word)) if len(word) > 1 else 0
            out = word[k:] + word[:k]
        elif corruption == "anagram1":
            out = word[0] + _shuffled(word[1:-1], rng) + word[-1] if len(word) > 2 else word
        elif corruption == "anagram2":
            out = word[:2] + _shuffled(word[2:-2], rng) + word[-2:] if len(word) > 4 else word
        elif corruption == "random_insertion":
            out = "".join(c + (rng.choice(_INSERTS) if rng.random() < 0.5 else "") for c in word[:-1]) + word[-1]
        else:
            out = word[::-1]
        if out != word:
            return out
    return out


# The shortest word each corruption can change: anagram1 keeps the first and last letters, anagram2
# the first two and last two, so shorter words came back as the answer itself (anagram2 over
# 4-8 letters: 463 of 1000 test items were their own answer, and copying scored as unscrambling).
SHORTEST_CHANGED = {"anagram1": 4, "anagram2": 6}


def _changeable(word: str, corruption: Corruption) -> bool:
    """Whether `corruption` can give anything but `word` ('little' under anagram2 shuffles 'tt')."""
    if corruption in SHORTEST_CHANGED:
        kept = 1 if corruption == "anagram1" else 2
        return len(set(word[kept:-kept])) > 1
    if corruption == "reversed":
        return word != word[::-1]
    return len(set(word)) > 1 or corruption == "random_insertion"


def unscramble_task(*, corruption: Corruption = "anagram1", min_length: int | None = None, max_length: int = 8,
                    num_test: int = 200, num_train: int = 64, seed: int = 0, num_fewshot: int = 0) -> Task:
    """'{scrambled} =' -> ' {word}'. min_length (default 4, or the shortest word the corruption
    changes: 6 for anagram2) must let the corruption change every word."""
    if corruption not in Corruption.__args__:
        raise TaskError(f"task 'unscramble': corruption={corruption!r} is not one of {Corruption.__args__}.")
    shortest = SHORTEST_CHANGED.get(corruption, 1)
    min_length = max(4, shortest) if min_length is None else min_length
    if min_length < shortest:
        raise TaskError(f"task 'unscramble': corruption={corruption!r} leaves words under {shortest} letters as "
                        f"they are, so min_length={min_length} would pose answers as questions; use min_length >= "
                        f"{shortest}.")
    check_range("unscramble", "min_length", min_length, 1)
    check_range("unscramble", "max_length", max_length, min_length)
    words = [w for w in word_list() if min_length <= len(w) <= max_length and _changeable(w, corruption)]
    if not words:
        raise TaskError(f"task 'unscramble': no word of length {min_length}..{max_length} in the word list; "
                        "widen the range.")

    def make_doc(rng: random.Random) -> dict:
        word = rng.choice(words)
        return {"scrambled": scramble(word, corruption, rng), "word": word}

    spec = TaskSpec(name=f"unscramble_{corruption}_{min_length}-{max_length}", output_type="generate_until",
                    prompt="{scrambled} =", target="{word}", fewshot_delimiter="\n", until=("\n",),
                    max_new_tokens=max_length + 2, num_fewshot=num_fewshot, fewshot_seed=seed,
                    answer_identifies_problem=True)  # another scramble of the query's word is its problem
    return generated_task(spec, make_doc, num_test=num_test, num_train=num_train, seed=seed)
