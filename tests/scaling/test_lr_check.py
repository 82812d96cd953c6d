"""The learning-rate check trains every multiplier of a size together and names the best."""
import json

import pytest

from experiments.configs import scaling_laws
from experiments.scaling_laws import lr_check
from research.scaling.sweep_plan import SweepError


def test_multipliers_of_one_size_train_together_and_the_best_is_named(tmp_path):
    config = scaling_laws.get_config("test_tiny")
    config.sweep.update(dict(lr_reference_width=16, lr_scale_cap=1.5))
    rows = lr_check.check(config, str(tmp_path), [2e3], steps=6, multipliers=[0.01, 1.0, 1e6])
    (row,) = rows
    rule = config.opt.learning_rate * min(16 / row["d_model"], 1.5)
    assert row["learning_rates"] == pytest.approx([0.01 * rule, rule, 1e6 * rule])
    assert row["best_multiplier"] == 1.0  # 6 steps at a hundredth of the rate barely move
    assert row["eval_loss"][1] < row["eval_loss"][0] and row["eval_loss"][2] != row["eval_loss"][2]  # x1e6: NaN
    assert json.loads((tmp_path / "lr_check.json").read_text()) == json.loads(json.dumps(rows).replace("NaN", "null"))
    # The same command again (a preempted check rerun): the diverged multiplier stays out; the rerun
    # was refused in a traceback as a model left behind the others.
    again = lr_check.check(config, str(tmp_path), [2e3], steps=6, multipliers=[0.01, 1.0, 1e6])
    assert again[0]["eval_loss"][:2] == row["eval_loss"][:2] and again[0]["best_multiplier"] == 1.0
    assert again[0]["eval_loss"][2] != again[0]["eval_loss"][2]


def test_bad_multipliers_are_one_line(tmp_path):
    with pytest.raises(SweepError, match=r"--multipliers=\[0.0\] positive"):
        lr_check.check(scaling_laws.get_config("test_tiny"), str(tmp_path), [2e3], steps=6, multipliers=[0.0])
