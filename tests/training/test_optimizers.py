"""Schedules at hand-picked steps, the weight-decay mask, and each optimizer's update."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.models.config import ConfigError
from research.training.optimizers import OptimizerConfig, make_optimizer, make_schedule, weight_decay_mask


def _lr(config, step):
    return float(make_schedule(config)(step))


def test_cosine_schedule_values():
    config = OptimizerConfig(learning_rate=1.0, schedule="cosine", warmup_steps=10, total_steps=110,
                             min_lr_ratio=0.1)
    assert _lr(config, 0) == pytest.approx(0.1)  # (0 + 1) / 10: step 0 already updates
    assert _lr(config, 4) == pytest.approx(0.5)
    assert _lr(config, 9) == pytest.approx(1.0)
    assert _lr(config, 10) == pytest.approx(1.0)  # decay starts after warmup
    assert _lr(config, 60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(pi/2) = 0
    assert _lr(config, 35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert _lr(config, 110) == pytest.approx(0.1)
    assert _lr(config, 500) == pytest.approx(0.1)  # held at the floor past the horizon


def test_wsd_schedule_values():
    config = OptimizerConfig(learning_rate=2.0, schedule="wsd", warmup_steps=4, total_steps=100,
                             decay_fraction=0.2, min_lr_ratio=0.0)
    assert _lr(config, 1) == pytest.approx(1.0)
    assert _lr(config, 3) == pytest.approx(2.0)
    assert _lr(config, 50) == pytest.approx(2.0)  # stable plateau
    assert _lr(config, 80) == pytest.approx(2.0)  # decay of the last 20 steps starts here
    assert _lr(config, 90) == pytest.approx(1.0)
    assert _lr(config, 100) == pytest.approx(0.0)
    # A warmup that runs into the decay window would reach the peak, then drop onto the decay
    # line in one step (warmup 90 of 100: 1.0 at step 89, 0.5 at 90): refused in one line.
    with pytest.raises(ConfigError, match=r"^opt.warmup_steps=90 overlaps the wsd decay, which starts at step 80 "
                                          r"\(decay_fraction=0.2 of total_steps=100\); lower warmup_steps"):
        OptimizerConfig(schedule="wsd", warmup_steps=90, total_steps=100, decay_fraction=0.2)
    OptimizerConfig(schedule="wsd", warmup_steps=80, total_steps=100, decay_fraction=0.2)  # up to the start is fine
    OptimizerConfig(schedule="cosine", warmup_steps=90, total_steps=100, decay_fraction=0.2)  # cosine has no window


def test_constant_schedule_and_bad_values():
    assert _lr(OptimizerConfig(learning_rate=0.5, schedule="constant", total_steps=10), 7) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="opt.name='sgd'"):
        OptimizerConfig(name="sgd")
    with pytest.raises(ConfigError, match="warmup_steps=20"):
        OptimizerConfig(warmup_steps=20, total_steps=10)


@pytest.mark.parametrize("field, value", [
    ("learning_rate", float("nan")), ("learning_rate", float("inf")), ("learning_rate", 0.0), ("learning_rate", -1e-3),
    ("b1", 1.0), ("b1", 1.5), ("b1", -0.1), ("b2", 1.0), ("b2", float("nan")), ("eps", -1e-8), ("eps", 0.0), ("eps", float("nan")),
    ("weight_decay", float("nan")), ("weight_decay", -0.1), ("clip_norm", float("inf")), ("clip_norm", -1.0)])
def test_values_no_optimizer_can_train_with_are_one_line(field, value):
    # nan passed `learning_rate <= 0` (every comparison with nan is False) and compiled, then diverged at step 1.
    with pytest.raises(ConfigError, match=rf"^opt.{field}={value} must be") as error:
        OptimizerConfig(**{field: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, value, meaning", [
    ("learning_rate", 1e39, "overflows float32"), ("weight_decay", 1e39, "overflows float32"),
    ("clip_norm", 1e39, "overflows float32"), ("eps", 1e-50, "is 0 in float32"), ("learning_rate", 1e-50, "is 0 in float32"),
    ("eps", 1e-40, "is 0 in float32"),  # subnormal: numpy keeps it, XLA flushes it to 0
    ("b2", 0.99999999, "is 1.0 in float32")])
def test_values_float32_cannot_hold_are_one_line(field, value, meaning):
    """Checked in float64, used in float32: a learning rate of 1e39 passed, became inf in the step
    and diverged at step 1 (a numpy overflow warning, then 'lower opt.learning_rate')."""
    with pytest.raises(ConfigError, match=rf"^opt.{field}={re.escape(str(value))} {meaning}, the precision the step") as error:
        OptimizerConfig(**{field: value})
    assert "\n" not in str(error.value)


def test_a_cosine_schedule_that_never_decays_is_said():
    """warmup_steps == total_steps reached the peak at the last step: the run ended at the peak rate."""
    from research.training.optimizers import make_schedule, schedule_warning
    for warmup in (99, 100):
        config = OptimizerConfig(learning_rate=1e-3, warmup_steps=warmup, total_steps=100)
        assert float(make_schedule(config)(99)) == pytest.approx(1e-3)  # the last step runs at the peak
        assert schedule_warning(config) == (f"opt.warmup_steps={warmup} of total_steps=100: the cosine decay never "
                                            "starts and the run ends at the peak learning rate 0.001; lower "
                                            "warmup_steps (e.g. a tenth of the steps) for a run that anneals.")
    assert schedule_warning(OptimizerConfig(warmup_steps=98, total_steps=100)) is None
    assert schedule_warning(OptimizerConfig(schedule="constant", warmup_steps=100, total_steps=100)) is None


def test_edge_values_that_train_are_accepted():
    OptimizerConfig(b1=0.0, b2=0.999, eps=1e-30, weight_decay=0.0, clip_norm=0.0, learning_rate=1e-9)
    OptimizerConfig(name="lion", eps=0.0)  # lion never reads eps


PARAMS = {
    "layer": {"attention": {"query": {"kernel": jnp.ones((4, 2, 2)), "bias": jnp.ones((2, 2))}},
              "norm": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))}},
    "embed": {"embedding": jnp.ones((8, 4))},
}


def test_decay_mask_skips_norms_and_biases():
    mask = weight_decay_mask(PARAMS)
    assert mask["layer"]["attention"]["query"] == {"kernel": True, "bias": False}  # a 2-D bias too
    assert mask["layer"]["norm"] == {"scale": False, "bias": False}
    assert mask["embed"]["embedding"] is True


def test_decay_mask_skips_t5s_relative_position_bias_tables():
    """[buckets, heads] attention-logit biases stored as embeddings: they decayed, against the rule."""
    from research.models import build_model, get_config
    model = build_model(get_config("t5-tiny"))
    tokens = jnp.ones((1, 8), jnp.int32)
    from flax.core import meta
    params = meta.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))["params"])
    mask = weight_decay_mask(params)
    for name in ("encoder_relative_bias", "decoder_relative_bias"):
        assert jax.tree.leaves(mask[name]) == [False], name
    assert mask["token_embed"]["embedding"] is True


@pytest.mark.parametrize("name", ["adamw", "lion", "adafactor"])
def test_zero_gradients_decay_only_matrices(name):
    """With zero gradients the only change is weight decay: kernels shrink, norms/biases stay."""
    config = OptimizerConfig(name=name, learning_rate=0.1, schedule="constant", total_steps=10, weight_decay=0.5)
    optimizer, _ = make_optimizer(config)
    grads = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = optimizer.update(grads, optimizer.init(PARAMS), PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    assert float(new["layer"]["attention"]["query"]["kernel"][0, 0, 0]) < 1.0
    assert float(new["embed"]["embedding"][0, 0]) < 1.0
    for leaf in (new["layer"]["attention"]["query"]["bias"], new["layer"]["norm"]["scale"],
                 new["layer"]["norm"]["bias"]):
        np.testing.assert_array_equal(leaf, 1.0)


@pytest.mark.parametrize("name", ["adamw", "lion", "adafactor"])
def test_each_optimizer_descends(name):
    """A few steps on a quadratic lower it (and clipping keeps the first step bounded)."""
    config = OptimizerConfig(name=name, learning_rate=0.05, schedule="constant", total_steps=50,
                             weight_decay=0.0, clip_norm=1.0)
    optimizer, _ = make_optimizer(config)
    params = {"w": jnp.full((4, 4), 3.0)}
    loss = lambda p: jnp.sum(p["w"] ** 2)
    state = optimizer.init(params)
    for _ in range(20):
        updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.9 * 16 * 9.0


def test_adafactor_default_decay_is_decoupled_and_scaled_by_the_learning_rate():
    """Default settings, 20 zero-gradient steps: Adafactor decays exactly like AdamW,
    p_20 = prod_t (1 - lr_t * wd), not (1 - wd)^20 (which would leave 0.12)."""
    params = {"kernel": jnp.ones((8, 4)), "bias": jnp.ones((4,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    finals = {}
    for name in ("adafactor", "adamw"):
        config = OptimizerConfig(name=name, warmup_steps=5)
        optimizer, schedule = make_optimizer(config)
        state, p = optimizer.init(params), params
        for _ in range(20):
            updates, state = optimizer.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        finals[name] = p
    expected = np.prod([1.0 - float(schedule(t)) * config.weight_decay for t in range(20)])
    assert 0.999 < expected < 1.0
    np.testing.assert_allclose(finals["adafactor"]["kernel"], expected, rtol=1e-6)
    np.testing.assert_allclose(finals["adafactor"]["kernel"], finals["adamw"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(finals["adafactor"]["bias"], 1.0)


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_a_scanned_model_trains_as_the_unrolled_one(name):
    """scan_layers is a layout choice: Adafactor's per-leaf RMS steps over a stacked [L, ...] leaf
    mixed the layers (5 steps, one layer's kernels 4x the other's: updates 190% off)."""
    from research.models import build_model, get_config
    from research.models.layout import stack_layers, unbox, unstack_layers
    from research.training import losses
    from tests.training.conftest import synthetic_batch
    config = get_config("gpt2-tiny", num_layers=2, vocab_size=128, max_len=32, use_bias=False)
    unrolled, scanned = build_model(config), build_model(config.replace(scan_layers=True))
    tokens = jnp.ones((1, 16), jnp.int32)
    start = unbox(unrolled.init(jax.random.PRNGKey(0), tokens)["params"])
    start = {k: (jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, v) if k == "layers_1" else v)
             for k, v in start.items()}
    loss_fn = losses.make_loss_fn(losses.get_objective("causal_lm", "decoder"))
    batches = [{k: jnp.asarray(v) for k, v in synthetic_batch("decoder", 8, 16, 128, seed=s).items()} for s in range(5)]
    ends = []
    for model, params in ((unrolled, start), (scanned, stack_layers(start, "layers"))):
        optimizer, _ = make_optimizer(OptimizerConfig(name=name, learning_rate=1e-2, schedule="constant",
                                                      total_steps=5, weight_decay=0.1, clip_norm=1.0))
        state = optimizer.init(params)

        @jax.jit
        def step(params, state, batch, model=model, optimizer=optimizer):
            grads = jax.grad(lambda p: loss_fn(model, p, batch, None)[0])(params)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state
        for batch in batches:
            params, state = step(params, state, batch)
        ends.append(params)
    moved = lambda end: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), end, start)
    for a, b in zip(jax.tree.leaves(moved(unstack_layers(ends[1], "layers"))), jax.tree.leaves(moved(ends[0]))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("settings, message", [
    (dict(name="lion", eps=1e-3), r"^opt\.eps=0\.001 is not used by opt\.name='lion' \(its update is a sign"),
    (dict(decay_fraction=0.5), r"^opt\.decay_fraction=0\.5 is not used by opt\.schedule='cosine' \(only wsd decays"),
    (dict(schedule="constant", min_lr_ratio=0.0), r"^opt\.min_lr_ratio=0\.0 is not used by opt\.schedule='constant'"),
    (dict(schedule="constant", decay_fraction=0.9), r"^opt\.decay_fraction=0\.9 is not used by opt\.schedule="),
])
def test_a_number_the_optimizer_or_schedule_never_reads_is_one_line(settings, message):
    """They trained as the defaults without a word: runs swept over them were identical runs under
    different names (and a resume said the schedule had changed, at the same learning rate)."""
    with pytest.raises(ConfigError, match=message + r".*so the run would train as with the default; leave") as error:
        OptimizerConfig(**settings)
    assert "\n" not in str(error.value)
    OptimizerConfig(schedule="wsd", decay_fraction=0.5, min_lr_ratio=0.0)  # read there
    OptimizerConfig(min_lr_ratio=0.0)  # cosine reads it


def test_a_resume_with_a_schedule_number_neither_schedule_reads_says_nothing():
    from research.training.resume_changes import schedule_change
    saved = {"train": {"num_steps": 100}, "opt": {"schedule": "cosine", "decay_fraction": 0.2, "learning_rate": 1e-3}}
    now = {"train": {"num_steps": 100}, "opt": {**saved["opt"], "decay_fraction": 0.5}}
    assert schedule_change(saved, now, 10) is None
    wsd = {"train": {"num_steps": 100}, "opt": {**now["opt"], "schedule": "wsd"}}
    assert "opt.schedule 'cosine' -> 'wsd'" in schedule_change(saved, wsd, 10)
