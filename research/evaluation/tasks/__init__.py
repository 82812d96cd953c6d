"""Built-in generated ability tasks, by name.

    task = get_task("addition", digits=4, num_fewshot=3)
    task = get_task("addition", digits=4, chain_of_thought=True)    # scratchpad targets

Each builder takes seed, num_test, num_train (the few-shot split), num_fewshot and its own
difficulty knobs (see its module).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from research.evaluation.task_spec import Task, TaskError
from research.evaluation.tasks.arithmetic import addition_task, modular_arithmetic_task, multiplication_task
from research.evaluation.tasks.associative_recall import associative_recall_task
from research.evaluation.tasks.induction import induction_task, repeat_task
from research.evaluation.tasks.unscramble import unscramble_task

_BUILDERS: dict[str, Callable[..., Task]] = {
    "addition": addition_task,
    "multiplication": multiplication_task,
    "modular_arithmetic": modular_arithmetic_task,
    "unscramble": unscramble_task,
    "induction": induction_task,
    "repeat": repeat_task,
    "associative_recall": associative_recall_task,
}


def task_names() -> list[str]:
    return sorted(_BUILDERS)


def get_task(name: str, **knobs: Any) -> Task:
    """The generated task `name` with its difficulty knobs set."""
    if name not in _BUILDERS:
        near = difflib.get_close_matches(name, _BUILDERS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(near)}?" if near else f" Known: {', '.join(task_names())}."
        raise TaskError(f"unknown task {name!r}.{hint}")
    builder = _BUILDERS[name]
    allowed = sorted(inspect.signature(builder).parameters)
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise TaskError(f"task {name!r}: unknown knob(s) {unknown}; it takes {allowed}.")
    return builder(**knobs)


__all__ = ["addition_task", "associative_recall_task", "get_task", "induction_task", "modular_arithmetic_task",
           "multiplication_task", "repeat_task", "task_names", "unscramble_task"]
