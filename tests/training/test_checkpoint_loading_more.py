"""load_checkpoint on relative paths, with a scan_layers override, and on paths that are not a run."""
from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest

from research.models.config import ConfigError
from research.training.checkpoint_loading import load_checkpoint, restore_params

# One xdist worker runs the module: its module-scoped `runs` (two trainings) ran once on each
# worker that got one of its tests (13 s + 8 s in the suite's profile).
pytestmark = pytest.mark.xdist_group("checkpoint_loading_more")

TOKENS = np.random.default_rng(0).integers(1, 300, (2, 16)).astype(np.int32)


def _train(workdir: str, tokenizer_path: str | None, scan_layers: bool) -> str:
    """A 2-layer GPT trained 2 steps (a checkpoint each step): the tokenizer is trained once and reused."""
    from experiments.configs import pretrain
    from research.training import train_and_evaluate
    config = pretrain.get_config("gpt_tiny")
    config.model.update(num_layers=2, dtype="float32", scan_layers=scan_layers)
    config.data.max_documents = 20
    config.data.tokenizer.update(vocab_size=400, max_training_chars=60_000)
    if tokenizer_path:
        config.data.tokenizer.model_path = tokenizer_path
    config.train.update(num_steps=2, batch_size=8, seq_len=32, log_every_steps=1, eval_every_steps=2,
                        eval_batches=1, progress_bar=False, peak_flops=1e9)
    config.opt.warmup_steps = 1
    config.checkpoint.every_steps = 1
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[bool, str]:
    """{scan_layers: run workdir}, both under one parent folder."""
    parent = tmp_path_factory.mktemp("runs")
    unscanned = _train(str(parent / "unscanned"), None, scan_layers=False)
    (model_path,) = glob.glob(os.path.join(unscanned, "tokenizers", "*.model"))
    return {False: unscanned, True: _train(str(parent / "scanned"), model_path, scan_layers=True)}


def _logits(loaded) -> np.ndarray:
    return np.asarray(loaded.model.apply({"params": loaded.params}, TOKENS))


def test_a_relative_path_loads_like_the_absolute_one(runs, monkeypatch):
    absolute = load_checkpoint(runs[False])
    monkeypatch.chdir(os.path.dirname(runs[False]))
    relative = load_checkpoint("unscanned")  # orbax's metadata() of a relative path is empty
    assert relative.step == absolute.step == 2
    np.testing.assert_array_equal(_logits(relative), _logits(absolute))
    assert sorted(restore_params(os.path.join("unscanned", "checkpoints", "1"))) == sorted(absolute.params)


@pytest.mark.parametrize("saved_scan", [False, True])
def test_a_scan_layers_override_relays_the_params(runs, saved_scan):
    saved = load_checkpoint(runs[saved_scan])
    other = load_checkpoint(runs[saved_scan], scan_layers=not saved_scan)
    assert other.model.config.scan_layers is (not saved_scan)
    assert ("layers" in other.params) is (not saved_scan) and ("layers_1" in other.params) is saved_scan
    np.testing.assert_allclose(_logits(other), _logits(saved), atol=1e-5)


def test_a_step_dir_its_state_or_a_file_is_named_for_what_it_is(runs, tmp_path):
    step_dir = os.path.join(runs[False], "checkpoints", "1")
    for path in (step_dir, os.path.join(step_dir, "state")):
        with pytest.raises(ConfigError, match=r"is step 1 of the checkpoints .*--step=1") as error:
            load_checkpoint(path)
        assert repr(runs[False]) in str(error.value) and "\n" not in str(error.value)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a checkpoint directory"):
        load_checkpoint(str(a_file))
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing"))


def _set_eval_loss(run: str, step: int, loss) -> None:
    path = os.path.join(run, "checkpoints", str(step), "metrics", "metrics")
    with open(path, "w") as f:
        f.write(loss if isinstance(loss, str) else json.dumps({"eval_loss": loss}))


def test_step_best_is_the_kept_step_with_the_lowest_saved_eval_loss(runs, tmp_path):
    from research.training.checkpoint_loading import parse_step
    run = str(tmp_path / "run")
    shutil.copytree(runs[False], run)
    _set_eval_loss(run, 1, 3.25)
    _set_eval_loss(run, 2, 3.5)
    best = load_checkpoint(run, step="best")
    assert best.step == 1 and "step 1" in best.source
    np.testing.assert_array_equal(_logits(best), _logits(load_checkpoint(run, step=1)))
    _set_eval_loss(run, 1, "{trunc")  # an unreadable record ranks no step; a tie goes to the later step
    assert load_checkpoint(run, step="best").step == 2
    _set_eval_loss(run, 1, 3.5)
    assert load_checkpoint(run, step="best").step == 2
    for step in (1, 2):
        _set_eval_loss(run, step, float("nan"))
    with pytest.raises(ConfigError, match=r"was saved with an eval loss .* give a step number \(--step=N\)"):
        load_checkpoint(run, step="best")
    assert [parse_step(text) for text in (None, "best", "7")] == [None, "best", 7]
    with pytest.raises(ConfigError, match=r"--step='last' must be a step number or 'best'"):
        parse_step("last")


def test_a_tokenizer_model_path_that_moved_is_named_as_such(tmp_path):
    """A run trained with data.tokenizer.model_path records the path, not a copy: once the file
    moved, loading said the path was 'neither char, a SentencePiece .model file, nor a folder'."""
    from research.training.checkpoint_loading import run_tokenizer_path
    moved = str(tmp_path / "moved.model")
    with pytest.raises(ConfigError, match=rf"trained with data.tokenizer.model_path='{moved}', which no longer "
                                          r"exists; give that model's new path as the tokenizer"):
        run_tokenizer_path({"data": {"tokenizer": {"model_path": moved}}}, str(tmp_path))
    (tmp_path / "moved.model").write_bytes(b"")
    assert run_tokenizer_path({"data": {"tokenizer": {"model_path": moved}}}, str(tmp_path)) == moved
