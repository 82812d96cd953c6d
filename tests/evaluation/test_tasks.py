"""Generated tasks: seeded, correct answers, valid scratchpads, knob validation."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from research.evaluation.fewshot import fewshot_context
from research.evaluation.metrics import extract_answer
from research.evaluation.task_spec import TaskError, gold_text
from research.evaluation.task_catalog import catalog_task
from research.evaluation.tasks import get_task, task_names
from research.evaluation.tasks.chain_of_thought import (addition_scratchpad, modular_scratchpad,
                                                        multiplication_scratchpad)
from research.evaluation.tasks.unscramble import scramble
from research.evaluation.tasks.words import word_list


def _docs(task, split="test"):
    return [d.fields for d in task.docs(split)]


def test_every_task_is_seeded_and_builds_prompts():
    for name in task_names():
        a, b = get_task(name, seed=1, num_test=5, num_train=3), get_task(name, seed=1, num_test=5, num_train=3)
        assert _docs(a) == _docs(b)
        assert _docs(a) != _docs(get_task(name, seed=2, num_test=5, num_train=3))
        # The test split does not depend on the size of the train split.
        assert _docs(a) == _docs(get_task(name, seed=1, num_test=5, num_train=9))
        assert fewshot_context(a, 0, num_fewshot=3)


def test_empty_tasks_build_and_evaluation_names_the_empty_split():
    # Arithmetic took max() of its documents' lengths and raised a bare ValueError on an empty
    # task; every other generated task builds one, and evaluate() refuses it in one line.
    from research.evaluation.evaluator import evaluate

    for name in ("addition_3digit", "multiplication_2digit", "modular_addition", "addition_2digit_cot", "copying"):
        task = catalog_task(name, num_test=0, num_train=0)
        assert task.docs("test") == () and task.docs("train") == ()
        with pytest.raises(TaskError, match=r"split 'test' holds no documents; give it some \(num_test >= 1"):
            evaluate(None, task)  # refused before the model is called


def test_arithmetic_answers_and_digit_knobs():
    for digits in (1, 4, 8):
        for doc in _docs(get_task("addition", digits=digits, num_test=20)):
            assert doc["a"] + doc["b"] == doc["answer"] and len(str(doc["a"])) == digits
    # reverse_answer: the sum's digits least-significant first (carry-out last, e.g. 1036 -> "6301").
    reversed_docs = _docs(get_task("addition", digits=3, num_test=50, reverse_answer=True))
    assert all(d["answer"] == str(d["a"] + d["b"])[::-1] for d in reversed_docs)
    assert any(len(d["answer"]) == 4 for d in reversed_docs)
    with pytest.raises(TaskError, match="reverse_answer=True has no chain-of-thought form"):
        get_task("addition", reverse_answer=True, chain_of_thought=True)
    # reverse_operands too: every number least-significant digit first (457 + 86 -> "754", "68", "345").
    for doc in _docs(get_task("addition", digits=4, num_test=50, reverse_answer=True, reverse_operands=True)):
        a, b = int(doc["a"][::-1]), int(doc["b"][::-1])
        assert len(doc["a"]) == len(doc["b"]) == 4 and doc["answer"] == str(a + b)[::-1]
    # Its own first problem, 738+381 (lsb-first tasks keep their problems: tasks/arithmetic.py), read backwards.
    assert _docs(catalog_task("addition_3digit_lsb_first", num_test=1))[0]["a"] == "837"  # 738 read backwards
    with pytest.raises(TaskError, match="reverse_operands=True needs reverse_answer=True"):
        get_task("addition", reverse_operands=True)
    # pad_to: operands zero-padded in their high places (least-significant first: trailing zeros);
    # the answer keeps its own length, so exact match still scores `digits` (+ carry) digits.
    padded = _docs(catalog_task("addition_2digit_lsb_first_pad6", num_test=50))
    for doc in padded:
        a, b = int(doc["a"][::-1]), int(doc["b"][::-1])
        assert len(doc["a"]) == len(doc["b"]) == 6 and doc["a"][2:] == doc["b"][2:] == "0000"
        assert 10 <= a <= 99 and 10 <= b <= 99 and doc["answer"] == str(a + b)[::-1]
    assert {len(d["answer"]) for d in padded} == {2, 3}
    for doc in _docs(get_task("addition", digits=3, pad_to=5, num_test=20)):  # usual order: leading zeros
        assert doc["a"][:2] == doc["b"][:2] == "00" and doc["answer"] == int(doc["a"]) + int(doc["b"])
        assert 100 <= int(doc["a"]) <= 999
    with pytest.raises(TaskError, match="pad_to=3 must be 0 \\(no padding\\) or in \\[4, 8\\]"):
        get_task("addition", digits=4, pad_to=3)
    with pytest.raises(TaskError, match="pad_to=9 must be"):
        get_task("addition", digits=4, pad_to=9)
    # base: every number in base B (digits, then letters), checked with Python's own int(s, base).
    for base, name in ((16, "addition_3digit_base16_lsb_first"), (26, "addition_3digit_base26_lsb_first_pad6")):
        docs = _docs(catalog_task(name, num_test=200))
        for doc in docs:
            a, b = int(doc["a"][::-1], base), int(doc["b"][::-1], base)
            assert base**2 <= a < base**3 and base**2 <= b < base**3
            assert int(doc["answer"][::-1], base) == a + b and doc["answer"][-1] != "0"
        assert max(max(d["a"] + d["b"]) for d in docs) == "0123456789abcdefghijklmnopqrstuvwxyz"[base - 1]
    assert get_task("addition", digits=2, base=2, num_test=1).splits["test"][0].fields["a"] in ("10", "11")
    with pytest.raises(TaskError, match="base=37 must be in \\[2, 36\\]"):
        get_task("addition", base=37)
    with pytest.raises(TaskError, match="base=16 has no chain-of-thought form"):
        get_task("addition", base=16, chain_of_thought=True)
    for doc in _docs(get_task("multiplication", digits=3, digits_b=2, num_test=20)):
        assert doc["a"] * doc["b"] == doc["answer"] and len(str(doc["b"])) == 2
    for doc in _docs(get_task("modular_arithmetic", modulus=13, op="*", num_test=20)):
        assert (doc["a"] * doc["b"]) % 13 == doc["answer"]
    with pytest.raises(TaskError, match="digits=9 must be in \\[1, 8\\]"):
        get_task("addition", digits=9)
    with pytest.raises(TaskError, match="op='-' must be"):
        get_task("modular_arithmetic", op="-")
    with pytest.raises(TaskError, match="unknown knob\\(s\\) \\['digit'\\]"):
        get_task("addition", digit=3)
    with pytest.raises(TaskError, match="Did you mean addition"):
        get_task("additon")


def test_scratchpads_are_correct_worked_steps():
    # 457 + 86: 7+6=13 carry 1, 5+8+1=14 carry 1, 4+1=5 -> 543.
    assert addition_scratchpad(457, 86) == "7+6=13 carry 1; 5+8+1=14 carry 1; 4+1=5"
    assert addition_scratchpad(95, 5) == "5+5=10 carry 1; 9+1=10 carry 1; final carry 1"
    assert multiplication_scratchpad(123, 45) == "123*5=615; 123*40=4920; 615+4920=5535"
    assert multiplication_scratchpad(12, 30) == "12*30=360"
    assert modular_scratchpad(17, 23, 13, "+") == "17+23=40; 40=3*13+1"
    # Every step of every generated scratchpad is true arithmetic, and the target ends in the answer.
    for name, knobs in [("addition", dict(digits=5)), ("multiplication", dict(digits=3)),
                        ("modular_arithmetic", dict(modulus=31, op="*"))]:
        task = get_task(name, chain_of_thought=True, num_test=10, **knobs)
        assert task.spec.name.endswith("_cot")
        for doc in task.docs("test"):
            target = gold_text(task.spec, doc)
            assert extract_answer(target, task.spec.answer_prefix) == str(doc.fields["answer"])
            for step in target.split(". Answer:")[0].split("; "):
                if "=" in step:  # "7+6=13 carry 1", "123*40=4920", "391=12*31+19"
                    left, right = step.split("=")
                    assert eval(left) == eval(right.split()[0]), target
            assert len(target) + 1 <= task.spec.max_new_tokens


def test_unscramble_induction_and_recall_documents():
    words = set(word_list())
    assert len(words) > 500 and all(w.isalpha() and w.islower() for w in words)
    for corruption in ("cycle", "anagram1", "anagram2", "reversed"):
        for doc in _docs(get_task("unscramble", corruption=corruption, num_test=20)):
            assert Counter(doc["scrambled"]) == Counter(doc["word"]) and doc["word"] in words
    import random
    assert scramble("value", "anagram1", random.Random(0))[::4] == "ve"  # first and last kept
    # anagram2 keeps two letters at each end: a word under 6 letters came back as its own answer
    # (463 of 1000 items of the catalog's anagram2), so its words have 6 letters or more.
    docs = _docs(get_task("unscramble", corruption="anagram2", num_test=300))
    assert min(len(d["word"]) for d in docs) == 6 and all(d["scrambled"] != d["word"] for d in docs)
    with pytest.raises(TaskError, match=r"corruption='anagram2' leaves words under 6 letters as they are"):
        get_task("unscramble", corruption="anagram2", min_length=4)
    for doc in _docs(get_task("unscramble", corruption="random_insertion", num_test=20)):
        assert re.sub(r"[^a-z]", "", doc["scrambled"]) == doc["word"]

    for doc in _docs(get_task("induction", length=10, num_predict=3, num_test=20)):
        assert doc["sequence"] == doc["prefix"] + " " + doc["continuation"]
        assert len(set(doc["sequence"].split())) == 10
    with pytest.raises(TaskError, match="distinct=True needs alphabet_size >= length"):
        get_task("induction", length=30)
    # min_length: lengths vary over [min_length, length], so the copy sits at no fixed offset.
    varied = _docs(get_task("induction", length=12, min_length=6, num_predict=4, num_test=60))
    lengths = {len(d["sequence"].split()) for d in varied}
    assert min(lengths) >= 6 and max(lengths) <= 12 and len(lengths) >= 4
    assert all(len(d["continuation"].split()) == 4 and d["sequence"] == d["prefix"] + " " + d["continuation"]
               for d in varied)
    with pytest.raises(TaskError, match="min_length"):
        get_task("induction", length=12, min_length=4, num_predict=4)

    # repeat: a segment of random letters (repeats allowed), then its copy; the first letter given.
    repeats = _docs(catalog_task("repeat_8to16", num_test=200))
    assert all(d["segment"].isalpha() and d["given"] + d["rest"] == d["segment"] and len(d["given"]) == 1
               for d in repeats)
    assert {len(d["segment"]) for d in repeats} == set(range(8, 17))
    assert any(len(set(d["segment"])) < len(d["segment"]) for d in repeats)  # letters drawn with replacement
    task = catalog_task("repeat_8to16", num_test=1)
    segment = task.docs("test")[0].fields["segment"]
    assert fewshot_context(task, 0, 0) + task.spec.target_delimiter + gold_text(task.spec, task.docs("test")[0]) \
        == segment + "|" + segment
    given3 = _docs(get_task("repeat", length=10, num_given=3, num_test=5))
    assert all(len(d["given"]) == 3 and len(d["rest"]) == 7 for d in given3)
    with pytest.raises(TaskError, match="min_length"):
        get_task("repeat", length=10, min_length=1)

    for doc in _docs(get_task("associative_recall", num_pairs=6, num_queries=3, value_length=2, num_test=20)):
        pairs = dict(p.split(":") for p in doc["pairs"].split())
        assert len(pairs) == 6
        assert doc["values"].split() == [pairs[q] for q in doc["queries"].split()]
    with pytest.raises(TaskError, match="num_pairs=30 exceeds the 26 distinct keys"):
        get_task("associative_recall", num_pairs=30, num_queries=2)


def _problem(name: str, doc: dict) -> tuple[int, int]:
    """The operands a document of task `name` poses, whatever order, padding or base it writes them in."""
    base = int(re.search(r"_base(\d+)", name).group(1)) if "_base" in name else 10
    if "lsb_first" in name:
        return int(str(doc["a"])[::-1], base), int(str(doc["b"])[::-1], base)
    return int(str(doc["a"]), base), int(str(doc["b"]), base)


@pytest.mark.parametrize("base, variants", [
    ("addition_3digit", ["addition_3digit_cot", "addition_3digit_reversed"]),
    ("multiplication_2digit", ["multiplication_2digit_cot"]),
    ("modular_addition", ["modular_addition_cot"])])
def test_variants_of_a_task_pose_its_problems(base, variants):
    """Each variant was seeded by its own name (spec.name + "_cot", "_reversed", ...), so a
    chain-of-thought or reversed variant posed other problems than the direct task, though only
    the target's form differs, and holding the direct task out held none of the variant's out."""
    from research.evaluation.task_corpus import task_documents

    sizes = dict(num_test=20, num_train=30, seed=3)
    reference = catalog_task(base, **sizes)
    for name in variants:
        variant = catalog_task(name, **sizes)
        for split in ("test", "train"):
            assert [_problem(name, d) for d in _docs(variant, split)] == \
                   [_problem(base, d) for d in _docs(reference, split)], (name, split)
    if variants[0].endswith("_cot"):
        # Training text made of the CoT variant's evaluation problems, with the direct task held
        # out: every one is held out (none was: the two posed different problems).
        cot = catalog_task(variants[0], **sizes)
        with pytest.raises(TaskError, match="every document of split 'test' is held out"):
            task_documents(cot, examples_per_document=(1, 1), seed=0, split="test", held_out=[reference])
