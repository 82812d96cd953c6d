"""Named task variants, for command lines and study configs: "addition_3digit", "copying".

    task = catalog_task("addition_3digit_cot", num_test=100)   # = get_task("addition", digits=3,
                                                               #   chain_of_thought=True, num_test=100)
    task = catalog_task("my_tasks/capitals.json")             # a JSON task file (task_spec.load_task)
    check_shots("addition_3digit", task, num_fewshot=5)        # TaskError if the few-shot split is too small

Names are the generated tasks' builders (research.evaluation.tasks: "addition", "induction",
...) with their default knobs, plus fixed variants:

    addition_{1..8}digit[_cot]       multiplication_{1..4}digit[_cot]
    addition_{1..8}digit_reversed    (the sum's digits least-significant first)
    addition_{1..8}digit_lsb_first   (every number's digits least-significant first)
    addition_{k}digit_lsb_first_pad{W}  (the same, operands zero-padded to W digits, k <= W <= 8)
    addition_{k}digit_base{B}_lsb_first[_pad{W}]  (the same in base B = 16, 26 or 36)
    modular_addition[_cot]           modular_multiplication[_cot]      (modulus 97)
    copying                          (induction: repeat a 12-symbol sequence, predict 4)
    copying_varied                   (the same with 6 to 12 symbols: no fixed offset to copy from)
    repeat_8to16                     (repeated random letters: 8 to 16 of 26, then their copy, first given)
    repeat_8to16_12letters           (the same drawn from 12 letters, a-l)
    unscramble_{cycle,anagram1,anagram2,random_insertion,reversed}
    associative_recall

An unknown name fails with the nearest known names.
"""
from __future__ import annotations

import difflib
import re
from collections import Counter
from typing import Any

from research.evaluation.task_spec import Task, TaskError, load_task
from research.evaluation.tasks import get_task, task_names
from research.evaluation.tasks.arithmetic import MAX_DIGITS
from research.evaluation.tasks.unscramble import Corruption

# name -> (builder, knobs)
_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {name: (name, {}) for name in task_names()}
for _cot in (False, True):
    _suffix = "_cot" if _cot else ""
    for _digits in range(1, MAX_DIGITS + 1):
        _VARIANTS[f"addition_{_digits}digit{_suffix}"] = ("addition", dict(digits=_digits, chain_of_thought=_cot))
    for _digits in range(1, 5):
        _VARIANTS[f"multiplication_{_digits}digit{_suffix}"] = (
            "multiplication", dict(digits=_digits, chain_of_thought=_cot))
    _VARIANTS[f"modular_addition{_suffix}"] = ("modular_arithmetic", dict(op="+", chain_of_thought=_cot))
    _VARIANTS[f"modular_multiplication{_suffix}"] = ("modular_arithmetic", dict(op="*", chain_of_thought=_cot))
for _digits in range(1, MAX_DIGITS + 1):
    _VARIANTS[f"addition_{_digits}digit_reversed"] = ("addition", dict(digits=_digits, reverse_answer=True))
    _VARIANTS[f"addition_{_digits}digit_lsb_first"] = ("addition", dict(digits=_digits, reverse_answer=True,
                                                                        reverse_operands=True))
    for _width in range(_digits, MAX_DIGITS + 1):
        _VARIANTS[f"addition_{_digits}digit_lsb_first_pad{_width}"] = (
            "addition", dict(digits=_digits, reverse_answer=True, reverse_operands=True, pad_to=_width))
for _base in (16, 26, 36):
    for _digits in range(1, MAX_DIGITS + 1):
        _VARIANTS[f"addition_{_digits}digit_base{_base}_lsb_first"] = (
            "addition", dict(digits=_digits, reverse_answer=True, reverse_operands=True, base=_base))
        for _width in range(_digits, MAX_DIGITS + 1):
            _VARIANTS[f"addition_{_digits}digit_base{_base}_lsb_first_pad{_width}"] = (
                "addition", dict(digits=_digits, reverse_answer=True, reverse_operands=True, pad_to=_width,
                                 base=_base))
_VARIANTS["copying"] = ("induction", dict(length=12, num_predict=4))
_VARIANTS["copying_varied"] = ("induction", dict(length=12, min_length=6, num_predict=4))
_VARIANTS["repeat_8to16"] = ("repeat", dict(length=16, min_length=8))
_VARIANTS["repeat_8to16_12letters"] = ("repeat", dict(length=16, min_length=8, alphabet_size=12))
for _corruption in Corruption.__args__:
    _VARIANTS[f"unscramble_{_corruption}"] = ("unscramble", dict(corruption=_corruption))


def catalog_names() -> list[str]:
    return sorted(_VARIANTS)


def is_task_file(name: str) -> bool:
    return name.endswith(".json")


def catalog_task(name: str, *, num_test: int | None = None, num_train: int | None = None,
                 seed: int | None = None) -> Task:
    """The task `name` (a catalog name or a .json task file). num_test / num_train / seed
    set the generated tasks' split sizes and seed (None: the builder's default); a task
    file's splits are its files."""
    if is_task_file(name):
        return load_task(name)
    if name not in _VARIANTS:
        near = difflib.get_close_matches(name, _VARIANTS, n=3, cutoff=0.6)
        # Without a near name, the task families, not all ~230 variants (a one-line error stays readable).
        families = sorted({re.split(r"_\d", n)[0] for n in catalog_names()})
        hint = (f"did you mean {', '.join(near)}?" if near else
                f"known families: {', '.join(families)} (research.evaluation.task_catalog.catalog_names() "
                "lists every name);")
        raise TaskError(f"unknown task {name!r}; {hint} or give a .json task file.")
    builder, knobs = _VARIANTS[name]
    sizes = {k: v for k, v in dict(num_test=num_test, num_train=num_train, seed=seed).items() if v is not None}
    return get_task(builder, **knobs, **sizes)


def check_shots(name: str, task: Task, num_fewshot: int) -> None:
    """TaskError unless `task` can be prompted with `num_fewshot` solved examples."""
    spec = task.spec
    if num_fewshot < 0:
        raise TaskError(f"task {name!r}: num_shots={num_fewshot} must be >= 0.")
    if not num_fewshot:
        return
    if spec.output_type == "loglikelihood_rolling":
        raise TaskError(f"task {name!r} scores whole texts (loglikelihood_rolling); use num_shots=0.")
    if spec.fewshot_split is None or spec.fewshot_split not in task.splits:
        raise TaskError(f"task {name!r}: num_shots={num_fewshot} needs a few-shot split, and it has none; "
                        "use num_shots=0.")
    # sample_shots never draws a shot with the query's own prompt (the query itself, when the
    # few-shot split is the evaluation split): the query with the most such copies decides.
    pool = Counter(task.prompts(spec.fewshot_split))
    copies = max((pool[prompt] for prompt in task.prompts(spec.eval_split)), default=0)
    usable = sum(pool.values()) - copies
    if spec.answer_identifies_problem:  # nor the query's answer (unscramble): each query's own count
        from research.evaluation.fewshot import shot_candidates
        usable = min((len(shot_candidates(task, i)) for i in range(len(task.prompts(spec.eval_split)))), default=0)
    if num_fewshot > usable:
        raise TaskError(f"task {name!r}: num_shots={num_fewshot} but its few-shot split {spec.fewshot_split!r} "
                        f"holds {usable} examples usable for every query (shots never pose the query's own "
                        "problem); lower num_shots or raise num_train.")
