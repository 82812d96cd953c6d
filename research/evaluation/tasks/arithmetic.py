"""Arithmetic ability tasks: multi-digit addition and multiplication, modular arithmetic.

Prompts are bare equations ("457+86=" -> "543"), one per line, so a character-level model
of a few thousand parameters can be evaluated few-shot. Every document carries both the
direct answer and a scratchpad (tasks/chain_of_thought.py); `chain_of_thought=True` makes
the scratchpad plus the answer the target, and exact match then compares the answer only.
A chain-of-thought or reversed-answer variant poses the same problems as its task for the same
seed (they share prompts and differ only in the target), so the two compare item for item and
holding out the task's items (task_corpus.task_documents) holds out the variant's; each was
seeded by its own name and posed other problems. Operands written least-significant first
or zero-padded keep problems of their own: their prompts differ from the plain task's, and the
emergence presets' recorded figures were measured on those problems.

Difficulty knobs: digits (of the first operand, 1-8; the first digit is non-zero),
digits_b (of the second, default = digits), modulus and op for modular arithmetic.
Addition's reverse_answer writes the sum least-significant digit first ("457+86=" -> "345"),
the order in which carries are computed: each answer digit then depends only on the two
operand digits of its place and the carry of the digit just written, which small models learn
in far fewer steps than the usual order (where the first digit needs every carry).
Addition's pad_to writes both operands with that many digits, zeros filling the high places
("457+86=" with pad_to=6, every number least-significant first: "754000+680000=345"; the
answer is not padded), as Lee et al. 2023 ("Teaching Arithmetic to Small Transformers",
arXiv 2307.03381) train: every answer digit then sits at the same offsets from its operand
digits whatever the operands' length, so one learned per-digit procedure serves every length.
Without it, with rotary positions, each length needs its own offsets and is learned as a
separate task (experiments/configs/emergence.py).
Addition's base writes every number in that base (2-36, digits then lowercase letters: base 16
"ff+1=" -> "100"): the per-place table a small model must hold grows as 2 x base^2 (sum and
carry for every pair and carry-in), 200 entries in base 10 and 1,352 in base 26, so how much of
it a model of a given size holds can be graded by capacity rather than all or nothing.
"""
from __future__ import annotations

import random

from research.evaluation.task_spec import Task, TaskError, TaskSpec, gold_text, make_task
from research.evaluation.tasks.chain_of_thought import (ANSWER_PREFIX, COT_TARGET, addition_scratchpad,
                                                        modular_scratchpad, multiplication_scratchpad)
from research.evaluation.tasks.generated import check_range, generated_task

MAX_DIGITS = 8
DIGIT_SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"  # base b uses the first b


def _operand(rng: random.Random, digits: int, base: int = 10) -> int:
    return rng.randint(0 if digits == 1 else base ** (digits - 1), base**digits - 1)


def to_base(value: int, base: int) -> str:
    """`value` >= 0 written in `base` (2-36) with DIGIT_SYMBOLS, most significant digit first."""
    out = DIGIT_SYMBOLS[value % base]
    while value >= base:
        value //= base
        out = DIGIT_SYMBOLS[value % base] + out
    return out


def _spec(name: str, prompt: str, chain_of_thought: bool, num_fewshot: int, seed: int) -> TaskSpec:
    return TaskSpec(name=name + ("_cot" if chain_of_thought else ""), output_type="generate_until", prompt=prompt,
                    target=COT_TARGET if chain_of_thought else "{answer}",
                    target_delimiter=" " if chain_of_thought else "",
                    fewshot_delimiter="\n", until=("\n",), num_fewshot=num_fewshot, fewshot_seed=seed,
                    answer_prefix=ANSWER_PREFIX if chain_of_thought else None)


def _fit_generation_budget(task: Task) -> Task:
    # One token per character bounds any tokenizer's count; +1 leaves room for the stop "\n".
    lengths = [len(gold_text(task.spec, d)) for docs in task.splits.values() for d in docs]
    if not lengths:
        # num_test = num_train = 0 builds an empty task, as every other generated task does
        # (evaluate() then refuses it, naming the split): nothing to fit, the spec's budget stays.
        return task
    return make_task(task.spec.replace(max_new_tokens=max(lengths) + 1), task.splits)


def _check_digits(name: str, digits: int, digits_b: int) -> None:
    check_range(name, "digits", digits, 1, MAX_DIGITS)
    check_range(name, "digits_b", digits_b, 1, MAX_DIGITS)


def addition_task(*, digits: int = 3, digits_b: int | None = None, num_test: int = 200, num_train: int = 64,
                  seed: int = 0, num_fewshot: int = 0, chain_of_thought: bool = False,
                  reverse_answer: bool = False, reverse_operands: bool = False, pad_to: int = 0,
                  base: int = 10) -> Task:
    """'{a}+{b}=' -> a + b, with a of `digits` digits and b of `digits_b` (its digits in reverse
    order with reverse_answer; with reverse_operands too, a's and b's digits are also written
    least-significant first, so every number reads in the order carries flow; pad_to > 0: both
    operands written with pad_to digits, zeros in the high places)."""
    digits_b = digits if digits_b is None else digits_b
    _check_digits("addition", digits, digits_b)
    if pad_to and not max(digits, digits_b) <= pad_to <= MAX_DIGITS:
        raise TaskError(f"task 'addition': pad_to={pad_to} must be 0 (no padding) or in "
                        f"[{max(digits, digits_b)}, {MAX_DIGITS}] (at least the operands' digits).")
    if reverse_answer and chain_of_thought:
        raise TaskError("task 'addition': reverse_answer=True has no chain-of-thought form; use one of the two.")
    check_range("addition", "base", base, 2, len(DIGIT_SYMBOLS))
    if base != 10 and chain_of_thought:
        raise TaskError(f"task 'addition': base={base} has no chain-of-thought form (its scratchpad is decimal); "
                        "use base=10 or chain_of_thought=False.")
    if reverse_operands and not reverse_answer:
        raise TaskError("task 'addition': reverse_operands=True needs reverse_answer=True (every number "
                        "least-significant digit first).")

    def make_doc(rng: random.Random) -> dict:
        a, b = _operand(rng, digits, base), _operand(rng, digits_b, base)
        total = to_base(a + b, base)
        answer = total[::-1] if reverse_answer else (a + b if base == 10 else total)
        shown_a, shown_b = to_base(a, base).zfill(pad_to), to_base(b, base).zfill(pad_to)
        if not pad_to and base == 10:
            shown_a, shown_b = a, b
        if reverse_operands:
            shown_a, shown_b = str(shown_a)[::-1], str(shown_b)[::-1]
        scratchpad = addition_scratchpad(a, b) if base == 10 else ""
        return {"a": shown_a, "b": shown_b, "answer": answer, "scratchpad": scratchpad}

    numbers = f"addition_{digits}x{digits_b}" + (f"_base{base}" if base != 10 else "")
    layout = ("_lsb_first" if reverse_operands else "") + (f"_pad{pad_to}" if pad_to else "")
    problems = numbers + layout  # a reversed answer alone (or a chain of thought) poses the same problems
    name = numbers + ("_lsb_first" if reverse_operands else "_reversed" if reverse_answer else "")
    name += f"_pad{pad_to}" if pad_to else ""
    spec = _spec(name, "{a}+{b}=", chain_of_thought, num_fewshot, seed)
    return _fit_generation_budget(generated_task(spec, make_doc, num_test=num_test, num_train=num_train, seed=seed,
                                                 problem_set=problems))


def multiplication_task(*, digits: int = 2, digits_b: int | None = None, num_test: int = 200, num_train: int = 64,
                        seed: int = 0, num_fewshot: int = 0, chain_of_thought: bool = False) -> Task:
    """'{a}*{b}=' -> a * b."""
    digits_b = digits if digits_b is None else digits_b
    _check_digits("multiplication", digits, digits_b)

    def make_doc(rng: random.Random) -> dict:
        a, b = _operand(rng, digits), _operand(rng, digits_b)
        return {"a": a, "b": b, "answer": a * b, "scratchpad": multiplication_scratchpad(a, b)}

    problems = f"multiplication_{digits}x{digits_b}"
    spec = _spec(problems, "{a}*{b}=", chain_of_thought, num_fewshot, seed)
    return _fit_generation_budget(generated_task(spec, make_doc, num_test=num_test, num_train=num_train, seed=seed,
                                                 problem_set=problems))


def modular_arithmetic_task(*, modulus: int = 97, op: str = "+", num_test: int = 200, num_train: int = 64,
                            seed: int = 0, num_fewshot: int = 0, chain_of_thought: bool = False) -> Task:
    """'{a}{op}{b} mod {m}=' -> (a op b) mod m, with a, b uniform in [0, m) (Power et al. 2022's grokking task)."""
    check_range("modular_arithmetic", "modulus", modulus, 2, 10**MAX_DIGITS)
    if op not in ("+", "*"):
        raise TaskError(f"task 'modular_arithmetic': op={op!r} must be '+' or '*'.")

    def make_doc(rng: random.Random) -> dict:
        a, b = rng.randrange(modulus), rng.randrange(modulus)
        value = a + b if op == "+" else a * b
        return {"a": a, "b": b, "op": op, "m": modulus, "answer": value % modulus,
                "scratchpad": modular_scratchpad(a, b, modulus, op)}

    problems = f"modular_{'add' if op == '+' else 'mul'}_{modulus}"
    spec = _spec(problems, "{a}{op}{b} mod {m}=", chain_of_thought, num_fewshot, seed)
    return _fit_generation_budget(generated_task(spec, make_doc, num_test=num_test, num_train=num_train, seed=seed,
                                                 problem_set=problems))
