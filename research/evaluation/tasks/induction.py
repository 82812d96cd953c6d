"""Copying / induction (Olsson et al. 2022): a random symbol sequence, then its start again;
the model continues the repeat. Solvable only by looking back at the first occurrence,
which is what induction heads do.

    induction:  "q f k b x | q f" -> "k b x"
    repeat:     "qfkbxqam|q"      -> "fkbxqam"

induction: symbols are lowercase letters separated by spaces. Difficulty knobs: length
(symbols in the sequence), num_predict (how many to continue), alphabet_size; with
distinct=True (needs alphabet_size >= length) no symbol repeats, so the continuation is never
ambiguous.

repeat: Olsson et al.'s repeated random tokens. Letters drawn independently (repeats allowed),
no separators, so a character vocabulary gives one token per letter; the prompt gives the
segment and the first `num_given` letters of its copy, the target is the rest of the copy
(length - num_given tokens, one exact-match unit). Each target token is predictable only by
finding the previous letter's earlier occurrence and copying its successor (an induction head:
a previous-token head in one layer composed with a matching head in the next); a 1-layer
model can at best spread its guess over the letters seen in the segment (p about 1 / the
segment's distinct letters).
"""
from __future__ import annotations

import random
import string

from research.evaluation.task_spec import Task, TaskError, TaskSpec
from research.evaluation.tasks.generated import check_range, generated_task


def induction_task(*, length: int = 12, num_predict: int = 4, alphabet_size: int = 26, distinct: bool = True,
                   min_length: int | None = None, num_test: int = 200, num_train: int = 64, seed: int = 0,
                   num_fewshot: int = 0) -> Task:
    """'{sequence} | {prefix}' -> ' {continuation}'; with min_length, each sequence's length is
    drawn from [min_length, length], so the repeat is at no fixed distance from its source: a
    model must find the current symbol's earlier occurrence and copy the next one (an induction
    head, two attention layers), where a fixed length lets one layer attend a fixed offset back."""
    check_range("induction", "alphabet_size", alphabet_size, 2, 26)
    check_range("induction", "length", length, 2)
    min_length = length if min_length is None else min_length
    check_range("induction", "min_length", min_length, num_predict + 1, length)
    check_range("induction", "num_predict", num_predict, 1, length - 1)
    if distinct and alphabet_size < length:
        raise TaskError(f"task 'induction': distinct=True needs alphabet_size >= length, got {alphabet_size} < "
                        f"{length}; enlarge the alphabet or set distinct=False.")
    alphabet = string.ascii_lowercase[:alphabet_size]

    def make_doc(rng: random.Random) -> dict:
        n = length if min_length == length else rng.randint(min_length, length)
        symbols = rng.sample(alphabet, n) if distinct else [rng.choice(alphabet) for _ in range(n)]
        cut = n - num_predict
        return {"sequence": " ".join(symbols), "prefix": " ".join(symbols[:cut]),
                "continuation": " ".join(symbols[cut:])}

    name = f"induction_{length}_{num_predict}" if min_length == length else f"induction_{min_length}to{length}_{num_predict}"
    spec = TaskSpec(name=name, output_type="generate_until",
                    prompt="{sequence} | {prefix}", target="{continuation}", fewshot_delimiter="\n", until=("\n",),
                    max_new_tokens=2 * num_predict + 1, num_fewshot=num_fewshot, fewshot_seed=seed)
    return generated_task(spec, make_doc, num_test=num_test, num_train=num_train, seed=seed)


def repeat_task(*, length: int = 16, min_length: int | None = None, num_given: int = 1, alphabet_size: int = 26,
                num_test: int = 200, num_train: int = 64, seed: int = 0, num_fewshot: int = 0) -> Task:
    """'{segment}|{given}' -> '{rest}': a random segment of letters (repeats allowed), then its
    copy, whose first num_given letters are given; with min_length each segment's length is drawn
    from [min_length, length], so the copy's source is at no fixed offset back."""
    check_range("repeat", "alphabet_size", alphabet_size, 2, 26)
    check_range("repeat", "num_given", num_given, 1)
    check_range("repeat", "length", length, num_given + 1)
    min_length = length if min_length is None else min_length
    check_range("repeat", "min_length", min_length, num_given + 1, length)
    alphabet = string.ascii_lowercase[:alphabet_size]

    def make_doc(rng: random.Random) -> dict:
        segment = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_length, length)))
        return {"segment": segment, "given": segment[:num_given], "rest": segment[num_given:]}

    span = str(length) if min_length == length else f"{min_length}to{length}"
    name = f"repeat_{span}" + (f"_{alphabet_size}letters" if alphabet_size != 26 else "") + (
        f"_given{num_given}" if num_given != 1 else "")
    spec = TaskSpec(name=name,
                    output_type="generate_until", prompt="{segment}|{given}", target="{rest}", target_delimiter="",
                    fewshot_delimiter="\n", until=("\n",), max_new_tokens=length - num_given + 1,
                    num_fewshot=num_fewshot, fewshot_seed=seed)
    return generated_task(spec, make_doc, num_test=num_test, num_train=num_train, seed=seed)
