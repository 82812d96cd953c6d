"""What a fine-tuning session returns does not depend on how the run got there: a rerun with
nothing left to train, a session stopped at train.stop_after_steps and a resumed session return
what one uninterrupted session returns for the same checkpoint (before_*: the step-0 evaluation;
the last recorded train metrics; the evaluation of the model at that step). A rerun returned the
evaluation alone (no 'loss', no before_*: the finetuning notebook's print failed with KeyError)."""
import copy

import pytest

from research.finetune import finetune_and_evaluate

from tests.finetune.conftest import tiny_config


def _assert_same_report(again, first):
    assert sorted(again) == sorted(first)
    for key, value in first.items():
        if key.startswith("eval_"):  # evaluated again on the restored model: float rounding apart at most
            assert again[key] == pytest.approx(value, rel=1e-5), key
        else:  # read back from metrics.jsonl: the very numbers the first session returned
            assert again[key] == value, key


def test_a_rerun_and_a_resumed_session_return_what_the_uninterrupted_session_returned(tmp_path):
    config = tiny_config("sft_tiny", num_steps=8)
    whole = finetune_and_evaluate(config, str(tmp_path / "whole"))
    assert "loss" in whole and "before_eval_loss" in whole and "eval_loss" in whole
    _assert_same_report(finetune_and_evaluate(copy.deepcopy(config), str(tmp_path / "whole")), whole)

    # Stopped at step 5, off the log and eval grids (every 4): the report of the model at step 5,
    # the same from the stopped session and from its rerun.
    stopped = copy.deepcopy(config)
    stopped.train.update(dict(stop_after_steps=5, log_every_steps=4, eval_every_steps=4))
    first = finetune_and_evaluate(stopped, str(tmp_path / "stopped"))
    assert first["before_eval_loss"] == whole["before_eval_loss"]
    _assert_same_report(finetune_and_evaluate(copy.deepcopy(stopped), str(tmp_path / "stopped")), first)

    # Stopped at an evaluated step off the log grid (6: eval every 2, log every 4): the first session
    # returned step 6's unrecorded losses, its rerun step 4's recorded ones.
    on_eval = copy.deepcopy(config)
    on_eval.train.update(dict(stop_after_steps=6, log_every_steps=4, eval_every_steps=2))
    first = finetune_and_evaluate(on_eval, str(tmp_path / "on_eval"))
    _assert_same_report(finetune_and_evaluate(copy.deepcopy(on_eval), str(tmp_path / "on_eval")), first)

    # Continued to the end: what the uninterrupted session returned (the resume is bit-exact).
    resumed = copy.deepcopy(config)
    resumed.train.update(dict(log_every_steps=4, eval_every_steps=4))
    _assert_same_report(finetune_and_evaluate(resumed, str(tmp_path / "stopped")), whole)


def test_checkpoint_keep_every_steps_is_a_fine_tuning_setting(tmp_path):
    """A stop's extra save counts toward keep_last, so a resumed run kept other checkpoints than a
    straight one (13 and 20 for 10 and 20); checkpoint.keep_every_steps, pretraining's remedy, was
    "not a config key" here. Oracle: the steps left on disk."""
    import os
    config = tiny_config("sft_tiny", num_steps=4)
    config.checkpoint.update(dict(every_steps=2, keep_last=1, keep_best=0, keep_every_steps=2))
    finetune_and_evaluate(config, str(tmp_path))
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2, 4]
