"""Few-shot prompts: k solved examples drawn with a seed from a separate split, then the query.

    description + shot_1 + fewshot_delimiter + ... + shot_k + fewshot_delimiter + prompt(doc)
    shot_i = prompt(example_i) + target_delimiter + gold(example_i)

(lm-evaluation-harness's layout.) The examples for the document at index i are drawn with
random.Random(f"{fewshot_seed}:{i}"), so a document's prompt does not depend on which other
documents are evaluated or in what order. No example has the query's own prompt: not the
document itself when the few-shot split is the evaluation split, nor a few-shot document
that poses the same problem (generated tasks draw train and test from separate streams of a
small problem space, and addition_1digit showed "9+7=16" above the query "9+7=" in 14 of 200
5-shot prompts). Where the gold answer names the problem (TaskSpec.answer_identifies_problem:
unscramble, whose every scramble of a word asks for that word), no example has the query's
answer either: unscramble_anagram1 showed "toenks = tokens" above "toneks =" in 1 of 200 5-shot
prompts and 4 of 200 at 32 shots. Elsewhere an equal answer is another problem ("3+4=" and
"5+2=", a multiple-choice gold index) and such examples stay.
"""
from __future__ import annotations

import random
from typing import Sequence

from research.evaluation.task_spec import Doc, Task, TaskError, gold_text, render


def sample_shots(task: Task, doc_index: int, num_fewshot: int) -> list[Doc]:
    """The `num_fewshot` examples for the evaluation document at `doc_index`, in prompt order."""
    spec = task.spec
    if not num_fewshot:
        return []
    if spec.fewshot_split is None:
        raise TaskError(f"task {spec.name!r}: num_fewshot={num_fewshot} needs a fewshot_split in the spec.")
    pool: Sequence[Doc] = task.docs(spec.fewshot_split)
    candidates = shot_candidates(task, doc_index)
    if num_fewshot > len(candidates):
        differs = "prompt and answer are" if spec.answer_identifies_problem else "prompt is"
        raise TaskError(f"task {spec.name!r}: num_fewshot={num_fewshot} but the few-shot split "
                        f"{spec.fewshot_split!r} holds {len(candidates)} usable documents (whose {differs} not that of "
                        f"evaluation document {doc_index}); lower num_fewshot or add documents to that split.")
    rng = random.Random(f"{spec.fewshot_seed}:{doc_index}")
    return [pool[i] for i in rng.sample(candidates, num_fewshot)]


def shot_candidates(task: Task, doc_index: int) -> list[int]:
    """Indices into the few-shot split of the documents that may be shown to evaluation document
    `doc_index`: those not posing its problem (see the module docstring)."""
    spec = task.spec
    # A shot with the query's prompt hands the model the answer (the document itself, when
    # the few-shot split is the evaluation split, is one). Filtering the pool before the
    # draw keeps it a function of the seed and doc_index alone, and leaves the shots of every
    # query without such a duplicate exactly as they were.
    query = task.prompts(spec.eval_split)[doc_index]
    candidates = [i for i, prompt in enumerate(task.prompts(spec.fewshot_split)) if prompt != query]
    if spec.answer_identifies_problem:
        answer = task.answers(spec.eval_split)[doc_index]
        answers = task.answers(spec.fewshot_split)
        candidates = [i for i in candidates if answers[i] != answer]
    return candidates


def fewshot_context(task: Task, doc_index: int, num_fewshot: int | None = None) -> str:
    """The full prompt for evaluation document `doc_index` (num_fewshot defaults to the spec's)."""
    spec = task.spec
    k = spec.num_fewshot if num_fewshot is None else num_fewshot
    if k < 0:
        raise TaskError(f"task {spec.name!r}: num_fewshot={k} must be >= 0.")
    doc = task.docs(spec.eval_split)[doc_index]
    shots = [render(spec.prompt, shot, "prompt") + spec.target_delimiter + gold_text(spec, shot)
             for shot in sample_shots(task, doc_index, k)]
    description = render(spec.description, doc, "description") if spec.description else ""
    return description + "".join(shot + spec.fewshot_delimiter for shot in shots) + render(spec.prompt, doc, "prompt")
