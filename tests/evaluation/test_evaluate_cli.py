"""experiments.evaluate: a checkpoint trained here, or a Hugging Face folder, evaluated with one
command; every bad input fails with one line before anything is compiled."""
from __future__ import annotations

import json
import os
import string
import subprocess
import sys

import numpy as np
import pytest

from experiments import evaluate as cli
from research.evaluation import harness as harness_lib
from research.training import checkpoint_loading
from research.training.checkpoint_loading import checkpoint_steps, load_checkpoint, restore_params
from research.evaluation.results_table import format_table, read_rows
from research.evaluation.task_catalog import catalog_names, catalog_task, check_shots
from research.evaluation.task_spec import TaskError
from research.models.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 1-layer GPT trained for 2 steps (checkpoints at 1 and 2) with its own SentencePiece tokenizer."""
    from tests.tiny_run import train_tiny_gpt
    return train_tiny_gpt(str(tmp_path_factory.mktemp("run")), num_steps=2)


def test_checkpoint_evaluated_end_to_end(run_dir, tmp_path):
    lines = []
    rows = cli.evaluate_model(checkpoint=run_dir, tasks=["addition_1digit", "copying"], num_shots=[0, 1], num_test=3,
                              num_train=8, batch_size=4, output_dir=str(tmp_path), log=lines.append)
    assert [(r["task"], r["num_shots"]) for r in rows] == [("addition_1digit", 0), ("addition_1digit", 1),
                                                           ("copying", 0), ("copying", 1)]
    for row in rows:
        assert row["step"] == 2 and row["num_examples"] == 3 and row["model"] == "gpt2-tiny"
        assert 0 <= row["exact_match"] <= 1 and 0 <= row["token_accuracy"] <= 1
        assert row["target_log_prob"] < 0 and 0 <= row["brier_score"] <= 2
    assert read_rows(str(tmp_path / "step_2.json")) == json.loads(json.dumps(rows))
    assert (tmp_path / "step_2.csv").read_text().splitlines()[0].startswith("model,step,params_non_embedding,task")
    table = next(line for line in lines if line.startswith("task"))
    assert "exact_match" in table and "copying" in table


def test_on_several_hosts_only_process_0_writes_the_results(run_dir, tmp_path, monkeypatch):
    """Every process holds the same rows; on 2 processes both wrote, as step_N and step_N_v2."""
    import jax
    from jax.experimental import multihost_utils
    synced = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", synced.append)
    for index in (1, 0):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        lines = []
        cli.evaluate_model(checkpoint=run_dir, tasks=["addition_1digit"], num_test=2, num_train=4,
                           output_dir=str(tmp_path), log=lines.append)
        assert sorted(os.listdir(tmp_path)) == ([] if index else ["step_2.csv", "step_2.json"]), index
        assert lines[-1] == "the results are written by process 0" if index else lines[-1].startswith("wrote ")
    # Each waited for the files (orbax's restore syncs too, under its own names).
    assert [name for name in synced if name.startswith("experiments.")] == ["experiments.evaluate: results written"] * 2


def test_results_are_never_overwritten_silently(run_dir, tmp_path):
    def run(tasks, **kwargs):
        lines = []
        rows = cli.evaluate_model(checkpoint=run_dir, tasks=tasks, num_test=2, num_train=8, batch_size=4,
                                  output_dir=str(tmp_path), log=lines.append, **kwargs)
        return rows, lines[-1]

    first, line = run(["copying"])
    assert line.endswith("step_2.csv")
    second, line = run(["addition_1digit"])
    assert line == (f"wrote {tmp_path}/step_2_v2.json and {tmp_path}/step_2_v2.csv ({tmp_path}/step_2.json holds "
                    "earlier results, kept; --overwrite replaces them)")
    assert [r["task"] for r in read_rows(str(tmp_path / "step_2.json"))] == ["copying"]
    assert [r["task"] for r in read_rows(str(tmp_path / "step_2_v2.json"))] == ["addition_1digit"]
    _, line = run(["addition_1digit"])
    assert "step_2_v3.json" in line
    _, line = run(["addition_1digit"], overwrite=True)
    assert line.endswith("step_2.csv (replacing the earlier results: --overwrite)")
    assert [r["task"] for r in read_rows(str(tmp_path / "step_2.json"))] == ["addition_1digit"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"output directory .*file/sub'.* is a file, not a directory"):
        cli.evaluate_model(checkpoint=run_dir, tasks=["copying"], output_dir=str(blocker / "sub"))


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_restored_params_are_the_saved_params(run_dir):
    import orbax.checkpoint as ocp
    step_dir = os.path.join(run_dir, "checkpoints", "1")
    full = ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "state"))  # every item, as saved
    partial = restore_params(step_dir)
    import jax
    assert jax.tree.structure(partial) == jax.tree.structure(full["params"])
    for a, b in zip(jax.tree.leaves(partial), jax.tree.leaves(full["params"])):
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, np.asarray(b))
    assert checkpoint_steps(run_dir) == [1, 2]
    first, last = (load_checkpoint(run_dir, step=s) for s in (1, 2))
    assert first.step == 1 and last.step == 2 and first.tokenizer.vocab_size == 400
    assert not np.array_equal(first.params["token_embed"]["embedding"], last.params["token_embed"]["embedding"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(tasks=["addition_3digti"]), r"unknown task 'addition_3digti'; did you mean addition_3digit"),
    (dict(tasks=["addition_1digit"], num_shots=[0, 100]),
     r"task 'addition_1digit': num_shots=100 but its few-shot split 'train' holds 61 examples usable for every query"),
    (dict(tasks=["addition_1digit"], step=7), r"checkpoint step 7 is not in .*; it holds steps \[1, 2\]"),
    (dict(tasks=["copying", "copying"]), r"task\(s\) \['copying'\] listed twice"),
    (dict(tasks=["addition_1digit"], tokenizer="no/such.model"), r"tokenizer 'no/such.model' does not exist; give"),
    (dict(tasks=["addition_1digit"], tokenizer="."), r"tokenizer '.' is neither 'char'"),  # exists, not one
    (dict(tasks=["addition_1digit"], num_test=0), r"--num_test=0 must be >= 1"),
    (dict(tasks=["addition_1digit"], num_train=-1), r"--num_train=-1 must be >= 0"),
])
def test_bad_input_is_one_line_before_compiling(run_dir, monkeypatch, kwargs, message):
    def compiled(*args, **kwargs):
        raise AssertionError("reached the model")
    monkeypatch.setattr(harness_lib.Harness, "__init__", compiled)
    monkeypatch.setattr(checkpoint_loading, "restore_params", compiled)
    with pytest.raises((ConfigError, TaskError), match=message) as error:
        cli.evaluate_model(**{"checkpoint": run_dir, "num_test": 2, **kwargs})
    assert "\n" not in str(error.value)


def test_a_task_generating_past_the_models_context_is_one_line_before_any_task_runs(run_dir, monkeypatch):
    """It failed in the harness once the tasks before it had been evaluated, and their rows were lost."""
    from research.evaluation import suite
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: pytest.fail("a task ran"))
    spec = catalog_task("addition_8digit_cot", num_test=2, num_train=4, seed=0).spec
    context = load_checkpoint(run_dir).model.config.max_len
    assert spec.max_new_tokens >= context
    with pytest.raises(ConfigError, match=rf"task addition_8digit_cot generates up to {spec.max_new_tokens} tokens, "
                                          rf"which leaves no room for its prompt in .*'s context of {context}") as error:
        cli.evaluate_model(checkpoint=run_dir, tasks=["addition_1digit", "addition_8digit_cot"], num_test=2)
    assert "\n" not in str(error.value)


def test_a_task_whose_target_is_too_long_to_score_is_one_line_before_any_task_runs(run_dir, tmp_path, monkeypatch):
    """It failed in loglikelihood after its own generation and after the tasks before it had been
    evaluated, and no JSON or CSV was written (evaluator.misfit tests the boundary itself)."""
    from research.evaluation import suite
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: pytest.fail("a task ran"))
    context = load_checkpoint(run_dir).model.config.max_len
    spec = {"name": "long_target", "output_type": "generate_until", "prompt": "{q} =", "target": "{a}",
            "until": ["\n"], "max_new_tokens": 4, "fewshot_split": None, "data_files": {"test": "test.jsonl"}}
    (tmp_path / "long.json").write_text(json.dumps(spec))
    (tmp_path / "test.jsonl").write_text(json.dumps({"q": "1+1", "a": " ".join(["9"] * context)}) + "\n")
    with pytest.raises(ConfigError, match=rf"task .*long.json: document 0's target is \d+ tokens as scored .* "
                                          rf"max_length={context} of gpt2-tiny .*; shorten it, or evaluate a model "
                                          "with a longer max_len") as error:
        cli.evaluate_model(checkpoint=run_dir, tasks=["addition_1digit", str(tmp_path / "long.json")], num_shots=[0],
                           num_test=2, output_dir=str(tmp_path / "out"))
    assert "\n" not in str(error.value)


def test_a_task_the_models_family_cannot_run_is_one_line_before_any_task_runs(monkeypatch):
    """T5 given a generation task and then a rolling one: the rolling task failed after the first had
    run, and its row was lost; an encoder-only model likewise with a generation task."""
    from research.evaluation import suite
    from research.evaluation.task_spec import TaskSpec, make_task
    from tests.evaluation.conftest import IdTokenizer, tiny_model
    monkeypatch.setattr(suite, "run_suite", lambda *a, **k: pytest.fail("a task ran"))
    rolling = make_task(TaskSpec(name="ppl", output_type="loglikelihood_rolling", prompt="{text}"),
                        {"test": [{"text": "abc"}]})
    entries = suite.plan_suite(["addition_1digit", "ppl"], None, num_test=2,
                               tasks={"ppl": rolling})
    t5 = harness_lib.Harness(*tiny_model("t5-tiny"), IdTokenizer())
    with pytest.raises(ConfigError, match=r"task ppl: t5-tiny is an 'encoder_decoder' model; rolling"):
        cli.check_tasks_fit(entries, t5)
    bert = harness_lib.Harness(*tiny_model("bert-test"), IdTokenizer())
    with pytest.raises(ConfigError, match=r"task addition_1digit: bert-test is an encoder-only model; generation"):
        cli.check_tasks_fit(entries, bert)
    cli.check_tasks_fit(entries[1:], harness_lib.Harness(*tiny_model("gpt2-tiny"), IdTokenizer()))


def test_the_models_stop_ids_reach_the_harness(run_dir, monkeypatch):
    """generation_config.json's further eos ids (LoadedModel.stop_ids) end generation in experiments.evaluate
    and in the lm-eval adapter, as in experiments.generate; the harness never heard of them."""
    from research.evaluation.lm_eval_adapter import HarnessLM
    loaded = load_checkpoint(run_dir)._replace(stop_ids=(7,))
    assert 7 in HarnessLM.from_loaded(loaded).harness.end_ids
    seen = []

    def check(entries, harness):
        seen.append(harness.end_ids)
        raise ConfigError("checked")
    monkeypatch.setattr(cli, "check_tasks_fit", check)
    with pytest.raises(ConfigError, match="checked"):
        cli._run(loaded, [], 2, None, False, print)
    assert 7 in seen[0]


def test_directory_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_loading, "restore_params", lambda *a: pytest.fail("restored"))
    with pytest.raises(ConfigError, match=r"no checkpoint in .*; give the workdir of a run"):
        cli.evaluate_model(checkpoint=str(tmp_path), tasks=["copying"])
    with pytest.raises(ConfigError, match=r"checkpoint directory '.*missing' does not exist"):
        cli.evaluate_model(checkpoint=str(tmp_path / "missing"), tasks=["copying"])
    with pytest.raises(ConfigError, match="exactly one of --checkpoint"):
        cli.evaluate_model(tasks=["copying"])


def test_command_line_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--checkpoint={tmp_path}",
                             "--tasks=additon_2digit", "--num_shots=0,1"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: unknown task 'additon_2digit'; did you mean addition_2digit,")


def test_catalog_names_build_and_shots_are_checked():
    assert {"addition_3digit", "addition_3digit_cot", "copying", "unscramble_reversed", "addition"} <= set(
        catalog_names())
    task = catalog_task("addition_3digit_cot", num_test=5, num_train=3)
    assert task.spec.name == "addition_3x3_cot" and len(task.docs("test")) == 5
    assert catalog_task("copying", num_test=2).spec.name == "induction_12_4"
    check_shots("addition_3digit_cot", task, 3)
    with pytest.raises(TaskError, match=r"holds 3 examples usable for every query .*; lower num_shots or raise num_train"):
        check_shots("addition_3digit_cot", task, 4)
    # Shots never pose the query's own problem: with 5 one-digit train problems, some of 200
    # test queries repeat one of them, so only 4 are usable for every query. The check said 5
    # and evaluation then failed on those queries, after the model was loaded.
    small = catalog_task("addition_1digit", num_test=200, num_train=5)
    with pytest.raises(TaskError, match=r"holds 4 examples usable for every query"):
        check_shots("addition_1digit", small, 5)
    check_shots("addition_1digit", small, 4)
    from research.evaluation.fewshot import fewshot_context
    assert all(fewshot_context(small, i, 4) for i in range(200))


def test_hugging_face_folder_with_its_tokenizer(tmp_path):
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models
    pieces = ["<pad>", "</s>"] + list(string.digits + string.ascii_lowercase + "+=:;|. \n")
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()  # one piece per character, joined without spaces
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=32,
                                                                 n_layer=1, n_head=4))
    model.save_pretrained(tmp_path / "gpt")
    with pytest.raises(ConfigError, match="has 101 ids but model 'gpt' embeds only 64"):
        cli.evaluate_model(hf_dir=str(tmp_path / "gpt"), tokenizer="char", tasks=["addition_1digit"])
    with pytest.raises(ConfigError, match="holds no tokenizer files; pass --tokenizer"):
        cli.evaluate_model(hf_dir=str(tmp_path / "gpt"), tasks=["addition_1digit"])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>",
                                         pad_token="<pad>").save_pretrained(tmp_path / "gpt")
    rows = cli.evaluate_model(hf_dir=str(tmp_path / "gpt"), tasks=["copying"], num_shots=[1], num_test=2,
                              output_dir=str(tmp_path / "out"), log=lambda _: None)
    assert rows[0]["task"] == "copying" and rows[0]["num_examples"] == 2 and rows[0]["step"] is None
    assert read_rows(str(tmp_path / "out" / "gpt.json"))[0]["model"] == "gpt"
    # Without --output_dir an HF folder's table is printed only: nothing lands in the current directory.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    lines = []
    os.chdir(cwd)
    try:
        cli.evaluate_model(hf_dir=str(tmp_path / "gpt"), tasks=["copying"], num_test=2, log=lines.append)
    finally:
        os.chdir(ROOT)
    assert list(cwd.iterdir()) == [] and lines[-1].startswith("not written: pass --output_dir=DIR")
    # --hf_dir=. names the results after the folder ("." wrote hidden "..json" files, or failed after
    # every task ran when the output folder did not exist yet).
    os.chdir(tmp_path / "gpt")
    try:
        cli.evaluate_model(hf_dir=".", tasks=["copying"], num_test=2, output_dir=str(tmp_path / "new_out"),
                           log=lambda _: None)
    finally:
        os.chdir(ROOT)
    assert sorted(p.name for p in (tmp_path / "new_out").iterdir()) == ["gpt.csv", "gpt.json"]


def test_table_formats_numbers_and_missing_cells():
    table = format_table([{"task": "a", "x": 0.123456, "ok": True}, {"task": "bb", "x": float("inf")}])
    assert table.splitlines() == ["task       x  ok", "----  ------  ----", "a     0.1235  true",
                                  "bb       inf"]


def test_the_printed_table_shows_every_metric_the_tasks_computed(run_dir, tmp_path):
    """A fixed column list left out word_perplexity, bits_per_byte, is_greedy, ...: with --hf_dir
    and no --output_dir those numbers were shown nowhere."""
    (tmp_path / "text.jsonl").write_text('{"text": "the cat sat on the mat"}\n{"text": "hello world"}\n')
    (tmp_path / "ll.jsonl").write_text('{"text": "one two", "t": "three"}\n')
    (tmp_path / "text.json").write_text(json.dumps(
        {"name": "text", "output_type": "loglikelihood_rolling", "prompt": "{text}", "fewshot_split": None,
         "metrics": ["word_perplexity", "byte_perplexity", "bits_per_byte"], "data_files": {"test": "text.jsonl"}}))
    (tmp_path / "ll.json").write_text(json.dumps(
        {"name": "ll", "output_type": "loglikelihood", "prompt": "{text}", "target": "{t}", "fewshot_split": None,
         "data_files": {"test": "ll.jsonl"}}))
    lines = []
    rows = cli.evaluate_model(checkpoint=run_dir, tasks=[str(tmp_path / "text.json"), str(tmp_path / "ll.json")],
                              output_dir=str(tmp_path / "out"), log=lines.append)
    header, _, text_row, ll_row = next(line for line in lines if line.startswith("task")).splitlines()
    assert header.split() == ["task", "num_shots", "num_examples", "word_perplexity", "byte_perplexity",
                              "bits_per_byte", "target_log_prob", "is_greedy", "brier_score"]
    assert f"{rows[0]['word_perplexity']:.4g}" in text_row and f"{rows[1]['is_greedy']:.4g}" in ll_row
