"""experiments/emergence_plan.py's checks of settings that otherwise failed only in the report,
after every size had trained and been evaluated (the `micro` preset)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments import emergence
from experiments.configs import emergence as configs
from research.models.config import ConfigError

GENERATION = r"\('exact_match', 'token_accuracy', .*\)"


@pytest.mark.parametrize("change, message", [
    # One item: the report's item bootstrap died on "item_scores has shape (2, 1)", naming no field,
    # and a rerun with 2 items was refused (the held-out set feeds the mixture): all training lost.
    (lambda c: c.eval.update(num_test=1), r"^eval.num_test=1 must be >= 2: each curve's item bootstrap needs"),
    (lambda c: c.eval.update(final_num_test=1), r"^eval.final_num_test=1 must be >= 2 when eval.final_tasks is set"),
    # No metric the tasks compute to plot: a ValueError from the plots, and no report.md.
    (lambda c: c.report.update(plot_metrics=()), r"^report.plot_metrics=\(\) names no metric to plot; name at "
                                                 r"least one the study's tasks compute, e.g. \('exact_match',\)\.$"),
    (lambda c: c.report.update(plot_metrics=("acc",)),
     rf"^report.plot_metrics names \['acc'\], which the study's tasks do not compute; name metrics they compute: "
     rf"{GENERATION}"),
    (lambda c: c.report.update(metrics=("exact_match", "acc_norm")), r"^report.metrics names \['acc_norm'\], which"),
])
def test_settings_the_report_cannot_use_fail_before_any_work(change, message, tmp_path, monkeypatch):
    monkeypatch.setattr("research.training.train_and_evaluate", lambda *a: pytest.fail("trained"))
    config = configs.get_config("micro")
    change(config)
    with pytest.raises(ConfigError, match=message) as error:
        emergence.run_study(config, str(tmp_path), log=lambda _: None)
    assert "\n" not in str(error.value) and os.listdir(tmp_path) == []


def test_the_fewest_items_are_two():
    config = configs.get_config("micro")
    config.eval.update(num_test=1, final_num_test=2)
    with pytest.raises(ConfigError, match="eval.num_test=1 must be >= 2"):
        emergence.plan_study(config)
    config.eval.num_test = 2
    plan = emergence.plan_study(config)
    assert {len(e.task.docs(e.task.spec.eval_split)) for e in plan.eval_entries + plan.final_entries} == {2}


def test_a_dry_run_refuses_one_item():
    command = [sys.executable, "-m", "experiments.emergence", "--config=experiments/configs/emergence.py:micro",
               "--dry_run", "--config.eval.final_num_test=1"]
    dry = subprocess.run(command, capture_output=True, text=True)
    assert dry.returncode == 1 and "training FLOPs" not in dry.stdout
    assert dry.stderr.strip().splitlines()[-1].startswith("error: eval.final_num_test=1 must be >= 2 ")


class _ReachedTheTokenizer(Exception):
    pass


@pytest.mark.parametrize("num_test, warned", [(4, False), (40, True)])
def test_prepare_data_says_when_holding_out_the_evaluation_leaves_few_training_problems(num_test, warned, tmp_path,
                                                                                          monkeypatch):
    # micro trains 400 draws of 1-digit addition, a universe of 100 problems: holding out 40 of
    # them for evaluation removes ~40% of the draws, 4 of them ~4% (under the 10% the line allows).
    config = configs.get_config("micro")
    config.eval.num_test = num_test
    plan = emergence.plan_study(config)
    task = plan.train_tasks["addition_1digit"]
    entries = plan.eval_entries + plan.final_entries
    held = {p for entry in entries for p in entry.task.prompts(entry.task.spec.eval_split)}
    kept = sum(p not in held for p in task.prompts("train"))
    assert (kept < 360) == warned

    def stop(*args):
        raise _ReachedTheTokenizer

    monkeypatch.setattr("research.data.build_tokenizer", stop)
    logs = []
    with pytest.raises(_ReachedTheTokenizer):
        emergence.prepare_data(config, plan, str(tmp_path), logs.append)
    lines = [line for line in logs if line.startswith("addition_1digit: ")]
    assert lines == ([f"addition_1digit: {kept} of its 400 training problems are left once the evaluation's problems "
                      "are held out; evaluate fewer items (eval.num_test) or draw more (mixture.tasks) for more."]
                     if warned else [])
