"""Adafactor on a scanned stack nested in the params tree (a head model's "body", LoRA's "lora"),
and opt.b1 / opt.b2, which Adafactor never reads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import build_model, get_config
from research.models.config import ConfigError
from research.models.layout import stack_layers, unbox, unstack_layers
from research.training.optimizers import OptimizerConfig, make_optimizer

ADAFACTOR = OptimizerConfig(name="adafactor", learning_rate=1e-2, schedule="constant", total_steps=5, clip_norm=1.0)


def _unrolled_params():
    """Two layers of gpt2-tiny, layer 1's matrices 4x layer 0's (as after training): an RMS taken
    over the stacked [2, ...] leaf is then far from either layer's own."""
    config = get_config("gpt2-tiny", num_layers=2, vocab_size=128, max_len=32, use_bias=False)
    params = unbox(build_model(config).init(jax.random.PRNGKey(0), jnp.ones((1, 16), jnp.int32))["params"])
    return {k: (jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, v) if k == "layers_1" else v)
            for k, v in params.items()}


def _gradients(tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _steps(optimizer, params, grads, steps=3):
    """The updates of `steps` steps with the same gradients (the factored moments accumulate)."""
    state, out = optimizer.init(params), []
    for _ in range(steps):
        updates, state = optimizer.update(grads, state, params)
        out.append(updates)
    return out


def _assert_same_updates(scanned, unrolled):
    for s, u in zip(scanned, unrolled):
        assert jax.tree.structure(s) == jax.tree.structure(u)
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(u)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("wrap", [
    lambda t: {"body": t, "head": {"kernel": jnp.ones((4, 1))}},  # a head model (research/finetune/heads.py)
    lambda t: {"outer": {"body": t}},
], ids=["body", "deeper"])
def test_adafactor_updates_of_a_nested_scanned_stack_equal_the_unrolled_ones(wrap):
    """A stack under "body" was one leaf to Adafactor's per-leaf RMS: updates 3x off the unrolled
    model's (max relative difference 3.16). At the top (pretraining) it was right already
    (tests/training/test_optimizers.py)."""
    params = _unrolled_params()
    grads = _gradients(params)
    unrolled = _steps(make_optimizer(ADAFACTOR)[0], wrap(params), wrap(grads))
    scanned = _steps(make_optimizer(ADAFACTOR)[0], wrap(stack_layers(params, "layers")),
                     wrap(stack_layers(grads, "layers")))
    _assert_same_updates([unstack_layers(u, "layers") for u in scanned], unrolled)


def test_adafactor_updates_of_scanned_lora_adapters_equal_the_unrolled_ones():
    """The trainer's LoRA optimizer (adapter_optimizer over make_optimizer): the adapters' stack
    under "lora" mixed its layers (lora_a updates of layer 0 2.9x the unrolled run's)."""
    from research.finetune.lora import BASE, LORA, LoraConfig, adapter_optimizer, init_lora
    base = _unrolled_params()
    adapters = init_lora(base, LoraConfig(rank=4), jax.random.PRNGKey(2))
    adapters["layers_1"] = jax.tree.map(lambda x: x * 4.0, adapters["layers_1"])
    grads = _gradients(adapters)
    runs = []
    for relayout in (lambda t: t, lambda t: stack_layers(t, "layers")):
        params = {BASE: relayout(base), LORA: relayout(adapters)}
        zeros = {BASE: jax.tree.map(jnp.zeros_like, params[BASE]), LORA: relayout(grads)}
        runs.append(_steps(adapter_optimizer(make_optimizer(ADAFACTOR)[0]), params, zeros))
    unrolled, scanned = runs
    _assert_same_updates([unstack_layers(u, "layers") for u in scanned], unrolled)
    assert all(not np.any(leaf) for u in scanned for leaf in jax.tree.leaves(u[BASE]))  # the base stays frozen


@pytest.mark.parametrize("field, value, default", [("b1", 0.0, 0.9), ("b2", 0.5, 0.95)])
def test_a_b1_or_b2_that_adafactor_ignores_is_one_line(field, value, default):
    """optax.adafactor has its own decay_rate and no momentum: another b1 / b2 trained exactly as
    the defaults, without a word (the batched sweep refused them)."""
    with pytest.raises(ConfigError, match=rf"^opt\.{field}={value} is not used by opt\.name='adafactor' .*leave "
                                          rf"opt\.{field} at {default}, or set opt\.name to one of \['adamw', 'lion'\]\.$"
                       ) as error:
        OptimizerConfig(name="adafactor", **{field: value})
    assert "\n" not in str(error.value)
    OptimizerConfig(name="adafactor", b1=0.9, b2=0.95)  # the defaults, which every config carries
    OptimizerConfig(name="lion", **{field: value})  # read there


def test_fine_tuning_refuses_an_unread_b2_before_the_claim(tmp_path):
    from research.finetune.run import finetune_and_evaluate
    from tests.finetune.conftest import tiny_config
    config = tiny_config("sft_lora_tiny", num_steps=2)
    config.opt.name, config.opt.b2 = "adafactor", 0.99
    with pytest.raises(ConfigError, match=r"^opt\.b2=0\.99 is not used by opt\.name='adafactor'"):
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_pretraining_refuses_an_unread_b1_before_the_claim(tokenizers, tmp_path):
    from research.training.loop import train_and_evaluate
    from tests.training.conftest import run_config
    config = run_config("gpt_tiny", tokenizers["plain"])
    config.opt.name, config.opt.b1 = "adafactor", 0.5
    with pytest.raises(ConfigError, match=r"^opt\.b1=0\.5 is not used by opt\.name='adafactor'"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
