"""Few-shot prompts match golden strings; examples are seeded per document."""
from __future__ import annotations

import pytest

from research.evaluation.fewshot import fewshot_context, sample_shots
from research.evaluation.task_catalog import catalog_task
from research.evaluation.task_spec import TaskError, TaskSpec, make_task, render
from research.evaluation.tasks import get_task

QA = TaskSpec(name="qa", output_type="generate_until", prompt="Q: {q}\nA:", target="{a}", num_fewshot=2,
              fewshot_seed=7, description="Answer the questions.\n\n")
TRAIN = [{"q": f"{i}+{i}", "a": str(2 * i)} for i in range(6)]
TEST = [{"q": "7+1", "a": "8"}, {"q": "9+9", "a": "18"}]


def test_golden_prompts():
    task = make_task(QA, {"test": TEST, "train": TRAIN})
    # description, then shot + fewshot_delimiter ("\n\n") per shot, each shot prompt + " " + target.
    assert fewshot_context(task, 0) == "Answer the questions.\n\nQ: 5+5\nA: 10\n\nQ: 0+0\nA: 0\n\nQ: 7+1\nA:"
    assert fewshot_context(task, 1) == "Answer the questions.\n\nQ: 0+0\nA: 0\n\nQ: 5+5\nA: 10\n\nQ: 9+9\nA:"
    assert fewshot_context(task, 0, num_fewshot=0) == "Answer the questions.\n\nQ: 7+1\nA:"
    # Multiple choice shots show the gold choice's text; delimiters are configurable.
    mc = TaskSpec(name="mc", output_type="multiple_choice", prompt="{q}", target="{a}", choices="opts",
                  num_fewshot=1, target_delimiter=" -> ", fewshot_delimiter=" | ")
    task = make_task(mc, {"test": [{"q": "sky", "a": "blue", "opts": ["blue", "red"]}],
                          "train": [{"q": "grass", "a": "1", "opts": ["red", "green"]}]})
    assert fewshot_context(task, 0) == "grass -> green | sky"
    # Generated arithmetic: bare equations, one per line, no target delimiter.
    addition = get_task("addition", digits=2, num_test=1, num_train=4, num_fewshot=2, seed=3)
    assert fewshot_context(addition, 0) == "85+55=140\n30+33=63\n92+31="


def test_shots_depend_only_on_seed_and_document_index():
    task = make_task(QA, {"test": TEST * 5, "train": TRAIN})
    first = [d.fields["q"] for d in sample_shots(task, 3, 4)]
    assert first == [d.fields["q"] for d in sample_shots(task, 3, 4)]
    assert len(set(first)) == 4  # without replacement
    reseeded = make_task(QA.replace(fewshot_seed=8), {"test": TEST * 5, "train": TRAIN})
    draws = {tuple(d.fields["q"] for d in sample_shots(t, i, 4)) for t in (task, reseeded) for i in range(10)}
    assert len(draws) > 5  # different documents / seeds get different examples


def test_no_shot_poses_the_query_itself():
    # addition_1digit has 100 problems; its train stream shares some with the test split, and
    # 14 of 200 5-shot prompts showed the query solved ("9+7=16" above "9+7=").
    task = catalog_task("addition_1digit", num_test=200, num_train=64)
    spec = task.spec
    leaks = 0
    for i, doc in enumerate(task.docs("test")):
        query = render(spec.prompt, doc, "prompt")
        leaks += any(render(spec.prompt, s, "prompt") == query for s in sample_shots(task, i, 5))
    assert leaks == 0
    # The same problem also under the evaluation split: every copy of it is left out, not just the document.
    same = make_task(QA.replace(fewshot_split="test"), {"test": [TEST[0], TEST[0], *TEST[1:], *TRAIN[:2]]})
    assert "7+1" not in [s.fields["q"] for s in sample_shots(same, 0, 3)]
    # A pool holding too few other problems is an error that says so.
    only = make_task(QA, {"test": TEST, "train": [TEST[0], TEST[0], TRAIN[0]]})
    assert [s.fields["q"] for s in sample_shots(only, 0, 1)] == ["0+0"]
    with pytest.raises(TaskError, match=r"num_fewshot=2 but the few-shot split 'train' holds 1 usable documents "
                                        r"\(whose prompt is not that of evaluation document 0\); lower num_fewshot"):
        sample_shots(only, 0, 2)


def test_a_suite_without_shot_counts_prompts_each_task_with_its_own():
    """experiments.evaluate passed an explicit 0 by default, so a task file's "num_fewshot": 2 was
    evaluated 0-shot without notice; a shot count given twice gave two identical rows."""
    from research.evaluation.suite import plan_suite
    qa = make_task(QA, {"test": TEST, "train": TRAIN})
    (entry,) = plan_suite(["qa"], None, tasks={"qa": qa})
    assert entry.num_fewshot == 2 and fewshot_context(entry.task, 0, entry.num_fewshot).count("Q: ") == 3
    assert [e.num_fewshot for e in plan_suite(["qa"], [0, 1], tasks={"qa": qa})] == [0, 1]
    with pytest.raises(TaskError, match=r"shot count\(s\) \[0\] listed twice"):
        plan_suite(["qa"], [0, 0], tasks={"qa": qa})
    # An empty evaluation split: rendering its document 0 was an IndexError.
    empty = make_task(QA, {"test": [], "train": TRAIN})
    with pytest.raises(TaskError, match=r"split 'test' holds no documents"):
        plan_suite(["qa"], [0], tasks={"qa": empty})


def test_no_shot_of_an_unscramble_task_has_the_querys_word():
    """Every scramble of a word asks for that word: unscramble_anagram1 showed 'toenks = tokens'
    above the query 'toneks =' (1 of 200 5-shot prompts, 4 of 200 at 32 shots)."""
    task = catalog_task("unscramble_anagram1", num_test=200)
    assert task.spec.answer_identifies_problem
    for k in (5, 32):
        for i, doc in enumerate(task.docs("test")):
            assert doc.fields["word"] not in [s.fields["word"] for s in sample_shots(task, i, k)]


def test_equal_answers_stay_where_they_are_other_problems():
    # "3+4=" and "5+2=" are two problems with one answer: such shots stay, and a task file opts in.
    spec = TaskSpec(name="t", output_type="generate_until", prompt="{q}=", target="{a}", num_fewshot=2)
    docs = {"test": [{"q": "3+4", "a": "7"}], "train": [{"q": "5+2", "a": "7"}, {"q": "6+1", "a": "7"}]}
    assert sorted(s.fields["q"] for s in sample_shots(make_task(spec, docs), 0, 2)) == ["5+2", "6+1"]
    same = make_task(spec.replace(answer_identifies_problem=True), {**docs, "train": [*docs["train"],
                                                                                      {"q": "1+1", "a": "2"}]})
    assert [s.fields["q"] for s in sample_shots(same, 0, 1)] == ["1+1"]
    with pytest.raises(TaskError, match=r"holds 1 usable documents \(whose prompt and answer are not that of "
                                        r"evaluation document 0\)"):
        sample_shots(same, 0, 2)
    with pytest.raises(TaskError, match=r"answer_identifies_problem='yes' must be true or false"):
        spec.replace(answer_identifies_problem="yes")
    # The catalog's check before any work counts the same shots (it counted prompts alone, and the
    # refusal came from sample_shots once evaluation ran).
    from research.evaluation.task_catalog import check_shots
    check_shots("same", same, 1)
    with pytest.raises(TaskError, match=r"holds 1 examples usable for every query"):
        check_shots("same", same, 2)
