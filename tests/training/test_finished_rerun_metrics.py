"""A rerun with nothing left to train (a finished run, or train.stop_after_steps at or below the
saved step) returns what the run that trained it returned: its last train metrics, as recorded,
and the evaluation of the restored model. It once returned the evaluation alone, and a notebook's
rerun of its Train cell failed with KeyError 'loss'."""
import copy

import pytest

from research.training import train_and_evaluate
from research.training.loop import train_together

from tests.training.conftest import run_config

EVAL_KEYS = ("eval_loss", "eval_perplexity", "eval_accuracy")


def _assert_same_report(rerun, first):
    assert sorted(rerun) == sorted(first)
    for key in first:
        if key in EVAL_KEYS:  # evaluated again on the restored model: float rounding apart at most
            assert rerun[key] == pytest.approx(first[key], rel=1e-5), key
        else:  # read back from metrics.jsonl: the very numbers the first run returned
            assert rerun[key] == first[key], key


@pytest.mark.parametrize("train", [
    dict(stop_after_steps=0), dict(stop_after_steps=4),  # the end; a step evaluated, saved and logged
    # Off the log and eval grids (log every 10, eval every 3): the first session returned step 7's
    # unrecorded losses beside step 6's evaluation, its rerun step 6's recorded ones and step 7's
    # evaluation; at a checkpoint step (8) not evaluated (keep_best=0), step 6's evaluation beside
    # step 8's losses.
    dict(stop_after_steps=7, num_steps=13, log_every_steps=10, eval_every_steps=3),
    dict(stop_after_steps=8, num_steps=13, log_every_steps=10, eval_every_steps=3, keep_best=0),
], ids=["end", "eval step", "off grid", "save step"])
def test_a_rerun_with_nothing_to_train_returns_the_last_train_metrics(train, tokenizers, compilation_cache, tmp_path):
    train = dict(train)
    keep_best = train.pop("keep_best", None)
    config = run_config("gpt_tiny", tokenizers["plain"], **train)
    if keep_best is not None:
        config.checkpoint.keep_best = keep_best
    first = train_and_evaluate(config, str(tmp_path))
    assert "loss" in first and "eval_loss" in first
    _assert_same_report(train_and_evaluate(copy.deepcopy(config), str(tmp_path)), first)


def test_models_trained_together_rerun_with_their_own_last_train_metrics(tokenizers, compilation_cache, tmp_path):
    base = run_config("gpt_tiny", tokenizers["plain"], num_steps=4)
    configs = [copy.deepcopy(base) for _ in range(2)]
    configs[1].train.seed = 1
    configs[1].opt.learning_rate = 3e-3
    workdirs = [str(tmp_path / name) for name in ("a", "b")]
    first = train_together(configs, workdirs)
    rerun = train_together(copy.deepcopy(configs), workdirs)
    assert first[0]["loss"] != first[1]["loss"]  # each model's own records, not model 0's twice
    for again, result in zip(rerun, first):
        _assert_same_report(again, result)
