"""Shared plumbing of the generated tasks: seeded splits and knob validation."""
from __future__ import annotations

import random
from typing import Any, Callable

from research.evaluation.task_spec import Task, TaskError, TaskSpec, make_task

DocMaker = Callable[[random.Random], dict[str, Any]]


def generated_task(spec: TaskSpec, make_doc: DocMaker, *, num_test: int, num_train: int, seed: int,
                   problem_set: str | None = None) -> Task:
    """A task with a "test" and a "train" (few-shot) split of documents drawn by `make_doc`.

    Each split has its own stream, random.Random(f"{problem_set}:{seed}:{split}"), so changing
    num_train does not change the test documents. problem_set (default: the task's name) names
    the problems the documents pose: variants that only write them differently (a
    chain-of-thought target, a reversed answer) pass their base task's, so they pose the same
    problems (seeded by their own names, they posed others). Splits may share a problem when the
    problem space is small (1-digit addition has 100); deduplicating would starve them (the
    few-shot draw instead leaves out shots posing the query's problem, fewshot.sample_shots).
    A split may be empty (num_test=0): the task builds, and evaluate() refuses an empty
    evaluation split with an error that names it.
    """
    for knob, value in (("num_test", num_test), ("num_train", num_train)):
        if value < 0:
            raise TaskError(f"task {spec.name!r}: {knob}={value} must be >= 0.")
    splits = {}
    for split, count in (("test", num_test), ("train", num_train)):
        rng = random.Random(f"{problem_set or spec.name}:{seed}:{split}")
        splits[split] = [make_doc(rng) for _ in range(count)]
    return make_task(spec, splits)


def check_range(task: str, knob: str, value: int, low: int, high: int | None = None) -> None:
    """TaskError unless low <= value (<= high)."""
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise TaskError(f"task {task!r}: {knob}={value} must be {bounds}.")


def max_chars(docs: list[dict[str, Any]], template: str) -> int:
    """Longest rendering of `template` over docs: a token budget for character-level generation."""
    return max((len(template.format_map(d)) for d in docs), default=1)
