"""Copying / induction (Olsson et al. 2022): a random symbol sequence, then its start again;
the model continues the repeat. Solvable only by looking back at the first occurrence,
which is what induction heads do.

    "q f k b x | q f" -> "k b x"

Symbols are lowercase letters separated by spaces (one token each for character- and most
subword tokenizers). Difficulty knobs: length (symbols in the sequence), num_predict (how
many to continue), alphabet_size; with distinct=True (needs alphabet_size >= length) no
symbol repeats, so the continuation is never ambiguous.
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
