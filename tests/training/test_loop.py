"""The loop's contracts: metrics, bad input before compiling, NaN stop, checkpoint policies."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from research.data.config import DataError
from research.models import build_model, get_config
from research.sharding import DEFAULT_RULES
from research.training import TrainingDivergedError, loop, partitioning, train_and_evaluate
from research.training.checkpointing import CheckpointConfig, Checkpointer
from research.training.losses import get_objective
from research.training.metrics import TENSORBOARD_DIR, read_metrics
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import abstract_batch, create_train_state, train_state_shardings, with_shardings

from tests.training.conftest import TINY_GPT, run_config, synthetic_batch


def test_metrics_log_and_checkpoint_contents(tokenizers, tmp_path):
    """Also test_checkpoint_steps_are_evaluated_only_when_keep_best_ranks_them's keep_best 1 case
    (one run for both: a call of train_and_evaluate costs ~2-3 s, its steps little): checkpoints
    every 2 steps, evaluation every 100, and every checkpoint step is evaluated, since the
    ranking needs it."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=6, eval_every_steps=100)
    config.checkpoint.update(dict(every_steps=2, keep_best=1, keep_last=3))
    final = train_and_evaluate(config, str(tmp_path))
    records = read_metrics(tmp_path)
    init = records[0]
    assert init["step"] == 0 and init["params_total"] == init["params_embedding"] + init["params_non_embedding"]
    assert init["params_total"] == sum(x.size for x in jax.tree.leaves(_tiny_params()))
    assert init["train_flops_per_token"] > 6 * init["params_non_embedding"]
    steps = records[1:]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:
        assert {"loss", "grad_norm", "learning_rate", "accuracy"} <= set(r)
        assert np.isfinite(r["loss"]) and r["grad_norm"] > 0
    for r in steps[1:]:  # step 1 includes compilation and is not timed
        assert r["tokens_per_second"] > 0 and 0 < r["mfu"]
    evals = [r for r in steps if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert evals[-1]["eval_perplexity"] == pytest.approx(np.exp(evals[-1]["eval_loss"]))
    assert final["eval_loss"] == evals[-1]["eval_loss"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / TENSORBOARD_DIR))
    checkpoints = Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig())
    assert checkpoints.latest_step() == 6
    assert set(os.listdir(tmp_path / "checkpoints" / "6")) >= {"state", "data", "config"}
    assert checkpoints.restore_config()["model"]["preset"] == "gpt2-tiny"
    assert sorted(Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(every_steps=2, keep_last=3,
                                                                               keep_best=1)).all_steps()) == [2, 4, 6]


def _tiny_params():
    from research.training.losses import init_params
    from flax.core import meta
    model_config = get_config("gpt2-tiny", num_layers=1)
    batch = synthetic_batch("decoder", 1, 8, 512)
    return meta.unbox(jax.eval_shape(lambda: init_params(build_model(model_config), get_objective(
        "causal_lm", "decoder"), batch, jax.random.PRNGKey(0))))


def test_checkpoint_steps_are_evaluated_only_when_keep_best_ranks_them(tokenizers, tmp_path):
    """Checkpoints every 2 steps, evaluation every 100: with keep_best 0 only the last step is
    evaluated (the scaling sweep scored every checkpoint on 800 batches for nothing); with
    keep_best 1 every checkpoint step is, since the ranking needs it (that run is
    test_metrics_log_and_checkpoint_contents's)."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=6, eval_every_steps=100)
    config.checkpoint.update(dict(every_steps=2, keep_best=0, keep_last=3))
    train_and_evaluate(config, str(tmp_path))
    evaluated = [r["step"] for r in read_metrics(tmp_path) if "eval_loss" in r]
    assert evaluated == [6]
    assert sorted(Checkpointer(str(tmp_path / "checkpoints"), CheckpointConfig(every_steps=2, keep_last=3,
                                                                               keep_best=0)).all_steps()) == [2, 4, 6]


@pytest.mark.parametrize("change, message", [
    (dict(shape=(3, 1, 1)), r"mesh.shape: mesh shape \(3, 1, 1\) holds 3 devices but 8 are available"),
    (dict(dcn_shape=(2, 1, 1)), r"mesh.dcn_shape: dcn_shape \(2, 1, 1\) spans 2 processes but the 8 devices are in 1"),
    (dict(batch_size=12), "microbatch size 12 .* not divisible by the 8 data-parallel devices"),
    (dict(seq_len=256), "seq_len=256 is longer than the model's max_len=128"),
    (dict(objective="masked_lm"), "objective='masked_lm' trains encoder models, not decoder"),
    # bf16 master weights: updates below bf16's resolution were lost, and the blocked loop died on
    # Adam moments whose dtype changed after the first step (a 45-line traceback).
    (dict(param_dtype="bfloat16"), r"^model.param_dtype=bfloat16: training keeps float32 master weights; set "
                                   r"model.param_dtype=float32, with model.dtype=bfloat16 for bfloat16 compute"),
])
def test_bad_input_fails_before_compiling(change, message, tokenizers, tmp_path, monkeypatch):
    def compiled(*args, **kwargs):
        raise AssertionError("reached compilation")
    monkeypatch.setattr(loop, "create_train_state", compiled)
    monkeypatch.setattr(loop, "train_state_shardings", compiled)
    config = run_config("gpt_tiny", tokenizers["plain"])
    if "shape" in change or "dcn_shape" in change:
        config.mesh.update(change)
    elif "objective" in change:
        config.objective = change["objective"]
    elif "param_dtype" in change:
        config.model.update(change)
    else:
        config.train.update(change)
    with pytest.raises(ValueError, match=message) as error:
        train_and_evaluate(config, str(tmp_path))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("preset, options, seq_len, message", [
    ("bert_tiny", {"mask_rate": 1.5}, 32, r"^masked_lm: mask_rate=1.5 must be in \(0, 1\)"),
    ("t5_tiny", {"noise_density": 0.6, "mean_span_length": 1.0}, 64,
     r"^span_corruption: at seq_len=64, noise_density=0.6 with mean_span_length=1.0 makes 38 noise spans"),
    ("gpt_tiny", {}, 1, r"^causal_lm: seq_len=1 must be at least 2\.$"),
])
def test_objective_settings_are_refused_before_a_tokenizer_is_trained(preset, options, seq_len, message,
                                                                       tmp_path, monkeypatch):
    """Settings the config alone makes impossible were refused by make_batch_dataset, after the
    claim and a full tokenizer training, which the refusal then removed with the workdir."""
    from research.data import tokenizer as tokenizer_lib
    monkeypatch.setattr(tokenizer_lib, "train_tokenizer", lambda *a, **k: pytest.fail("trained a tokenizer"))
    config = run_config(preset, None, seq_len=seq_len)
    config.objective_options.update(options)
    with pytest.raises(DataError, match=message) as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tokenizers, tmp_path):
    """Params jump to ~1e30 at step 1's update (finite), and step 2's logits overflow. The state
    after step 1 was saved and named "Last good checkpoint: step 1", though its loss is NaN: a
    rerun from it, at any learning rate, diverged again at once. Evaluated before its save (keep-best
    ranks by eval loss), it is stopped there; saved unevaluated, the divergence at step 2 names it."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=6)
    config.opt.update(dict(learning_rate=1e30, schedule="constant", warmup_steps=0))
    config.checkpoint.every_steps = 1
    with pytest.raises(TrainingDivergedError, match=r"step 1: eval_loss=nan .* stopped without saving\. No good "
                                                    r"checkpoint"):
        train_and_evaluate(config, str(tmp_path / "evaluated"))
    assert Checkpointer(str(tmp_path / "evaluated" / "checkpoints"), CheckpointConfig()).all_steps() == []
    config.checkpoint.keep_best = 0  # saved without an evaluation
    config.train.eval_every_steps = 6
    checkpoints = tmp_path / "saved" / "checkpoints"
    with pytest.raises(TrainingDivergedError) as error:
        train_and_evaluate(config, str(tmp_path / "saved"))
    assert str(error.value).startswith("step 2: loss=nan ")
    assert str(error.value).endswith(f"The checkpoint of step 1 holds the state that gave it: delete {checkpoints / '1'} "
                                     "before rerunning. No good checkpoint; lower opt.learning_rate or raise warmup and "
                                     "rerun.")


def test_parameters_that_are_not_finite_stop_their_model_before_a_save(tmp_path):
    """Checked where a step is evaluated or saved: one flag per model of the stacked state."""
    import types
    import jax.numpy as jnp
    from research.training import members as members_lib
    from research.training.programs import all_finite
    params = {"w": jnp.array([[1.0, 2.0], [jnp.inf, 0.0], [3.0, 4.0]]), "b": jnp.array([0.0, 1.0, jnp.nan])}
    assert all_finite(params, stacked=True).tolist() == [True, False, False]
    assert all_finite({"w": jnp.ones(3)}, stacked=False).tolist() == [True]
    checkpointer = types.SimpleNamespace(all_steps=lambda: [2], wait=lambda: None, directory=str(tmp_path))
    models = [types.SimpleNamespace(index=i, workdir=str(tmp_path / str(i)), error=None, console=i == 0,
                                    checkpointer=checkpointer) for i in range(3)]
    for m in models:
        os.makedirs(m.workdir)
    members_lib.stop_if_not_finite(models, 4, all_finite(params, stacked=True), [{}, {}, {"eval_loss": 1.0}],
                                   stacked=True)
    assert models[0].error is None and models[2].diverged_at == 4
    assert str(models[1].error) == (f"model 1 ({models[1].workdir}): step 4: its parameters after the update are not "
                                    f"finite; stopped without saving. Last good checkpoint: step 2 in {tmp_path}; lower "
                                    "opt.learning_rate or raise warmup and rerun.")


def _tiny_model():
    model = build_model(get_config("gpt2-tiny", **TINY_GPT))
    optimizer, _ = make_optimizer(OptimizerConfig(total_steps=10))
    batch = abstract_batch(synthetic_batch("decoder", 8, 16, 128))
    return model, get_objective("causal_lm", "decoder"), optimizer, batch


def _tiny_state(mesh):
    model, objective, optimizer, batch = _tiny_model()
    return create_train_state(model, objective, optimizer, batch, mesh, DEFAULT_RULES, seed=3)[0]


def _tiny_layout(mesh):
    """The abstract state and its shardings on `mesh`: what a restore onto it needs (no state is
    built there: its values come from the checkpoint)."""
    model, objective, optimizer, batch = _tiny_model()
    return train_state_shardings(model, objective, optimizer, batch, mesh, DEFAULT_RULES)


def _data_iterator():
    import grain
    return iter(grain.MapDataset.range(100).to_iter_dataset())


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 1, 4)])
def test_restore_onto_a_different_mesh(shape, tmp_path):
    state = _tiny_state(partitioning.make_training_mesh((8, 1, 1)))
    data = _data_iterator()
    next(data), next(data)
    checkpoints = Checkpointer(str(tmp_path), CheckpointConfig())
    checkpoints.save(1, state, data, {"note": "test"}, {"eval_loss": 1.0})
    checkpoints.wait()
    abstract, shardings = _tiny_layout(partitioning.make_training_mesh(shape))
    restored, data = checkpoints.restore(with_shardings(abstract, shardings), _data_iterator())
    assert next(data) == 2  # the data position came back too
    for got, want, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(shardings)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        assert got.sharding == sharding
    checkpoints.close()


def test_keeps_last_k_and_best_by_eval_loss(tmp_path):
    state = {"w": np.zeros(3, np.float32)}
    checkpoints = Checkpointer(str(tmp_path), CheckpointConfig(keep_last=2, keep_best=1))
    for step, eval_loss in zip(range(1, 6), [5.0, 1.0, 4.0, 3.0, 2.0]):
        checkpoints.save(step, state, _data_iterator(), {}, {"eval_loss": eval_loss})
        checkpoints.wait()
    assert checkpoints.all_steps() == [2, 4, 5]  # best (step 2) + the last two
    checkpoints.close()


def test_a_resumed_run_ranks_the_steps_an_earlier_process_saved(tmp_path):
    """The same saves split over two processes (a run stopped after step 3, then rerun) keep
    the same steps: the earlier process's steps are reloaded with their eval losses."""
    state = {"w": np.zeros(3, np.float32)}
    for steps in ((1, 2, 3), (4, 5)):
        checkpoints = Checkpointer(str(tmp_path), CheckpointConfig(keep_last=2, keep_best=1))
        for step in steps:
            checkpoints.save(step, state, _data_iterator(), {}, {"eval_loss": [5.0, 1.0, 4.0, 3.0, 2.0][step - 1]})
            checkpoints.wait()
        checkpoints.close()
    assert Checkpointer(str(tmp_path), CheckpointConfig(keep_last=2, keep_best=1)).all_steps() == [2, 4, 5]


KILL_DURING_SAVE = """
import os, signal, sys
import numpy as np, grain
from research.training.checkpointing import CheckpointConfig, Checkpointer
checkpoints = Checkpointer(sys.argv[1], CheckpointConfig(keep_last=5))
data = iter(grain.MapDataset.range(10).to_iter_dataset())
checkpoints.save(1, {"w": np.full(8, 1.0, np.float32)}, data, {"step": 1})
checkpoints.wait()
big = {f"w{i}": np.full((1024, 1024), 2.0, np.float32) for i in range(32)}  # 128 MB: slow to write
checkpoints.save(2, big, data, {"step": 2})
os.kill(os.getpid(), signal.SIGKILL)  # while step 2 is still being written in the background
"""


def test_kill_during_async_save_leaves_previous_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path)], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert "2.orbax-checkpoint-tmp" in os.listdir(tmp_path)  # killed mid-save: step 2 never committed
    checkpoints = Checkpointer(str(tmp_path), CheckpointConfig())
    assert checkpoints.latest_step() == 1
    restored, _ = checkpoints.restore({"w": jax.ShapeDtypeStruct((8,), np.float32)},
                                      iter(__import__("grain").MapDataset.range(10).to_iter_dataset()))
    np.testing.assert_array_equal(restored["w"], 1.0)
    assert json.loads(json.dumps(checkpoints.restore_config())) == {"step": 1}
    checkpoints.close()
