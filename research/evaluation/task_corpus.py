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
    return set(task.prompts(task.spec.eval_split))


def held_out_answers(task: Task) -> set[str]:
    """Gold answers of `task`'s evaluation split where an answer names its problem
    (TaskSpec.answer_identifies_problem: every scramble of a word asks for that word); else none."""
    return set(task.answers(task.spec.eval_split)) if task.spec.answer_identifies_problem else set()


def training_mask(task: Task, split: str, held_out: Sequence[Task]) -> list[bool]:
    """Per document of `task`'s `split`, whether it may be trained on: not a problem a held-out task
    evaluates, by the same prompt or, where the answer names the problem (unscramble), the same
    answer (150 of 200 evaluation words were trained as the answer to another scramble)."""
    prompts = set().union(*(held_out_prompts(t) for t in held_out))
    answers = set().union(*(held_out_answers(t) for t in held_out)) if task.spec.answer_identifies_problem else set()
    return [p not in prompts and a not in answers for p, a in zip(task.prompts(split), task.answers(split))]


def training_docs(task: Task, split: str, held_out: Sequence[Task]) -> list[Doc]:
    """`task`'s `split` less the problems a held-out task evaluates (training_mask); a TaskError
    when none is left."""
    docs = [d for d, keep in zip(task.docs(split), training_mask(task, split, held_out)) if keep]
    if not docs:
        raise TaskError(f"task {task.spec.name!r}: every document of split {split!r} is held out (the evaluation "
                        "items cover every training problem); evaluate fewer items (num_test), draw more training "
                        "documents, or use another seed.")
    return docs


def task_documents(task: Task, *, examples_per_document: tuple[int, int], seed: int, split: str = "train",
                   held_out: Sequence[Task] = (), max_chars: int | None = None) -> list[str]:
    """`task`'s `split` less the problems a held-out task evaluates (training_docs), cut into
    documents (solved_documents)."""
    docs = training_docs(task, split, held_out)
    return solved_documents(task.spec, docs, examples_per_document=examples_per_document, seed=seed,
                            max_chars=max_chars)


def solved_documents(spec: TaskSpec, docs: Sequence[Doc], *, examples_per_document: tuple[int, int], seed: int,
                     max_chars: int | None = None) -> list[str]:
    """`docs` cut into documents of a random number of solved examples each.

    examples_per_document: (fewest, most), both inclusive; documents are drawn with
    random.Random(seed). max_chars: a document ends before an example would take it past this many
    characters, fewest or not; a longer example is a document of its own. A training window
    (train.seq_len tokens) that ends inside a problem trains its rest without the start of its
    prompt, a context no evaluation shows: emergence sets it to the window (one token per
    character at most, for text its tokenizer was trained on, plus the dummy prefix and eos: a
    bound, loose for text of multi-character pieces such as chain-of-thought words).
    """
    low, high = examples_per_document
    if not 1 <= low <= high:
        raise TaskError(f"examples_per_document={examples_per_document} must satisfy 1 <= fewest <= most.")
    if max_chars is not None and max_chars < 1:
        raise TaskError(f"max_chars={max_chars} must be >= 1 (or None: no limit).")
    rng = random.Random(seed)
    out, start = [], 0
    while start < len(docs):
        count = rng.randint(low, high)
        # The description rendered from the document it heads (it was docs[0]'s for every document).
        text = render(spec.description, docs[start], "description") if spec.description else ""
        taken = 0
        for doc in docs[start:start + count]:
            example = (spec.fewshot_delimiter if taken else "") + solved_example(spec, doc)
            if taken and max_chars is not None and len(text) + len(example) > max_chars:
                break
            text, taken = text + example, taken + 1
        out.append(text)
        start += taken
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
