"""Every preset's analytic size (research/models/sizing.py) matches its module and the papers.

The module side is counted with `jax.eval_shape(model.init)`, so even llama-13b allocates
nothing. Presets are traced with scan_layers=True: one block is traced instead of L, and
the count is the same in both layouts (test_sizing.py checks unrolled modules).
"""
import jax
import jax.numpy as jnp
import pytest

from research.models import build_model, get_config, preset_names
from research.models.presets import SCALING_LADDER
from research.models.sizing import count_param_tree, param_counts

# Published parameter counts (model cards / papers, as counted by the HF checkpoints).
# BERT counts BertModel: embeddings + encoder + pooler, no MLM head or classifier.
PUBLISHED = {
    "gpt2-small": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "bert-base": 109_482_240,
    "bert-large": 335_141_888,
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "t5-v1_1-small": 76_961_152,
    "t5-v1_1-base": 247_577_856,
    "llama-7b": 6_738_415_616,
    "llama-13b": 13_015_864_320,
    "tinyllama-1.1b": 1_100_048_384,
}


def abstract_params(config):
    """Params of build_model(config) as ShapeDtypeStructs (nothing allocated)."""
    model = build_model(config)
    tokens_BT = jnp.ones((1, 8), jnp.int32)
    args = (tokens_BT, tokens_BT) if config.family == "encoder_decoder" else (tokens_BT,)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]


@pytest.mark.parametrize("name", preset_names())
def test_analytic_count_equals_module(name):
    config = get_config(name, scan_layers=True)
    params = abstract_params(config)
    counts = param_counts(config)
    assert count_param_tree(params) == counts.total
    assert count_param_tree(params, exclude_heads=True) == counts.backbone
    assert counts.embedding + counts.non_embedding == counts.total


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_counts(name):
    # Backbone = the whole model except BERT, whose published count excludes its MLM head.
    assert param_counts(get_config(name)).backbone == PUBLISHED[name]


def test_published_presets_exist():
    assert set(PUBLISHED) <= set(preset_names())


def test_scaling_ladder_spans_its_names():
    targets = {name: float(name.split("-")[1]) for name in SCALING_LADDER}
    ordered = sorted(SCALING_LADDER, key=targets.get)
    assert targets[ordered[0]] == 1e4 and targets[ordered[-1]] == 1e9
    sizes = [param_counts(get_config(name)).non_embedding for name in ordered]
    for name, size in zip(ordered, sizes):
        assert 0.75 <= size / targets[name] <= 1.25, f"{name}: {size:,} non-embedding params"
    assert all(a < b for a, b in zip(sizes, sizes[1:])), list(zip(ordered, sizes))
