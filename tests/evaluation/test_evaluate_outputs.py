"""experiments.evaluate's result files: what they record, where they go, and that two evaluations
never share one. The model is a tiny random one and run_suite is replaced, so nothing compiles."""
from __future__ import annotations

import json
import os

import pytest

from experiments import evaluate as cli
from research.evaluation import suite
from research.evaluation.results_table import read_rows
from research.evaluation.tokenizer import CharTokenizer
from research.models.config import ConfigError
from research.training import checkpoint_loading
from research.training.checkpoint_loading import LoadedModel


def _run_dir(path) -> str:
    """A workdir that checkpoint_root accepts (step 7 with its state/ folder); nothing in it is read."""
    os.makedirs(path / "checkpoints" / "7" / "state")
    return str(path)


def _fake_rows(harness, entries, **kwargs):
    return [{"task": e.name, "num_shots": e.num_fewshot, "num_examples": 2, "exact_match": 0.5} for e in entries]


def test_the_results_record_every_option_that_changes_their_numbers(tmp_path, monkeypatch):
    """Runs with --seed=0 and --seed=1 wrote step_7.json and step_7_v2.json with different numbers
    and the same metadata: nothing said which seed (num_test, num_train, tokenizer, dtype,
    batch_size) produced which."""
    from tests.evaluation.conftest import tiny_model
    model, params = tiny_model("gpt2-tiny", vocab_size=128)
    monkeypatch.setattr(checkpoint_loading, "load_checkpoint", lambda *a, **k: LoadedModel(
        model, params, CharTokenizer(), "checkpoint run step 7", 7))
    monkeypatch.setattr(suite, "run_suite", _fake_rows)
    run = _run_dir(tmp_path / "run")
    for seed in (0, 1):
        cli.evaluate_model(checkpoint=run, tasks=["addition_1digit"], num_test=2, num_train=4, seed=seed,
                           batch_size=3, tokenizer="char", dtype="float32", log=lambda _: None)
    settings = [json.loads((tmp_path / "run" / "evaluations" / f"{name}.json").read_text())["metadata"]["settings"]
                for name in ("step_7", "step_7_v2")]
    assert settings == [{"seed": seed, "num_test": 2, "num_train": 4, "tokenizer": "char", "dtype": "float32",
                         "batch_size": 3} for seed in (0, 1)]


def test_an_unwritable_default_output_dir_is_refused_before_the_checkpoint_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_loading, "load_checkpoint", lambda *a, **k: pytest.fail("loaded"))
    run = _run_dir(tmp_path)
    (tmp_path / "evaluations").write_text("")
    with pytest.raises(ConfigError, match=r"output directory '.*evaluations': .*evaluations is a file, not a "
                                          r"directory; pass another --output_dir\.$"):
        cli.evaluate_model(checkpoint=run, tasks=["addition_1digit"], num_test=2, num_train=4)


def test_evaluations_finishing_together_get_one_name_each(tmp_path, monkeypatch):
    """Both checked that step_7 was free, then wrote it: the later replaced the earlier, though
    earlier results are never to be replaced silently."""
    stem = str(tmp_path / "step_7")
    first, second = cli.reserve_stem(stem), cli.reserve_stem(stem)  # each after its long work
    assert (first, second) == (stem, stem + "_v2")
    cli.write_results([{"seed": 1}], second, True, {})
    cli.write_results([{"seed": 0}], first, True, {})
    assert read_rows(stem + ".json") == [{"seed": 0}] and read_rows(stem + "_v2.json") == [{"seed": 1}]
    (tmp_path / "step_7_v3.csv").write_text("seed\n2\n")  # results whose .json is gone still hold the name
    assert cli.reserve_stem(stem) == stem + "_v4"
    assert not (tmp_path / "step_7_v3.json").exists()
    # A write that fails leaves no empty placeholder holding the next name.
    from research.evaluation import results_table
    monkeypatch.setattr(results_table, "write_rows", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        cli.write_results([{"seed": 5}], stem, False, {})
    assert not (tmp_path / "step_7_v5.json").exists()
    assert cli.reserve_stem(stem) == stem + "_v5"
