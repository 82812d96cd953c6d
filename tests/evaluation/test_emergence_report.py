"""The study's library pieces without a model: task training documents and mixtures, curve
summaries across sizes, result tables and plots."""
from __future__ import annotations

import json
import math
import os

import pytest

from research.evaluation.fewshot import fewshot_context
from research.evaluation.plots import plot_grid
from research.evaluation.results_table import read_rows, write_rows
from research.evaluation.emergence_metrics import curve_shape_with_noise
from research.evaluation.study_report import (curve_summary, jump_verdicts, noisy_curve_summary, sharpening_verdict,
                                              transition_shapes)
from research.evaluation.task_catalog import catalog_task
from research.evaluation.task_corpus import (held_out_prompts, solved_example, task_documents, take_chars,
                                             write_mixture)
from research.evaluation.task_spec import TaskError
from research.models.config import ConfigError


def test_task_documents_are_laid_out_like_fewshot_prompts():
    task = catalog_task("addition_2digit_cot", num_test=3, num_train=40)
    task = type(task)(task.spec.replace(description="Think.\n"), task.splits)
    docs = task_documents(task, examples_per_document=(3, 3), seed=0)
    train = task.docs("train")
    assert len(docs) == 14  # 40 problems, 3 per document, the last one holds 1
    assert docs[0] == "Think.\n" + "\n".join(solved_example(task.spec, d) for d in train[:3])
    assert docs[-1] == "Think.\n" + solved_example(task.spec, train[-1])
    # A 2-shot prompt is the description, two solved examples and the query, in the same layout.
    shots = fewshot_context(task, 0, 2).split("\n")
    assert shots[0] == "Think." and len(shots) == 4
    assert all(any(s == solved_example(task.spec, d) for d in train) for s in shots[1:3])
    assert shots[3] == task.spec.prompt.format_map(task.docs("test")[0].fields)


def test_held_out_problems_never_reach_training_documents():
    test_task = catalog_task("addition_1digit", num_test=30, seed=0)
    train_task = catalog_task("addition_1digit", num_test=0, num_train=500, seed=1)
    held = held_out_prompts(test_task)
    docs = task_documents(train_task, examples_per_document=(1, 5), seed=0, held_out=[test_task])
    lines = [line for d in docs for line in d.split("\n")]
    assert lines and not any(line.split("=")[0] + "=" in held for line in lines)
    assert len(lines) < 500  # some of the 100 possible problems were dropped
    with pytest.raises(TaskError, match="examples_per_document=\\(3, 2\\)"):
        task_documents(train_task, examples_per_document=(3, 2), seed=0)


def test_task_documents_fit_the_training_window_and_head_each_with_its_own_description():
    """cpu_tiny's addition documents of up to 16 sums ran to ~350 characters for 128-token windows:
    8-10% of its problems were cut by a window boundary and trained without the start of their
    prompt. A templated description was docs[0]'s in every document."""
    from research.evaluation.task_spec import make_task
    task = catalog_task("addition_3digit", num_test=0, num_train=400, seed=0)
    uncut = task_documents(task, examples_per_document=(1, 16), seed=0)
    docs = task_documents(task, examples_per_document=(1, 16), seed=0, max_chars=60)
    assert max(map(len, uncut)) > 60 >= max(map(len, docs))
    # Every problem once, in order, whole: only where documents end differs.
    assert [line for d in docs for line in d.split("\n")] == [solved_example(task.spec, d) for d in task.docs("train")]
    assert task_documents(task, examples_per_document=(1, 16), seed=0, max_chars=10**6) == uncut
    # An example longer than the limit is a document of its own, not dropped.
    assert task_documents(task, examples_per_document=(2, 2), seed=0, max_chars=3)[:2] == [
        solved_example(task.spec, d) for d in task.docs("train")[:2]]
    with pytest.raises(TaskError, match="max_chars=0 must be >= 1"):
        task_documents(task, examples_per_document=(1, 2), seed=0, max_chars=0)
    subjects = make_task(task.spec.replace(name="qa", prompt="Q: {q}", target_delimiter="\nA: ", target="{a}",
                                           description="About {subject}.\n\n", fewshot_delimiter="\n\n"),
                         {"train": [dict(subject=s, q=f"{s} q{i}", a=f"a{i}") for i, s in
                                    enumerate(["law", "law", "art", "art", "sea"])], "test": []})
    heads = [doc.split(".")[0] for doc in task_documents(subjects, examples_per_document=(2, 2), seed=0)]
    assert heads == ["About law", "About art", "About sea"]


def test_unscramble_training_leaves_out_the_words_evaluation_asks_for():
    """Every scramble of a word asks for that word (answer_identifies_problem): 150 of 200 evaluation
    words were trained as the answer of another scramble."""
    test_task = catalog_task("unscramble_anagram1", num_test=200, seed=0)
    train_task = catalog_task("unscramble_anagram1", num_test=0, num_train=2000, seed=1)
    words = set(test_task.answers("test"))
    docs = task_documents(train_task, examples_per_document=(1, 1), seed=0, held_out=[test_task])
    trained = {doc.rsplit(train_task.spec.target_delimiter, 1)[-1] for doc in docs}
    assert len(docs) < 2000 and not trained & words
    assert set(task_documents(train_task, examples_per_document=(1, 1), seed=0)) > set(docs)


def test_mixture_file_is_shuffled_jsonl_with_sources(tmp_path):
    path = str(tmp_path / "mix.jsonl")
    chars = write_mixture(path, {"corpus": ["def f():\n  pass\n", "x = 1\n"], "task": ["1+1=2", "2+2=4", " "]},
                          seed=0)
    records = [json.loads(line) for line in open(path)]
    assert chars == {"corpus": 22, "task": 10} and len(records) == 4  # blank texts are dropped
    assert {r["source"] for r in records} == {"corpus", "task"}
    assert take_chars(["abcd", "efgh", "ij"], 6) == ["abcd", "ef"]


def test_curve_summary_orients_metrics_and_finds_the_jump():
    sizes = [1e4, 3e4, 1e5, 3e5, 1e6]
    exact = [0.0, 0.0, 0.0, 0.01, 0.6]  # a jump at the largest size
    edit = [5.0, 4.0, 3.0, 2.0, 1.0]  # lower is better: a steady improvement
    rows = [{"task": "t", "num_shots": 0, "params": p, "exact_match": e, "token_edit_distance": d}
            for p, e, d in zip(reversed(sizes), reversed(exact), reversed(edit))]  # any order
    summary = {s["metric"]: s for s in curve_summary(rows, scale="params", group_by=("task", "num_shots"),
                                                      metrics=("exact_match", "token_edit_distance", "missing"))}
    assert set(summary) == {"exact_match", "token_edit_distance"}
    assert summary["exact_match"]["values"] == exact and summary["exact_match"]["largest"] == 0.6
    # Steps 0, 0, .01, .59: root median square = sqrt(median(0, 0, 1e-4, .3481)) = sqrt(5e-5).
    assert summary["exact_match"]["breakthroughness"] == pytest.approx(0.6 / math.sqrt(5e-5))
    assert summary["exact_match"]["linearity"] == pytest.approx(0.6 / math.sqrt((1e-4 + 0.59**2) / 4))
    # Edit distance falls in equal steps: after negation, linearity = breakthroughness = n - 1.
    assert summary["token_edit_distance"]["breakthroughness"] == pytest.approx(4.0)
    assert summary["token_edit_distance"]["linearity"] == pytest.approx(4.0)
    # No per-item scores, no noise floor: the report's paper_* columns hold the same values.
    assert summary["exact_match"]["paper_breakthroughness"] == summary["exact_match"]["breakthroughness"]
    assert summary["exact_match"]["paper_linearity"] == summary["exact_match"]["linearity"]
    with pytest.raises(ConfigError, match="has two rows at params"):
        curve_summary(rows + rows[:1], scale="params", group_by=("task",), metrics=("exact_match",))


def test_noisy_curve_summary_gives_item_means_in_the_metric_own_orientation():
    # Edit distance (lower is better) is negated for the shape and back for the values: a size
    # whose items are all 0 shows 0.0, not "-0.0"; values are the item means, ordered by size.
    items = {1e4: [2.0, 1.0, 3.0, 2.0], 1e5: [1.0, 0.0, 1.0, 0.0], 1e6: [0.0, 0.0, 0.0, 0.0]}
    rows = [{"task": "t", "num_shots": 0, "params": p, "items": {"token_edit_distance": v}}
            for p, v in reversed(items.items())]
    (shape,) = noisy_curve_summary(rows, scale="params", group_by=("task",), metrics=("token_edit_distance",))
    assert shape["values"] == [2.0, 0.5, 0.0] and "-0.0" not in json.dumps(shape["values"])
    assert all(low <= v <= high for v, (low, high) in zip(shape["values"], shape["value_intervals"]))
    assert shape["total_improvement"] == pytest.approx(2.0)  # the fall in edit distance, as an improvement
    # A non-finite item value: that curve has no shape (as curve_summary's), the others keep theirs;
    # it raised "scores [nan, ...] must be finite", naming no task or metric, and the report was lost.
    for row in rows:
        row["items"]["exact_match"] = [0.0, 1.0, 1.0, 0.0]
    rows[0]["items"]["token_edit_distance"] = [float("nan"), 0.0, 0.0, 0.0]
    shapes = noisy_curve_summary(rows, scale="params", group_by=("task",),
                                 metrics=("token_edit_distance", "exact_match"))
    assert [s["metric"] for s in shapes] == ["exact_match"]


def _shape(task, metric, values, interval, b=1.0):
    return {"task": task, "metric": metric, "values": values, "breakthroughness": b,
            "breakthroughness_interval": interval}


def test_sharpening_verdict_calls_the_mirage_only_when_the_whole_answer_sharpens_with_length_and_p_does_not():
    lengths = {"two": 2.0, "six": 6.0}
    rising = [0.5, 0.6, 0.75, 0.95]
    shapes = [_shape("two", "exact_match", [0.25, 0.36, 0.56, 0.9], [3.0, 3.5]),
              _shape("six", "exact_match", [0.02, 0.05, 0.18, 0.74], [4.5, 6.0]),
              _shape("two", "teacher_forced_accuracy", rising, [2.8, 3.2]),
              _shape("six", "teacher_forced_accuracy", rising, [2.9, 3.3])]
    verdict = sharpening_verdict(shapes, lengths)
    assert verdict["mirage"] and (verdict["shortest"], verdict["longest"]) == ("two", "six")
    # Intervals that touch are not apart: no sharpening of exact match, no mirage.
    touching = [dict(s, breakthroughness_interval=[3.5, 6.0]) if (s["task"], s["metric"]) == ("six", "exact_match")
                else s for s in shapes]
    assert not sharpening_verdict(touching, lengths)["mirage"]
    # p sharpening as much as exact match: a genuine change in p, not the metric's doing.
    p_sharper = [dict(s, breakthroughness_interval=[4.0, 5.0]) if (s["task"], s["metric"]) ==
                 ("six", "teacher_forced_accuracy") else s for s in shapes]
    assert not sharpening_verdict(p_sharper, lengths)["mirage"]
    # p dipping at one size step: no premise across sizes, but a net rise is enough along training.
    dipping = [dict(s, values=[0.5, 0.7, 0.65, 0.95]) if s["metric"] == "teacher_forced_accuracy" else s
               for s in shapes]
    assert not sharpening_verdict(dipping, lengths)["mirage"]
    assert sharpening_verdict(dipping, lengths, premise="net")["mirage"]
    as_along_training = [{**{k: v for k, v in s.items() if k != "values"}, "first": s["values"][0],
                          "last": s["values"][-1]} for s in dipping]  # transition_shapes rows: ends only
    assert sharpening_verdict(as_along_training, lengths, premise="net")["mirage"]
    # Exact match within item noise (no breakthroughness): not sharper.
    flat = [dict(s, breakthroughness=None, breakthroughness_interval=None) if s["metric"] == "exact_match" else s
            for s in shapes]
    assert not sharpening_verdict(flat, lengths)["exact_match_sharper"]
    assert sharpening_verdict(shapes[:3], lengths) is None  # a length without p: no verdict
    # One size per length: p does not rise (there is no step); the verdicts table said it did.
    single = [dict(s, values=s["values"][-1:]) for s in shapes]
    assert not sharpening_verdict(single, lengths)["teacher_forced_accuracy_improves"]


def test_transition_shapes_find_a_jump_along_training_and_not_noise():
    # 200 items per checkpoint, steps 50..300. Size "two": nothing until step 200, then 180 of 200
    # right (a jump between steps 150 and 200). Size "one": 4-6 right at every step (noise).
    def rows(size, params, correct):
        return [{"task": "copying", "size": size, "params_non_embedding": params, "step": 50 * (i + 1),
                 "items": {"exact_match": [1.0] * c + [0.0] * (200 - c)}} for i, c in enumerate(correct)]
    data = rows("two", 2e5, [0, 0, 0, 180, 180, 184]) + rows("one", 1e4, [5, 4, 6, 5, 4, 6])
    one, two = transition_shapes(data[::-1], "copying", ("exact_match", "missing"))  # sorted by size
    assert (one["size"], two["size"]) == ("one", "two")
    assert two["above_noise"] and two["largest_step"] == pytest.approx(0.9) and two["at_step"] == 200
    assert two["largest_step"] > 10 * two["largest_step_se"]
    # Steps 0, 0, .9, 0, .02: root median square is the floored noise of a zero step, B in the tens.
    assert two["breakthroughness"] > 10 and two["linearity"] == pytest.approx(0.92 / math.sqrt(
        (0.9**2 + 0.02**2 + 3 * (1 / 200) ** 2) / 5), rel=1e-9)
    assert not one["above_noise"] and one["breakthroughness"] is None and not one["jump"]
    # The jump is 0.9 / (1/200) = 180 typical steps: a transition. A curve that wanders
    # (steps of 1-2% up and down; 1200 items) is not one.
    assert two["jump"] and two["jump_ratio"] == pytest.approx(180.0)
    wander = rows("w", 1e5, [80, 82, 80, 78, 81, 78, 82, 79, 83])
    for row in wander:
        row["items"]["exact_match"] *= 6  # 1200 items, the same rates
    (w,) = transition_shapes(wander, "copying", ("exact_match",))
    assert w["above_noise"] is not None and not w["jump"] and w["jump_ratio"] < 3


def test_jump_verdicts_tell_the_mirage_from_a_genuine_transition():
    # 400 items per checkpoint, steps 100..800. "mirage": per-token accuracy and probability climb
    # 0.2 -> 0.9 in steady steps while exact match (all 3 digits right) sits at 0 and jumps at
    # the end. "genuine": all three jump between the same two checkpoints. "early": the
    # per-token metrics jump at step 200, exact match only at step 800 (not the same event).
    # "flat": nothing jumps (no verdict).
    def rows(size, exact, per_token):
        return [{"task": "add", "size": size, "params_non_embedding": len(size), "step": 100 * (i + 1),
                 "items": {"exact_match": [1.0] * e + [0.0] * (400 - e),
                           "teacher_forced_accuracy": [1.0] * t + [0.0] * (400 - t),
                           "teacher_forced_prob": [0.9] * t + [0.1] * (400 - t)}}
                for i, (e, t) in enumerate(zip(exact, per_token))]
    data = (rows("mirage", [0, 0, 0, 0, 0, 0, 0, 280], [80, 120, 160, 200, 240, 280, 320, 360])
            + rows("genuine", [0, 0, 0, 0, 0, 300, 300, 300], [80, 80, 80, 80, 80, 390, 390, 390])
            + rows("early", [0, 0, 0, 0, 0, 0, 0, 300], [80, 390, 390, 390, 390, 390, 390, 390])
            + rows("flat", [0] * 8, [80] * 8))
    metrics = ("exact_match", "teacher_forced_accuracy", "teacher_forced_prob")
    shapes = transition_shapes(data, "add", metrics)
    verdicts = {v["size"]: v for v in jump_verdicts(shapes)}
    assert {k: v["verdict"] for k, v in verdicts.items()} == {"mirage": "mirage", "genuine": "genuine",
                                                              "early": "mirage"}
    assert verdicts["mirage"]["teacher_forced_accuracy_jump_ratio"] == pytest.approx(1.0)
    assert verdicts["genuine"]["at_step"] == 600 and verdicts["early"]["teacher_forced_prob_at_step"] == 200
    # Without the per-token probability there is nothing to check the argmax accuracy against: no verdict.
    assert jump_verdicts([s for s in shapes if s["metric"] != "teacher_forced_prob"]) == []


def test_transition_shapes_keep_each_shot_setting_its_own_curve():
    # 0-shot always wrong, 1-shot always right, at every checkpoint: two flat curves. Merged into
    # one (as they were) they made a curve of 8 points with repeated steps and a "jump" of 1.0.
    rows = [{"task": "t", "size": "s", "params_non_embedding": 1, "step": step, "num_shots": shots,
             "items": {"exact_match": [float(shots)] * 400}} for step in (250, 500, 750, 1000) for shots in (0, 1)]
    zero, one = transition_shapes(rows, "t", ("exact_match",))
    assert (zero["num_shots"], one["num_shots"]) == (0, 1)
    for shape, value in ((zero, 0.0), (one, 1.0)):
        assert shape["checkpoints"] == 4 and shape["first"] == shape["last"] == value
        assert shape["largest_step"] == 0.0 and not shape["above_noise"] and not shape["jump"]
    with pytest.raises(ConfigError, match="repeat a value"):
        curve_shape_with_noise([250, 250, 500], [[0.0, 1.0]] * 3)


def test_rows_round_trip_and_plots_are_written(tmp_path):
    rows = [{"task": "a", "size": s, "params": p, "step": 1, "exact_match": e}
            for s, p, e in (("s", 10, 0.1), ("l", 100, 0.5))] + [{"task": "b", "size": "s", "params": 10}]
    paths = write_rows(rows, str(tmp_path / "r"), metadata={"note": 1})
    assert read_rows(paths["json"]) == rows
    assert open(paths["csv"]).read().splitlines() == ["task,size,params,step,exact_match", "a,s,10,1,0.1",
                                                      "a,l,100,1,0.5", "b,s,10,,"]
    path = plot_grid(rows, x="params", metrics=("exact_match", "absent"), panel=lambda r: r["task"],
                     series=lambda r: r["size"], path=str(tmp_path / "p.png"))
    assert os.path.getsize(path) > 5_000 and open(path, "rb").read(4) == b"\x89PNG"


def test_lower_is_better_curves_along_training_are_oriented_before_their_shape():
    # Edit distance 3 -> 0 in one checkpoint is the model learning (the jump); 0 -> 3 is a
    # collapse, no jump. Unoriented, the collapse was the jump and the learning had no rise.
    def rows(size, params, wrong):  # 400 items; per checkpoint how many have edit distance 3 (the rest 0)
        return [{"task": "add", "size": size, "params_non_embedding": params, "step": 250 * (i + 1), "num_shots": 0,
                 "items": {"token_edit_distance": [3.0] * c + [0.0] * (400 - c)}} for i, c in enumerate(wrong)]
    data = rows("learns", 1, [400] * 6 + [0] * 6) + rows("forgets", 2, [0] * 6 + [400] * 6)
    learns, forgets = transition_shapes(data, "add", ("token_edit_distance",))
    assert learns["jump"] and not forgets["jump"]
    assert (learns["first"], learns["last"], learns["largest_step"], learns["at_step"]) == (3.0, 0.0, -3.0, 1750)
    assert learns["total_improvement"] == pytest.approx(3.0) and forgets["total_improvement"] == pytest.approx(-3.0)
    assert (forgets["first"], forgets["last"]) == (0.0, 3.0) and "-0.0" not in json.dumps(forgets)


def test_sharpening_verdicts_premise_reads_a_falling_edit_distance_as_improving():
    lengths = {"two": 2.0, "six": 6.0}
    falling = [2.0, 1.5, 0.8, 0.1]  # edit distance improving at every size step
    shapes = [_shape("two", "exact_match", [0.25, 0.36, 0.56, 0.9], [3.0, 3.5]),
              _shape("six", "exact_match", [0.02, 0.05, 0.18, 0.74], [4.5, 6.0]),
              _shape("two", "token_edit_distance", falling, [2.8, 3.2]),
              _shape("six", "token_edit_distance", falling, [2.9, 3.3])]
    verdict = sharpening_verdict(shapes, lengths, part="token_edit_distance")
    assert verdict["token_edit_distance_improves"] and verdict["mirage"]
    rising = [dict(s, values=s["values"][::-1]) if s["metric"] == "token_edit_distance" else s for s in shapes]
    assert not sharpening_verdict(rising, lengths, part="token_edit_distance")["token_edit_distance_improves"]
    ends = [{**{k: v for k, v in s.items() if k != "values"}, "first": s["values"][0], "last": s["values"][-1]}
            for s in shapes]  # transition_shapes rows, along training
    assert sharpening_verdict(ends, lengths, premise="net", part="token_edit_distance")["mirage"]
