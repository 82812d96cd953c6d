"""Task specs and files: loading, and one-line errors for malformed input."""
from __future__ import annotations

import json

import pytest

from research.evaluation.fewshot import fewshot_context
from research.evaluation.task_spec import TaskError, TaskSpec, gold_index, load_task, make_task, task_from_jsonl

MC = dict(name="capitals", output_type="multiple_choice", prompt="Q: capital of {country}?\nA:", target="{answer}",
          choices="options")


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def test_task_file_loads_with_data_files_relative_to_it(tmp_path):
    docs = [{"country": c, "answer": a, "options": ["Paris", "Rome", "Lima"]}
            for c, a in [("France", "Paris"), ("Italy", "Rome"), ("Peru", "Lima")]]
    _write_jsonl(tmp_path / "test.jsonl", docs)
    _write_jsonl(tmp_path / "train.jsonl", docs)
    (tmp_path / "capitals.json").write_text(json.dumps(
        {**MC, "metrics": ["acc"], "num_fewshot": 1, "data_files": {"test": "test.jsonl", "train": "train.jsonl"}}))
    task = load_task(str(tmp_path / "capitals.json"))
    assert task.spec.metrics == ("acc",) and len(task.docs("test")) == 3
    assert [gold_index(task.spec, d) for d in task.docs("test")] == [0, 1, 2]
    assert task.docs("test")[1].location.endswith("test.jsonl:2")
    assert fewshot_context(task, 0).endswith("Q: capital of France?\nA:")
    # Metrics default to every metric of the output type.
    assert TaskSpec(**MC).metrics == ("acc", "acc_norm", "brier_score", "target_log_prob")


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"country": "France", "answer": "Paris", "options": ["Paris"]}\n\n{"country": "Italy",\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:3: not valid JSON"):
        task_from_jsonl(TaskSpec(**MC), {"test": str(path)})
    path.write_text('["not", "an", "object"]\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:1: expected a JSON object"):
        task_from_jsonl(TaskSpec(**MC), {"test": str(path)})
    path.write_text('{"country": "France", "options": ["Paris"]}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:1: field 'answer' used by the target template is missing"):
        task_from_jsonl(TaskSpec(**MC), {"test": str(path)})
    path.write_text('{"country": "France", "answer": "Oslo", "options": ["Paris", "Rome"]}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl:1: target 'Oslo' is neither one of the choices"):
        task_from_jsonl(TaskSpec(**MC), {"test": str(path)})
    with pytest.raises(TaskError, match="does not exist"):
        task_from_jsonl(TaskSpec(**MC), {"test": str(tmp_path / "missing.jsonl")})


def test_bad_specs_fail_with_the_fix():
    with pytest.raises(TaskError, match=r"unknown metric\(s\) \['bleu'\] .* choose from \['acc'"):
        TaskSpec(**MC, metrics=["acc", "bleu"])
    with pytest.raises(TaskError, match="output_type='classify' is not one of"):
        TaskSpec(**{**MC, "output_type": "classify"})
    with pytest.raises(TaskError, match="multiple_choice needs choices="):
        TaskSpec(**{**MC, "choices": None})
    with pytest.raises(TaskError, match="not a valid format string"):
        TaskSpec(**{**MC, "prompt": "Q: {country"})
    with pytest.raises(TaskError, match="needs a target template"):
        TaskSpec(name="t", output_type="generate_until", prompt="{q}")


@pytest.mark.parametrize("field, value, message", [
    # A TypeError traceback, with 0 shots only once the model had compiled:
    ("target_delimiter", 5, r"target_delimiter=5 must be a string"),
    ("fewshot_delimiter", None, r"fewshot_delimiter=None must be a string"),
    # One line, but ending "a task needs name, output_type and prompt":
    ("num_fewshot", "1", r"num_fewshot='1' must be an integer"),
    ("max_new_tokens", True, r"max_new_tokens=True must be an integer"),
    ("until", 5, r"until=5 must be a stop string or a list of them"),
    ("description", 3, r"description=3 must be a string"),
    # Split into characters: "unknown metric(s) ['e', 'x', ...]":
    ("metrics", "exact_match", r"metrics='exact_match' must be a list of metric names"),
    ("choices", ["a"], r"choices=\['a'\] must be a string \(or null\)"),
])
def test_a_field_of_the_wrong_type_is_one_line_naming_it(field, value, message):
    with pytest.raises(TaskError, match=rf"task 'capitals': {message}") as error:
        TaskSpec(**{**MC, field: value})
    assert "\n" not in str(error.value)


def test_more_shots_than_the_fewshot_split_holds():
    spec = TaskSpec(name="t", output_type="generate_until", prompt="{q}=", target="{a}", num_fewshot=3)
    task = make_task(spec, {"test": [{"q": "1+1", "a": "2"}], "train": [{"q": "2+2", "a": "4"}, {"q": "1+3", "a": "4"}]})
    with pytest.raises(TaskError, match="num_fewshot=3 but the few-shot split 'train' holds 2 usable documents"):
        fewshot_context(task, 0)
    # Drawing from the evaluation split itself excludes the document being evaluated.
    same = make_task(spec.replace(num_fewshot=2, fewshot_split="test"), {"test": [{"q": str(i), "a": "x"}
                                                                                for i in range(3)]})
    assert fewshot_context(same, 1).count("1=") == 1  # only as the query
    with pytest.raises(TaskError, match="holds 2 usable documents"):
        fewshot_context(same, 0, num_fewshot=3)


def test_load_task_reports_missing_fields(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"name": "t", "data_files": {}}))
    with pytest.raises(TaskError, match="a task needs name, output_type and prompt"):
        load_task(str(tmp_path / "t.json"))
    (tmp_path / "t.json").write_text(json.dumps({**MC, "data_files": {}, "colour": "red"}))
    with pytest.raises(TaskError, match=r"unknown task field\(s\) \['colour'\]"):
        load_task(str(tmp_path / "t.json"))


def test_a_task_file_with_a_bad_path_or_bytes_is_one_line(tmp_path):
    """A number as a data file and non-UTF-8 bytes (in the task file or a JSONL line) were tracebacks."""
    (tmp_path / "t.json").write_text(json.dumps({**MC, "data_files": {"test": 5}}))
    with pytest.raises(TaskError, match=r"data_files \{'test': 5\} must map each split to a JSONL path"):
        load_task(str(tmp_path / "t.json"))
    (tmp_path / "t.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(TaskError, match=r"t.json: not UTF-8 text"):
        load_task(str(tmp_path / "t.json"))
    (tmp_path / "docs.jsonl").write_bytes(b'{"q": "a"}\n{"q": "caf\xe9"}\n')
    (tmp_path / "t.json").write_text(json.dumps({**MC, "data_files": {"test": "docs.jsonl"}}))
    with pytest.raises(TaskError, match=r"docs.jsonl:2: not UTF-8 text") as error:
        load_task(str(tmp_path / "t.json"))
    assert "\n" not in str(error.value)


def test_multiple_choice_gold_follows_lm_evals_doc_to_target(tmp_path):
    # A digit target is an index even where a choice has that text ("1" among ["3", "2", "1"]
    # is "2"); it was looked up as choice text first, which scored the wrong gold.
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    docs = [{"question": "1+1=", "options": ["3", "2", "1"], "label": 1},
            {"question": "2+3=", "options": ["5", "0", "6"], "label": "0"},
            {"question": "Peru?", "options": ["Paris", "Rome", "Lima"], "label": "Lima"},
            {"question": "0+0=", "options": ["1", "0", "2"], "label": 1}]
    data = _write_jsonl(tmp_path / "docs.jsonl", docs)
    (tmp_path / "digits_mc.yaml").write_text(
        f"task: digits_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: options\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n")
    lm_task = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["digits_mc"])["tasks"]["digits_mc"]
    # lm-eval's process_results reads an int target as the index and a str one as choice text.
    expected = [t if isinstance(t, int) else lm_task.doc_to_choice(d).index(t)
                for d, t in ((d, lm_task.doc_to_target(d)) for d in lm_task.test_docs())]
    spec = TaskSpec(name="digits_mc", output_type="multiple_choice", prompt="{question}", target="{label}",
                    choices="options", fewshot_split=None)
    task = task_from_jsonl(spec, {"test": data})
    assert [gold_index(spec, d) for d in task.docs("test")] == expected == [1, 0, 2, 1]
    with pytest.raises(TaskError, match=r"target '3' is read as an index \(digits\) but there are only 3 choices"):
        make_task(spec, {"test": [{"question": "?", "options": ["1", "2", "3"], "label": 3}]})


def test_until_defaults_to_the_fewshot_delimiter_as_lm_evals_task_config(tmp_path):
    """until defaulted to "\\n\\n" whatever the fewshot_delimiter: with "\\n" an answer ran on into
    the next made-up question ("4\\nQ: 3+3?\\nA: 6"), where lm-eval stops at the delimiter."""
    from lm_eval.config.task import TaskConfig

    gen = dict(name="qa", output_type="generate_until", prompt="Q: {q}\nA:", target="{a}")
    for delimiter in ("\n", "\n\n", "###"):
        lm_eval_until = TaskConfig(task="qa", fewshot_delimiter=delimiter,
                                   output_type="generate_until").generation_kwargs["until"]
        assert TaskSpec(**gen, fewshot_delimiter=delimiter).until == tuple(lm_eval_until) == (delimiter,)
    assert TaskSpec(**gen).until == ("\n\n",)  # both default fewshot_delimiter "\n\n"
    assert TaskSpec(**gen, fewshot_delimiter="\n", until=[".", "\n"]).until == (".", "\n")  # given: kept
    # replace() with a new delimiter: a stop string that was the old one's default follows it.
    assert TaskSpec(**gen).replace(fewshot_delimiter="\n").until == ("\n",)
    assert TaskSpec(**gen, until=["."]).replace(fewshot_delimiter="\n").until == (".",)
    _write_jsonl(tmp_path / "test.jsonl", [{"q": "2+2?", "a": "4"}])
    (tmp_path / "qa.json").write_text(json.dumps({**gen, "fewshot_delimiter": "\n", "fewshot_split": None,
                                                  "data_files": {"test": "test.jsonl"}}))
    assert load_task(str(tmp_path / "qa.json")).spec.until == ("\n",)
    with pytest.raises(TaskError, match=r"until=3 must be a stop string or a list of them"):
        TaskSpec(**gen, until=3)


def test_a_rolling_task_with_a_target_is_refused_naming_the_fix():
    """Only the prompt of a loglikelihood_rolling task is scored: a target (lm-eval wikitext's
    doc_to_target, where its text lives) was accepted and left out, so the bits per byte were
    the title's."""
    with pytest.raises(TaskError, match=r"task 'wiki': loglikelihood_rolling scores the prompt alone, so "
                                        r"target='\{text\}' would be ignored; put the scored text in prompt") as error:
        TaskSpec(name="wiki", output_type="loglikelihood_rolling", prompt="{title}", target="{text}")
    assert "\n" not in str(error.value)
    assert TaskSpec(name="wiki", output_type="loglikelihood_rolling", prompt="{text}").target == ""
