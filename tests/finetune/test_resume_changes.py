"""A fine-tuning run resumed with another schedule or optimizer number says so in one line, as
pretraining's resume does (research/training/resume_changes.py)."""
import logging

from research.finetune.run import finetune_and_evaluate
from tests.finetune.conftest import tiny_config


def _resume_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "research.finetune.trainer" and r.getMessage().startswith("resuming at step")]


def test_a_resume_with_a_changed_schedule_or_optimizer_number_is_one_warning_line(tmp_path, caplog):
    """Allowed (num_steps and the optimizer's numbers are free on resume) but never silent: the
    fine-tuning resume said nothing, and the rest of the run followed the new schedule unannounced."""
    caplog.set_level(logging.WARNING)
    workdir = str(tmp_path / "run")
    config = tiny_config("sft_lora_tiny", num_steps=4, stop_after_steps=2)
    finetune_and_evaluate(config, workdir)

    config.train.stop_after_steps = 3  # the same run, continued: nothing to say
    caplog.clear()
    finetune_and_evaluate(config, workdir)
    assert _resume_lines(caplog) == []

    config.train.stop_after_steps = 0
    config.train.num_steps, config.opt.learning_rate = 6, config.opt.learning_rate / 2
    config.opt.weight_decay = 0.05
    old_dropout = config.lora.dropout
    config.lora.dropout = old_dropout + 0.25  # resumed without a word (seen: loss 5.5569 -> 5.5819)
    caplog.clear()
    finetune_and_evaluate(config, workdir)
    schedule, numbers = _resume_lines(caplog)
    assert schedule.startswith("resuming at step 3 with a changed learning-rate schedule (train.num_steps 4 -> 6, "
                               "opt.learning_rate ")
    assert "learning rate of step 4, the next, was" in schedule and "\n" not in schedule
    assert numbers.startswith("resuming at step 3 with opt.weight_decay ") and "-> 0.05" in numbers
    assert f"lora.dropout {old_dropout!r} -> {config.lora.dropout!r}" in numbers
    assert "train with another dropout" in numbers
