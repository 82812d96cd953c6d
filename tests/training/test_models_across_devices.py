"""train.models_across_devices: K models split over the devices, each whole on one device,
train as each would alone, resume exactly, and a K the devices cannot split is one line."""
import logging

import jax
import pytest

from research.models.config import ConfigError
from research.training import train_and_evaluate
from research.training.metrics import read_metrics

from tests.training.conftest import run_config
from tests.training.test_model_batch import _close_runs
from tests.training.test_resume import assert_same_run, per_step

# Checkpoints and evaluations every 4 steps (run_config): 6 steps cross the step-4 checkpoint and
# end on an evaluation, as 8 did; a step of 8 models costs ~0.6 s of CPU on 2 cores, and 8 steps
# trained 6 more of them over these tests' runs.
STEPS = 6


def _across(tokenizer, field, values, **train):
    config = run_config("gpt_tiny", tokenizer, num_steps=STEPS, steps_per_call=3, models_across_devices=True, **train)
    config.batched.field, config.batched.values = field, values
    return config


def test_models_across_devices_train_as_alone_and_resume_exactly(tokenizers, compilation_cache, tmp_path):
    devices = jax.device_count()  # 8 fake CPU devices (tests/conftest.py): one model on each
    config = _across(tokenizers["plain"], "train.seed", tuple(range(devices)))  # a data stream per model
    train_and_evaluate(config, str(tmp_path / "whole"))
    config.train.stop_after_steps = 4  # interrupted after its step-4 checkpoint, then rerun
    train_and_evaluate(config, str(tmp_path / "cut"))
    config.train.stop_after_steps = 0
    train_and_evaluate(config, str(tmp_path / "cut"))
    for seed in range(devices):
        assert_same_run(per_step(tmp_path / "cut" / f"train.seed={seed}"),
                        per_step(tmp_path / "whole" / f"train.seed={seed}"), STEPS)
    # Model 5 against the same config trained alone (its batch split over the 8 devices there).
    alone = run_config("gpt_tiny", tokenizers["plain"], num_steps=STEPS, steps_per_call=3, seed=5)
    alone_result = train_and_evaluate(alone, str(tmp_path / "alone"))
    _close_runs(per_step(tmp_path / "whole" / "train.seed=5"), per_step(tmp_path / "alone"), STEPS)
    eval_loss = [r["eval_loss"] for r in read_metrics(tmp_path / "whole" / "train.seed=5") if "eval_loss" in r]
    assert eval_loss[-1] == pytest.approx(alone_result["eval_loss"], rel=1e-6)


def test_models_across_devices_sharing_one_data_stream_train_as_alone(tokenizers, compilation_cache, tmp_path,
                                                                       caplog):
    rates = tuple(1e-3 * (1 + i) for i in range(jax.device_count()))  # one seed: the data is shared
    with caplog.at_level(logging.INFO, logger="research.training.loop"):
        across = _across(tokenizers["plain"], "opt.learning_rate", rates, microbatches=2, batch_size=16)
        train_and_evaluate(across, str(tmp_path / "across"))
    assert "8 model(s) split over the 8 devices" in caplog.text
    alone = run_config("gpt_tiny", tokenizers["plain"], num_steps=STEPS, steps_per_call=3, microbatches=2,
                       batch_size=16)  # alone its 2 microbatches are split over the 8 devices
    alone.opt.learning_rate = rates[2]
    train_and_evaluate(alone, str(tmp_path / "alone"))
    _close_runs(per_step(tmp_path / "across" / f"opt.learning_rate={rates[2]}"), per_step(tmp_path / "alone"),
                STEPS)


def test_models_the_devices_cannot_split_are_one_line_before_compiling(tokenizers, tmp_path):
    config = _across(tokenizers["plain"], "opt.learning_rate", (1e-3, 2e-3, 3e-3))
    with pytest.raises(ConfigError, match=r"3 models cannot be split evenly over 8 devices") as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=8, microbatches=3), r"batch_size=8 is not divisible by train.microbatches=3"),
    # Each model's checkpoint is laid out as it would be alone: here d_model 36 over 8 FSDP devices.
    (dict(mesh=(1, -1, 1), d_model=36), r"d_model"),
])
def test_a_batch_or_model_the_mesh_cannot_take_is_one_line_before_compiling(tokenizers, tmp_path, change, message):
    change = dict(change)
    mesh, d_model = change.pop("mesh", None), change.pop("d_model", None)
    config = _across(tokenizers["plain"], "opt.learning_rate", tuple(1e-3 * (1 + i) for i in range(8)), **change)
    if mesh:
        config.mesh.shape = mesh
    if d_model:
        config.model.d_model = d_model
    with pytest.raises(ConfigError, match=message) as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_models_across_devices_without_a_batched_axis_is_one_warning_line(tokenizers, tmp_path, monkeypatch, caplog):
    """It was ignored without a word (one model trains as usual, so not refused: a scaling sweep
    trains a seed group of one alone with its group's config). The sweep's runs trained alone
    do not warn: the warning, for every such run (18 of cpu_tiny's 30), advised batched.field
    and batched.values, which are no sweep setting."""
    from experiments.scaling_laws.sweep_train import train_alone
    from research.training import loop
    trained = []
    monkeypatch.setattr(loop, "_train", lambda configs, workdirs, stacked: trained.append(
        (stacked, [c.train.models_across_devices for c in configs])) or [{}])
    config = run_config("gpt_tiny", tokenizers["plain"], models_across_devices=True)
    with caplog.at_level(logging.WARNING, logger="research.training.model_batch"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert trained == [(False, [True])]
    assert [r.getMessage() for r in caplog.records] == [
        "train.models_across_devices=True is ignored: config.batched names no field, so one model trains, its batch "
        "split over the devices as usual; to train several models split over the devices set batched.field and "
        "batched.values, else drop train.models_across_devices."]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="research.training.model_batch"):
        train_alone(config, str(tmp_path / "sweep_run"))
    assert not caplog.records and trained[-1] == (False, [False])
    assert config.train.models_across_devices  # the sweep's config is left as it was
    config.train.models_across_devices = False
    train_and_evaluate(config, str(tmp_path / "run"))
    assert not caplog.records
