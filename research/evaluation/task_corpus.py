"""Training text from tasks, and a mixture of it with a text corpus, as JSONL for source="files".

    texts = task_documents(train_task, examples_per_document=(1, 16), seed=0, held_out=[eval_task])
    write_mixture("data/mixture.jsonl", {"stdlib": corpus_texts, "addition_2digit": texts}, seed=0)
    DataConfig(source="files", file_patterns=("data/mixture.jsonl",))   # research.data reads it

A task document is laid out exactly like a few-shot prompt (research/evaluation/fewshot.py):

    description + solved_1 + fewshot_delimiter + ... + solved_n
    solved_i = prompt(doc_i) + target_delimiter + gold(doc_i)

so a model trained on it sees evaluation prompts, zero-shot and few-shot alike, in the
format it learned. Problems whose prompt occurs in a held-out task's evaluation split are
dropped, so evaluation measures generalisation, not recall.
"""
from __future__ import annotations

import json
import os
import random
from typing import Iterable, Mapping, Sequence

from research.evaluation.task_spec import Doc, Task, TaskError, TaskSpec, gold_text, render


def solved_example(spec: TaskSpec, doc: Doc) -> str:
    """One worked example, as a few-shot prompt shows it."""
    return render(spec.prompt, doc, "prompt") + spec.target_delimiter + gold_text(spec, doc)


def held_out_prompts(task: Task) -> set[str]:
    """Rendered prompts of `task`'s evaluation split."""
    return {render(task.spec.prompt, d, "prompt") for d in task.docs(task.spec.eval_split)}


def task_documents(task: Task, *, examples_per_document: tuple[int, int], seed: int, split: str = "train",
                   held_out: Sequence[Task] = ()) -> list[str]:
    """`task`'s `split` cut into documents of a random number of solved examples each.

    examples_per_document: (fewest, most), both inclusive; documents are drawn with
    random.Random(seed). held_out: tasks whose evaluation prompts must not be trained on.
    """
    low, high = examples_per_document
    if not 1 <= low <= high:
        raise TaskError(f"examples_per_document={examples_per_document} must satisfy 1 <= fewest <= most.")
    spec = task.spec
    excluded = set().union(*(held_out_prompts(t) for t in held_out))
    docs = [d for d in task.docs(split) if render(spec.prompt, d, "prompt") not in excluded]
    if not docs:
        raise TaskError(f"task {spec.name!r}: every document of split {split!r} is held out (the evaluation items "
                        "cover every training problem); evaluate fewer items (num_test), draw more training "
                        "documents, or use another seed.")
    description = render(spec.description, docs[0], "description") if spec.description else ""
    rng = random.Random(seed)
    out, start = [], 0
    while start < len(docs):
        count = rng.randint(low, high)
        examples = [solved_example(spec, d) for d in docs[start:start + count]]
        out.append(description + spec.fewshot_delimiter.join(examples))
        start += count
    return out


def write_mixture(path: str, parts: Mapping[str, Sequence[str]], *, seed: int,
                  text_field: str = "text") -> dict[str, int]:
    """Write every text of every part as one shuffled JSONL file ({text_field: text, "source": part}).

    Returns the characters written per part. The file is written under a temporary name
    and renamed, so a reader (or a rerun) never sees half of it.
    """
    lines = [(name, text) for name, texts in parts.items() for text in texts if text.strip()]
    if not lines:
        raise TaskError(f"mixture {path!r} would hold no text; give at least one non-empty part.")
    random.Random(seed).shuffle(lines)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    chars: dict[str, int] = {name: 0 for name in parts}
    with open(tmp, "w", encoding="utf-8") as f:
        for name, text in lines:
            f.write(json.dumps({text_field: text, "source": name}) + "\n")
            chars[name] += len(text)
    os.replace(tmp, path)
    return chars


def take_chars(texts: Iterable[str], max_chars: int) -> list[str]:
    """Texts in order until `max_chars` characters are taken (the last one cut to fit)."""
    out, total = [], 0
    for text in texts:
        if total >= max_chars:
            break
        out.append(text[:max_chars - total])
        total += len(out[-1])
    return out
