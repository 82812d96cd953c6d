"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"): key-value pairs in
context, then several keys whose values must be recalled, in order.

    "c:4 k:7 a:1 | k a" -> "7 1"

Keys are distinct lowercase strings of key_length letters, values digit strings of
value_length. Difficulty knobs: num_pairs, num_queries (distinct keys, at most num_pairs),
key_length, value_length.
"""
from __future__ import annotations

import itertools
import random
import string

from research.evaluation.task_spec import Task, TaskError, TaskSpec
from research.evaluation.tasks.generated import check_range, generated_task


def associative_recall_task(*, num_pairs: int = 8, num_queries: int = 2, key_length: int = 1,
                            value_length: int = 1, num_test: int = 200, num_train: int = 64, seed: int = 0,
                            num_fewshot: int = 0) -> Task:
    """'{pairs} | {queries}' -> ' {values}'."""
    check_range("associative_recall", "key_length", key_length, 1, 3)
    check_range("associative_recall", "value_length", value_length, 1, 8)
    check_range("associative_recall", "num_queries", num_queries, 1, num_pairs)
    if num_pairs > 26**key_length:
        raise TaskError(f"task 'associative_recall': num_pairs={num_pairs} exceeds the {26**key_length} distinct "
                        f"keys of key_length={key_length}; raise key_length.")
    keys = ["".join(k) for k in itertools.product(string.ascii_lowercase, repeat=key_length)]

    def make_doc(rng: random.Random) -> dict:
        pair_keys = rng.sample(keys, num_pairs)
        values = {k: "".join(rng.choice(string.digits) for _ in range(value_length)) for k in pair_keys}
        queries = rng.sample(pair_keys, num_queries)
        return {"pairs": " ".join(f"{k}:{values[k]}" for k in pair_keys), "queries": " ".join(queries),
                "values": " ".join(values[q] for q in queries)}

    spec = TaskSpec(name=f"associative_recall_{num_pairs}_{num_queries}", output_type="generate_until",
                    prompt="{pairs} | {queries}", target="{values}", fewshot_delimiter="\n", until=("\n",),
                    max_new_tokens=num_queries * (value_length + 1) + 1, num_fewshot=num_fewshot, fewshot_seed=seed)
    return generated_task(spec, make_doc, num_test=num_test, num_train=num_train, seed=seed)
