"""K models in one program train exactly as each would alone; a diverging one is named and
the others go on; configs that cannot share a program are refused in one line (stopping and
resuming together: test_model_batch_resume.py)."""
import copy
import re

import ml_collections
import numpy as np
import pytest

from research.models.config import ConfigError
from research.training import TrainingDivergedError, model_batch, train_and_evaluate
from research.training.checkpointing import CheckpointError
from research.training.loop import train_together
from research.training import metrics as metrics_lib
from research.training.metrics import read_metrics

from tests.training.conftest import run_config
from tests.training.test_resume import PER_STEP, per_step


# Losses agree to float32 rounding (1e-6 relative); the gradient norm sums the squares of every
# parameter's gradient, whose rounding differs with how the batch is split over devices: 1.8e-6
# apart at step 2 of one data stream (seed 5 of test_models_across_devices), so 1e-5 for it.
_RTOL = {"grad_norm": 1e-5}


def _close_runs(batched, alone, num_steps):
    assert sorted(batched) == sorted(alone) == list(range(1, num_steps + 1))
    for step in alone:
        for key in PER_STEP:
            np.testing.assert_allclose(batched[step][key], alone[step][key], rtol=_RTOL.get(key, 1e-6),
                                       err_msg=f"{step} {key}")


def _member(config, **changes):
    one = copy.deepcopy(config)
    for dotted, value in changes.items():
        section, field = dotted.split(".")
        one[section][field] = value
    return one


def test_models_trained_together_equal_models_trained_alone(tokenizers, compilation_cache, tmp_path):
    steps = 6
    base = run_config("gpt_tiny", tokenizers["plain"], num_steps=steps, steps_per_call=4)
    base.model.dropout_rate = 0.1
    # Different seeds (so different data order, init and dropout) and learning rates, one program.
    configs = [_member(base, **{"train.seed": 0, "opt.learning_rate": 1e-3}),
               _member(base, **{"train.seed": 1, "opt.learning_rate": 3e-3, "opt.weight_decay": 0.0})]
    workdirs = [str(tmp_path / "together" / name) for name in ("a", "b")]
    results = train_together(configs, workdirs)
    for config, workdir, result, name in zip(configs, workdirs, results, ("a", "b")):
        alone = train_and_evaluate(config, str(tmp_path / "alone" / name))
        _close_runs(per_step(workdir), per_step(tmp_path / "alone" / name), steps)
        assert result["eval_loss"] == pytest.approx(alone["eval_loss"], rel=1e-6)
        assert sorted(d for d in (tmp_path / "together" / name / "checkpoints").iterdir() if d.name.isdigit()) \
            and read_metrics(workdir)[0]["params_total"] > 0
    # The batched axis of a config: same seed, so one data stream shared by both models.
    base.batched.field, base.batched.values = "opt.learning_rate", (1e-3, 2e-3)
    train_and_evaluate(base, str(tmp_path / "axis"))
    _close_runs(per_step(tmp_path / "axis" / "opt.learning_rate=0.001"), per_step(tmp_path / "alone" / "a"), steps)
    lr = [r["learning_rate"] for r in read_metrics(tmp_path / "axis" / "opt.learning_rate=0.002") if "loss" in r]
    assert max(lr) == pytest.approx(2e-3)
    # Each member logs its own tokens/s but the program's MFU: both models' FLOPs ran in that time.
    records = read_metrics(tmp_path / "axis" / "opt.learning_rate=0.002")
    flops, peak = records[0]["train_flops_per_token"], records[0]["peak_flops"]
    timed = [r for r in records if "mfu" in r]
    assert timed and all(r["mfu"] == pytest.approx(2 * r["tokens_per_second"] * flops / peak) for r in timed)


def test_a_diverging_model_is_named_the_others_finish_and_the_console_shows_one_still_training(
        tokenizers, tmp_path, monkeypatch, caplog):
    """Model 0 (the console's) diverges: it is named, the others finish, the console goes on with
    model 1. One run for both checks (they were two tests, each training 3 models): a diverging
    model other than the first is named, and its records end before its bad step, in
    test_a_model_that_diverged_before_its_first_save_is_refused_on_rerun."""
    base = run_config("gpt_tiny", tokenizers["plain"], num_steps=6, steps_per_call=3)
    base.opt.warmup_steps = 0
    configs = [_member(base, **{"opt.learning_rate": 1e35}), _member(base, **{"opt.learning_rate": 1e-3}),
               _member(base, **{"opt.learning_rate": 2e-3})]
    workdirs = [str(tmp_path / str(i)) for i in range(3)]
    shown = []  # (step, loss) of every console line
    with monkeypatch.context() as patch:
        patch.setattr(metrics_lib.ConsoleProgress, "report",
                      lambda self, step, record, keep=False: shown.append((step, record["loss"])))
        results = train_together(configs, workdirs)
    assert isinstance(results[0], TrainingDivergedError)
    assert str(results[0]).startswith(f"model 0 ({workdirs[0]}): step ") and "not finite" in str(results[0])
    bad_step = int(str(results[0]).split("step ")[1].split(":")[0])
    assert bad_step < 6
    assert [r["step"] for r in read_metrics(workdirs[0]) if "loss" in r] == list(range(1, bad_step))
    assert not (tmp_path / "0" / "checkpoints" / "6").exists()
    for i in (1, 2):
        assert np.isfinite(results[i]["eval_loss"]) and (tmp_path / str(i) / "checkpoints" / "6").exists()
        assert [r["step"] for r in read_metrics(workdirs[i]) if "loss" in r] == list(range(1, 7))
    losses = {i: {r["step"]: r["loss"] for r in read_metrics(workdirs[i]) if "loss" in r} for i in (0, 1)}
    # Before: model 0's lines; from its divergence to the end: model 1's (it was silent after bad_step).
    assert [s for s, _ in shown if s < bad_step] == sorted(losses[0]) and all(
        loss == losses[0][s] for s, loss in shown if s < bad_step)
    after = [(s, loss) for s, loss in shown if s >= bad_step]
    assert [s for s, _ in after] == [s for s in sorted(losses[1]) if s >= bad_step] and 6 in dict(after)
    assert all(loss == losses[1][s] for s, loss in after)
    assert f"the console now shows model 1 ({workdirs[1]})" in caplog.text
    # Rerun: model 0 saved nothing, so the three cannot resume from a common step. One line, and
    # the finished models' checkpoints and records are untouched (they once all restarted from 0).
    before = {i: (sorted(p.name for p in (tmp_path / str(i) / "checkpoints").iterdir()), read_metrics(workdirs[i]))
              for i in (1, 2)}
    with pytest.raises(CheckpointError, match=r"model\(s\) 0 \(.*, no checkpoint\) are behind the others \(saved up "
                                              r"to step 6\)") as error:
        train_together(configs, workdirs)
    assert "\n" not in str(error.value)
    assert before == {i: (sorted(p.name for p in (tmp_path / str(i) / "checkpoints").iterdir()),
                          read_metrics(workdirs[i])) for i in (1, 2)}


@pytest.mark.parametrize("change, message", [
    (dict(field="model.d_model2", values=(1, 2)), r"batched.field='model.d_model2' names no config field"),
    (dict(field="model.d_model", values=(16, 32)), r"batched.field='model.d_model' changes the program"),
    (dict(field="opt.learning_rate", values=()), r"batched.values is empty"),
    (dict(field="train.seed", values=(1, 1.5)), r"batched.values holds 1.5, but train.seed is a whole number"),
    (dict(field="opt.learning_rate", values=(1e-3, "fast")), r"holds 'fast' \(str\): every value of opt.learning_rate"),
    (dict(field="train.seed", values=(1, 1.0)), r"repeats a value"),
    # Different as written, the same model as trained: a seed study's duplicate 'replicates'.
    (dict(field="train.seed", values=(0, 2**32)), r"gives train.seed=0 and 4294967296, which train the same model "
                                                  r"\(seeds are read mod 2\*\*32\); drop one of them"),
    (dict(field="train.seed", values=(7, 7 - 2**32)), r"train.seed=7 and -4294967289, which train the same model"),
    (dict(field="opt.learning_rate", values=(1e-3, 1e-3 + 1e-12)), r"which train the same model \(equal in float32\)"),
    (dict(field="", values=(1e-3, 2e-3)), r"batched.values=\(0.001, 0.002\) is set but batched.field is empty"),
])
def test_bad_batched_axis_is_one_line_before_compiling(change, message, tokenizers, tmp_path):
    config = run_config("gpt_tiny", tokenizers["plain"])
    config.batched.update(change)
    with pytest.raises(ConfigError, match=message) as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind, field, values, refused", [
    ({"opt.schedule": "cosine"}, "opt.decay_fraction", (0.1, 0.3), "opt.schedule='cosine'"),
    ({"opt.schedule": "constant"}, "opt.min_lr_ratio", (0.0, 0.1), "opt.schedule='constant'"),
    ({"opt.name": "adafactor"}, "opt.b1", (0.8, 0.9), "opt.name='adafactor'"),
    ({"opt.name": "lion"}, "opt.eps", (1e-8, 1e-6), "opt.name='lion'"),
    ({"opt.schedule": "wsd"}, "opt.decay_fraction", (0.1, 0.3), None),  # read: trained
    ({"opt.name": "lion"}, "opt.b1", (0.8, 0.9), None),
])
def test_a_batched_field_the_optimizer_ignores_is_refused_before_compiling(kind, field, values, refused, tmp_path):
    """K models differing only in a number their schedule / optimizer never reads once trained
    as K identical models under K names."""
    config = _member(run_config("gpt_tiny", "unused.model"), **kind)
    config.batched.field, config.batched.values = field, values
    configs, workdirs = model_batch.expand_batched_axis(config, str(tmp_path))
    if refused is None:
        model_batch.check_trainable_together(configs, workdirs)
        return
    with pytest.raises(ConfigError, match=rf"^the models differ in {field}, which {refused} "
                                          r"does not use: they would train identically; .*set opt\.") as error:
        train_and_evaluate(config, str(tmp_path))
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())


def test_an_opt_section_that_leaves_defaults_out_is_read_with_the_defaults(tmp_path):
    # A caller of train_together may pass opt without every field (it raised KeyError once).
    config = _member(run_config("gpt_tiny", "unused.model"), **{"opt.schedule": "cosine"})
    config.batched.field, config.batched.values = "opt.learning_rate", (1e-3, 2e-3)
    configs, workdirs = model_batch.expand_batched_axis(config, str(tmp_path))
    for c in configs:
        c.opt = ml_collections.ConfigDict({k: v for k, v in c.opt.items() if k not in ("decay_fraction", "eps")})
    model_batch.check_trainable_together(configs, workdirs)
    configs[1].opt.decay_fraction = 0.5  # differs from the default the other one gets: still refused
    with pytest.raises(ConfigError, match=r"the models differ in opt.decay_fraction, which opt.schedule='cosine'"):
        model_batch.check_trainable_together(configs, workdirs)


def test_models_of_different_shapes_are_refused_in_one_line(tokenizers, tmp_path):
    config = run_config("gpt_tiny", tokenizers["plain"])
    wider = _member(config, **{"model.d_model": 64})
    with pytest.raises(ConfigError, match=r"models 0 and 1 differ in model.d_model \(None vs 64\)") as error:
        train_together([config, wider], [str(tmp_path / "a"), str(tmp_path / "b")])
    assert "\n" not in str(error.value) and not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="share a workdir"):
        train_together([config, config], [str(tmp_path / "a")] * 2)


def test_two_spellings_of_one_workdir_are_one_workdir(tmp_path):
    """'a/./b' and 'b/' passed as two workdirs: both models wrote one run.json, metrics.jsonl and checkpoints."""
    configs = [run_config("gpt_tiny", "unused.model"), _member(run_config("gpt_tiny", "unused.model"),
                                                                **{"train.seed": 1})]
    (tmp_path / "a").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    a = str(tmp_path / "a")
    for other in (a + "/", f"{tmp_path}/./a", str(tmp_path / "link")):
        with pytest.raises(ConfigError, match=re.escape(f"models 0 and 1 share a workdir ('{a}' and '{other}' are one "
                                                        "directory); give each model its own.")) as error:
            model_batch.check_trainable_together(configs, [a, other])
        assert "\n" not in str(error.value)
    model_batch.check_trainable_together(configs, [a, str(tmp_path / "b")])
    with pytest.raises(ConfigError, match="share a workdir"):  # cloud paths: compared as written, less a final '/'
        model_batch.check_trainable_together(configs, ["gs://bucket/a", "gs://bucket/a/"])


@pytest.mark.parametrize("models_per_call", [1, 2, 3])
def test_models_in_groups_compute_what_the_whole_vmap_computes(models_per_call):
    import jax
    import jax.numpy as jnp

    def step(state, batch, lr):  # a state per model, one shared batch, a number per model
        new = jax.tree.map(lambda p: p - lr * jnp.tanh(p @ batch).sum(), state)
        return new, {"norm": jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(new)))}

    keys = jax.random.split(jax.random.key(0), 3)
    state = {"w": jax.random.normal(keys[0], (5, 4, 4)), "b": jax.random.normal(keys[1], (5, 4, 4))}
    batch, lrs = jax.random.normal(keys[2], (4, 4)), jnp.linspace(0.1, 0.5, 5)
    want = jax.jit(jax.vmap(step, in_axes=(0, None, 0)))(state, batch, lrs)
    got = jax.jit(model_batch.map_over_models(step, (0, None, 0), models_per_call))(state, batch, lrs)
    # Equal to float32 rounding: a batched matmul may sum in another order than one per model.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)


@pytest.mark.parametrize("models_per_call, per_model_data", [(1, True), (2, False), (0, True)])
def test_models_outside_the_steps_compute_the_scan_of_the_vmapped_step(models_per_call, per_model_data):
    """A block with the models as the outer loop (each model's state sliced once per block)
    equals the block of the vmapped step, steps skipped past num_steps included."""
    import jax
    import jax.numpy as jnp
    from research.training import blocks

    def step(state, batch, lr):
        new = jax.tree.map(lambda p: p - lr * jnp.tanh(p @ batch).sum(), state)
        return new, {"norm": jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(new)))}

    keys = jax.random.split(jax.random.key(1), 3)
    state = {"w": jax.random.normal(keys[0], (3, 4, 4))}
    batches = jax.random.normal(keys[1], (5, 3, 4, 4) if per_model_data else (5, 4, 4))
    lrs = jnp.linspace(0.1, 0.3, 3)
    want = jax.jit(blocks.make_block_step(jax.vmap(step, in_axes=(0, 0 if per_model_data else None, 0)))
                   )(state, batches, 4, lrs)
    got = jax.jit(model_batch.map_block_over_models(blocks.make_block_step(step), per_model_data, models_per_call)
                  )(state, batches, 4, lrs)
    assert got[1]["norm"].shape == (5, 3) and np.all(np.asarray(got[1]["norm"][4]) == 0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)


def test_stacked_states_are_the_solo_states_and_members_come_back_in_the_solo_layout(tiny_gpt):
    """Model i of a fresh stack is bit-identical to create_train_state(seed i) (equal seeds
    included), and a member's slice has the solo run's values and shardings (what it saves)."""
    import jax
    from research.models import build_model
    from research.sharding import DEFAULT_RULES
    from research.training import losses, partitioning
    from research.training.optimizers import OptimizerConfig, make_optimizer
    from research.training.state import abstract_batch, create_stacked_train_state, create_train_state

    from tests.training.conftest import synthetic_batch
    model, objective = build_model(tiny_gpt), losses.get_objective("causal_lm", "decoder")
    optimizer, _ = make_optimizer(OptimizerConfig(total_steps=10))
    spec, mesh = abstract_batch(synthetic_batch("decoder", 8, 32, 128)), partitioning.make_training_mesh((-1, 1, 1))
    seeds = (3, 1, 3)
    solo = {seed: create_train_state(model, objective, optimizer, spec, mesh, DEFAULT_RULES, seed) for seed in (1, 3)}
    shardings = solo[1][1]
    stacked = create_stacked_train_state(model, objective, optimizer, spec, mesh, DEFAULT_RULES, seeds,
                                         model_batch.stacked_shardings(shardings))
    get = model_batch.member_getter(shardings)
    for index, seed in enumerate(seeds):
        member = get(stacked, index)
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), member, solo[seed][0])
        assert jax.tree.leaves(jax.tree.map(lambda a, s: a.sharding == s, member, shardings)) == \
            [True] * len(jax.tree.leaves(shardings))


def test_a_negative_group_size_is_one_line():
    with pytest.raises(ConfigError, match=r"train.models_per_call=-1 must be >= 1"):
        model_batch.map_over_models(lambda s: s, (0,), -1)


def test_the_save_before_the_newest_is_read_off_the_leaders_steps():
    """Which models trained together are too far behind to resume with the others: the save before
    the newest came from the current checkpoint.every_steps, so after an ordinary kill between the
    models' step-20 saves a rerun with every_steps=5 (an allowed change) was refused, and with
    every_steps=40 a model left at step 10 no longer counted as behind: every model restarted from
    step 0 and the finished ones' checkpoints were deleted."""
    from research.training.members import _far_behind
    assert _far_behind([[10, 20], [10], [10]], 5) == []  # a kill between the step-20 saves
    assert _far_behind([[30, 40], [30, 40], [10]], 40) == [2]
    assert _far_behind([[30, 40], [30], [40]], 10) == []
    # keep_last=1: no earlier step on disk, so every_steps says where the save before was.
    assert _far_behind([[20], [10]], 10) == [] and _far_behind([[40], [10]], 10) == [1]
    assert _far_behind([[10], []], 10) == [] and _far_behind([[20], []], 10) == [1]  # a first save, or later
