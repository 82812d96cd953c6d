"""The logical-axis rules table against the mesh and the model: a rule naming a mesh axis the
mesh lacks, or a logical axis of the model that no rule maps, is one line before compiling."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from research.models import ConfigError, build_model, get_config
from research.sharding import DEFAULT_RULES
from research.training import partitioning

ALL_PRESETS = ("gpt2-tiny", "llama-tiny", "bert-test", "t5-tiny")


def _replaced(name: str, value) -> tuple:
    return tuple((n, value) if n == name else (n, a) for n, a in DEFAULT_RULES)


@pytest.mark.parametrize("rules, rule", [
    (_replaced("mlp", "model"), r"\('mlp', 'model'\) names mesh axis 'model'"),  # MaxText's name for tensor
    (_replaced("heads", ("tensr",)), r"\('heads', \('tensr',\)\) names mesh axis 'tensr'.* did you mean 'tensor'"),
])
def test_a_rule_naming_a_mesh_axis_the_mesh_lacks_is_one_line(rules, rule):
    """check_model_fits_mesh read mesh.shape[axis]: a bare KeyError traceback (after the mesh, before the claim)."""
    mesh = partitioning.make_training_mesh((2, 2, 2))
    with pytest.raises(ConfigError, match=rf"^mesh.rules: rule {rule}.*\('data', 'fsdp', 'tensor'\)") as error:
        partitioning.check_model_fits_mesh(get_config("gpt2-tiny"), mesh, rules)
    assert "\n" not in str(error.value)


def test_a_batch_rule_naming_a_mesh_axis_the_mesh_lacks_is_one_line():
    """The loops check the batch size first, and it reads the batch's rule: the KeyError came from there."""
    mesh = partitioning.make_training_mesh((2, 2, 2))
    with pytest.raises(ConfigError, match=r"^mesh.rules: rule \('activation_batch', \('data', 'model'\)\) names "
                                          r"mesh axis 'model'"):
        partitioning.check_batch_size(8, 1, mesh, _replaced("activation_batch", ("data", "model")))


@pytest.mark.parametrize("preset, rules, missing, example", [
    # A typo: flax replicated "embed", so an FSDP run kept a full copy of every weight on each device.
    ("gpt2-tiny", tuple(("embd", a) if n == "embed" else (n, a) for n, a in DEFAULT_RULES), r"\['embed'\]",
     r"\(rule\(s\) \['embd'\] name no logical axis of the models\).*\('embed', 'fsdp'\)"),
    # A dropped rule: the batch was not split at all.
    ("bert-test", tuple(r for r in DEFAULT_RULES if r[0] != "activation_batch"), r"\['activation_batch'\]",
     r"\('activation_batch', \('data', 'fsdp'\)\)"),
    ("llama-tiny", tuple(r for r in DEFAULT_RULES if r[0] not in ("kv_heads", "cache_kv")),
     r"\['cache_kv', 'kv_heads'\]", r"\('kv_heads', None\) to replicate one on purpose"),
])
def test_a_logical_axis_no_rule_maps_is_refused_in_one_line(preset, rules, missing, example):
    mesh = partitioning.make_training_mesh((1, 8, 1))
    config = get_config(preset)
    with pytest.raises(ConfigError, match=rf"^mesh.rules has no rule for logical axis\(es\) {missing} of model "
                                          rf"{preset}.*{example}") as error:
        partitioning.check_model_fits_mesh(config, mesh, rules)
    assert "\n" not in str(error.value)
    # Mapped to None on purpose: replicated, and accepted.
    names = {"embd": "embed"}
    fixed = tuple((names.get(n, n), a) for n, a in rules)
    fixed += tuple((name, None) for name in partitioning.model_logical_axes(config) if name not in dict(fixed))
    partitioning.check_model_fits_mesh(config, mesh, fixed)


def test_rules_need_only_the_axes_their_model_names():
    """A decoder's table needs no BERT token types or T5 buckets; an encoder's none of the KV cache's axes."""
    mesh = partitioning.make_training_mesh((2, 2, 2))
    drop = ("token_types", "relpos_buckets", "classes", "layers", "positions", "kv_heads")
    partitioning.check_model_fits_mesh(get_config("llama-tiny", num_kv_heads=None), mesh,
                                       tuple(r for r in DEFAULT_RULES if r[0] not in drop))
    bert = tuple(r for r in DEFAULT_RULES if not r[0].startswith("cache_") and r[0] != "relpos_buckets")
    partitioning.check_model_fits_mesh(get_config("bert-test"), mesh, bert)
    with pytest.raises(ConfigError, match=r"logical axis\(es\) \['layers'\]"):
        partitioning.check_model_fits_mesh(get_config("gpt2-tiny", scan_layers=True), mesh,
                                           tuple(r for r in DEFAULT_RULES if r[0] != "layers"))


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_model_logical_axes_are_the_ones_the_model_builds_and_default_rules_map_them(preset, scan_layers):
    """The check derives the axes from the config; the models' params must carry exactly those."""
    config = get_config(preset, scan_layers=scan_layers)
    tokens = jnp.zeros((1, 8), jnp.int32)
    args = (tokens, tokens) if config.family == "encoder_decoder" else (tokens,)
    boxed = jax.eval_shape(build_model(config).init, jax.random.key(0), *args)
    built = {a for spec in jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(
        x, jax.sharding.PartitionSpec)) for a in spec if a is not None}
    param_axes = {a for a in partitioning.model_logical_axes(config) if not a.startswith(("activation_", "cache_"))}
    assert param_axes == built
    partitioning.check_model_fits_mesh(config, partitioning.make_training_mesh((2, 2, 2)), DEFAULT_RULES)


def test_every_shipped_config_and_preset_passes_the_rules_check():
    """Every model preset (scanned or not) under DEFAULT_RULES, and every experiment config's own table."""
    from experiments.configs import finetune, pretrain
    from research.models import presets
    from research.training.loop import _rules
    mesh = partitioning.make_training_mesh((8, 1, 1))
    for name in presets._PRESETS:
        for scan_layers in (False, True):
            partitioning.check_model_fits_mesh(get_config(name, scan_layers=scan_layers), mesh, DEFAULT_RULES)
    configs = [pretrain.get_config(p) for p in (*pretrain.PRESETS, *pretrain.BATCHED_PRESETS,
                                                 *pretrain.ACCELERATOR_PRESETS)]
    for config in configs + [finetune.get_config(p) for p in finetune.PRESETS]:
        # The GPU fine-tuning presets take their model from Hugging Face weights: a LLaMA, scanned.
        model = {k: v for k, v in config.model.to_dict().items() if v is not None and k != "preset"}
        model_config = get_config(config.model.get("preset") or "llama-tiny", **model)
        partitioning.check_model_fits_mesh(model_config, mesh, _rules(config.mesh))
        assert _rules(config.mesh) == DEFAULT_RULES
    with pytest.raises(ConfigError, match="names mesh axis 'model'"):
        partitioning.check_model_fits_mesh(get_config("gpt2-tiny"), mesh, _replaced("mlp", "model"))


def test_the_accelerator_benchmark_checks_the_model_against_the_mesh_in_one_line():
    """llama-20m's 2 kv heads over tensor=8 died in JAX's IndivisibleError while placing the params."""
    from experiments.benchmarks.accelerator_train import benchmark
    with pytest.raises(ConfigError, match=r"^model llama-20m: num_kv_heads=2 does not split over mesh axis tensor"):
        benchmark(preset="llama-20m", seq_len=64, batch_size=8, steps=1, dtype="float32", remat="none",
                  attention_kernel="xla", mesh_shape=(1, 1, 8))


@pytest.mark.parametrize("rules, name, first, later", [
    # An override appended to the defaults: flax kept ('mlp', 'tensor') and the check passed.
    (DEFAULT_RULES + (("mlp", "fsdp"),), "mlp", "'tensor'", "'fsdp'"),
    # An override put first: flax replicated the vocabulary, but the check read ('vocab', 'tensor').
    ((("vocab", None),) + DEFAULT_RULES, "vocab", "None", "'tensor'"),
])
def test_rules_naming_a_logical_axis_twice_are_refused_in_one_line(rules, name, first, later):
    mesh = partitioning.make_training_mesh((1, 2, 4))
    with pytest.raises(ConfigError, match=rf"^mesh.rules names logical axis '{name}' twice \(\('{name}', {first}\), "
                                          rf"then \('{name}', {later}\)\); flax applies only the first") as error:
        partitioning.check_model_fits_mesh(get_config("gpt2-tiny", vocab_size=501), mesh, rules)
    assert "\n" not in str(error.value)


def _logical_names(model, *args, **kwargs) -> set[str]:
    """Every logical axis name `model` gives a parameter or an activation (flax's constraints)."""
    seen: set[str] = set()

    def record(x, names, *rest, **options):
        seen.update(n for n in names if n is not None)
        return x
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nn, "with_logical_constraint", record)
        boxed = jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs)
    seen.update(a for spec in jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(
        x, jax.sharding.PartitionSpec)) for a in spec if a is not None)
    return seen


def test_a_rule_naming_no_logical_axis_of_the_models_is_refused_in_one_line():
    """A typo beside a full table ('mpl') did nothing: flax never looks its name up. The names the
    check knows (PARAM_AXES, ACTIVATION_AXES) are every name a model, a fine-tuning head or a KV
    cache gives, so no rule of theirs is refused."""
    from research.finetune.heads import ScalarHeadModel, TokenClassifier
    from research.models.decoder import init_decoder_cache
    from research.sharding import ACTIVATION_AXES, PARAM_AXES
    tokens = jnp.zeros((1, 8), jnp.int32)
    used: set[str] = set()
    for preset, scan_layers in itertools.product(ALL_PRESETS, (False, True)):
        config = get_config(preset, scan_layers=scan_layers, **({"num_labels": 3} if preset == "bert-test" else {}))
        model = build_model(config)
        if config.family == "encoder_decoder":
            used |= _logical_names(model, tokens, tokens)
        else:
            used |= _logical_names(model, tokens)
        if config.family == "decoder":
            used |= _logical_names(model, tokens, cache=init_decoder_cache(config, 1, 16))
            used |= _logical_names(ScalarHeadModel(config), tokens, jnp.ones((1,), jnp.int32))
            used |= _logical_names(TokenClassifier(config, 3), tokens)
    assert used == set(PARAM_AXES) | set(ACTIVATION_AXES)
    assert {name for name, _ in DEFAULT_RULES} == used
    mesh = partitioning.make_training_mesh((1, 2, 4))
    with pytest.raises(ConfigError, match=r"^mesh.rules: rule\(s\) \['mpl'\] name no logical axis of the models, so "
                                          r"they do nothing; did you mean 'mlp'\?") as error:
        partitioning.check_model_fits_mesh(get_config("gpt2-tiny"), mesh, DEFAULT_RULES + (("mpl", None),))
    assert "\n" not in str(error.value)


def test_a_classifier_s_labels_split_over_the_mesh_are_refused_in_one_line():
    """num_labels on ('classes', 'tensor') was never checked: JAX's IndivisibleError placing the params."""
    mesh = partitioning.make_training_mesh((2, 1, 4))
    rules = _replaced("classes", "tensor")
    config = get_config("bert-test", num_labels=3)
    assert "classes" in partitioning.model_logical_axes(config)
    with pytest.raises(ConfigError, match=r"^model bert-test: num_labels=3 does not split over mesh axis tensor of "
                                          r"size 4 .*or the rule \('classes', None\) to replicate it"):
        partitioning.check_model_fits_mesh(config, mesh, rules)
    partitioning.check_model_fits_mesh(get_config("bert-test", num_labels=4), mesh, rules)


def test_a_head_s_classes_are_read_from_the_parameters_the_run_trains():
    """A tagger's num_token_labels and a reward head's 1 output are no ModelConfig field."""
    from research.finetune.heads import ScalarHeadModel, TokenClassifier
    mesh = partitioning.make_training_mesh((2, 1, 4))
    config = get_config("gpt2-tiny")
    tokens = jnp.zeros((1, 8), jnp.int32)
    for model, args, size in ((TokenClassifier(config, 3), (tokens,), 3),
                              (ScalarHeadModel(config), (tokens, jnp.ones((1,), jnp.int32)), 1)):
        boxed = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
        partitioning.check_model_fits_mesh(config, mesh, DEFAULT_RULES, boxed)
        with pytest.raises(ConfigError, match=rf"^model gpt2-tiny: head/bias's classes dimension={size} does not "
                                              r"split over mesh axis tensor of size 4"):
            partitioning.check_model_fits_mesh(config, mesh, _replaced("classes", "tensor"), boxed)
        with pytest.raises(ConfigError, match=r"no rule for logical axis\(es\) \['classes'\]"):
            partitioning.check_model_fits_mesh(config, mesh, tuple(r for r in DEFAULT_RULES if r[0] != "classes"),
                                               boxed)
