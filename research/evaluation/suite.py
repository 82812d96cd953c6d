"""A suite: several tasks, each at several shot counts, on one harness -> one row per pair.

    entries = plan_suite(["addition_3digit", "copying"], [0, 1, 5], num_test=100)  # every check here
    rows = run_suite(harness, entries)
    rows[0]  # {"task": "addition_3digit", "num_shots": 0, "chain_of_thought": False,
             #  "num_examples": 100, "exact_match": 0.12, "token_accuracy": 0.61, ...}

`plan_suite` builds every task and checks every (task, shots) pair before a model is
touched, so a bad name or too many shots fails in a second, not after compiling.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from research.evaluation.evaluator import evaluate, no_documents
from research.evaluation.fewshot import fewshot_context
from research.evaluation.task_catalog import catalog_task, check_shots
from research.evaluation.task_spec import Task, TaskError


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
    """One evaluation: the task under its catalog name, prompted with num_fewshot examples."""

    name: str
    task: Task
    num_fewshot: int

    @property
    def chain_of_thought(self) -> bool:
        return self.task.spec.answer_prefix is not None


def plan_suite(names: Sequence[str], shots: Sequence[int] | None, *, num_test: int | None = None,
               num_train: int | None = None, seed: int | None = None,
               tasks: dict[str, Task] | None = None) -> list[SuiteEntry]:
    """Every (task, shots) pair, tasks in the order given; each task is built once. shots None:
    each task at its own count (a task file's num_fewshot, else 0).

    tasks: prebuilt tasks by name, used instead of the catalog (e.g. with a study's prompt
    changes); other names come from research.evaluation.task_catalog.
    """
    if not names:
        raise TaskError("no tasks given; name at least one, e.g. addition_3digit.")
    if shots is not None and not shots:
        raise TaskError("no shot counts given; e.g. num_shots=0.")
    repeated = sorted({k for k in shots or () if list(shots).count(k) > 1})
    if repeated:
        raise TaskError(f"shot count(s) {repeated} listed twice; list each once.")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise TaskError(f"task(s) {duplicates} listed twice; list each once.")
    entries = []
    for name in names:
        task = (tasks or {}).get(name) or catalog_task(name, num_test=num_test, num_train=num_train, seed=seed)
        for k in (task.spec.num_fewshot,) if shots is None else shots:
            check_shots(name, task, k)
            entries.append(SuiteEntry(name, task, k))
    # Render one prompt per entry now: a template error surfaces before any model runs.
    for entry in entries:
        if not entry.task.docs(entry.task.spec.eval_split):  # rendering document 0 was an IndexError
            raise no_documents(entry.task.spec)
        if entry.task.spec.output_type != "loglikelihood_rolling":
            fewshot_context(entry.task, 0, entry.num_fewshot)
    return entries


def computed_metrics(entries: Sequence[SuiteEntry]) -> tuple[str, ...]:
    """The metrics the entries' tasks compute, each once, in the tasks' order."""
    return tuple(dict.fromkeys(m for entry in entries for m in entry.task.spec.metrics))


def run_suite(harness: Any, entries: Sequence[SuiteEntry], *, limit: int | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One row per entry: its identity, the number of examples scored, and every metric.

    on_row is called with each row as it is finished (progress printing)."""
    rows = []
    for entry in entries:
        result = evaluate(harness, entry.task, num_fewshot=entry.num_fewshot, limit=limit)
        row = {"task": entry.name, "num_shots": entry.num_fewshot, "chain_of_thought": entry.chain_of_thought,
               "num_examples": len(result.examples), **result.metrics}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
