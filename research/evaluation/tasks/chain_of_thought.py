"""Scratchpads for the arithmetic tasks (Nye et al. 2021 "Show Your Work"; Wei et al. 2022).

Each function returns the worked steps of one problem as one line (so a "\\n" stop string
still ends the generation); a chain-of-thought target is `{scratchpad}. Answer: {answer}`,
placed after the prompt with a space ("457+86= 7+6=13 carry 1; ... Answer: 543"), and
exact match compares what follows "Answer:".
"""
from __future__ import annotations

ANSWER_PREFIX = "Answer:"
COT_TARGET = "{scratchpad}. " + ANSWER_PREFIX + " {answer}"


def addition_scratchpad(a: int, b: int) -> str:
    """Column addition from the least significant digit, e.g. 457+86:
    '7+6=13 carry 1; 5+8+1=14 carry 1; 4+1=5', and 'final carry 1' when one is left."""
    a_digits, b_digits = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(a_digits), len(b_digits))):
        terms = [int(d[i]) for d in (a_digits, b_digits) if i < len(d)] + ([carry] if carry else [])
        total = sum(terms)
        carry = total // 10
        step = "+".join(map(str, terms)) + f"={total}"
        steps.append(step + (f" carry {carry}" if carry else ""))
    if carry:
        steps.append(f"final carry {carry}")
    return "; ".join(steps)


def multiplication_scratchpad(a: int, b: int) -> str:
    """One partial product per non-zero digit of b, then running sums: '123*5=615; 123*40=4920; 615+4920=5535'."""
    partials = []
    for place, digit in enumerate(str(b)[::-1]):
        if digit != "0":
            factor = int(digit) * 10**place
            partials.append((factor, a * factor))
    if not partials:
        return f"{a}*0=0"
    steps = [f"{a}*{factor}={product}" for factor, product in partials]
    total = partials[0][1]
    for _, product in partials[1:]:
        steps.append(f"{total}+{product}={total + product}")
        total += product
    return "; ".join(steps)


def modular_scratchpad(a: int, b: int, modulus: int, op: str) -> str:
    """The plain result, then its division by the modulus: '17+23=40; 40=3*13+1'."""
    value = a + b if op == "+" else a * b
    return f"{a}{op}{b}={value}; {value}={value // modulus}*{modulus}+{value % modulus}"
