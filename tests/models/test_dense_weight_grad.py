"""Dense kernel gradients in the activations_lhs form (research/models/layers.py): the same
values as JAX's own transpose rule up to float32 rounding, for every Dense shape the zoo uses,
under vmap (K models in one program) and in whole models; `auto` picks it only on CPU without
remat. Its speed is measured by experiments/benchmarks/loop_overhead.py, not here."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import build_model, get_config
from research.models.config import ConfigError
from research.models.layers import activations_lhs_product, uses_activations_lhs
from research.models.layout import unbox


def _plain_product(x, kernel, n_in):
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ())))


def _grads(product, x, kernel, n_in):
    # A non-linear loss, so the incoming gradient is not a constant.
    return jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(product(x, k, n_in))), argnums=(0, 1)))(x, kernel)


@pytest.mark.parametrize("x_shape,kernel_shape,n_in", [
    ((3, 5, 8), (8, 12), 1),            # D -> F (MLP in), rows [B, T]
    ((3, 5, 8), (8, 2, 4), 1),          # D -> (H, Dh) (query)
    ((3, 5, 2, 4), (2, 4, 8), 2),       # (H, Dh) -> D (attention out)
    ((7, 8), (8, 6), 1),                # rows [N] only
])
def test_gradients_equal_autodiff_within_rounding(x_shape, kernel_shape, n_in):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    np.testing.assert_array_equal(activations_lhs_product(x, kernel, n_in), _plain_product(x, kernel, n_in))
    got, want = _grads(activations_lhs_product, x, kernel, n_in), _grads(_plain_product, x, kernel, n_in)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_bfloat16_gradients_keep_their_dtype_and_value():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 6, 16)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16)
    got, want = _grads(activations_lhs_product, x, kernel, 1), _grads(_plain_product, x, kernel, 1)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=3e-2, atol=3e-2)


def test_vmapped_over_models_equals_each_model_alone():
    """train_together vmaps (or maps) the step over stacked models: the kernel gradient of each
    model must be its own, not summed over the model axis."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 4, 5, 8)), jnp.float32)  # [K, B, T, D]
    kernel = jnp.asarray(rng.normal(size=(3, 8, 6)), jnp.float32)  # [K, D, F]
    loss = lambda x, k: jnp.sum(jnp.sin(activations_lhs_product(x, k, 1)))
    together = jax.vmap(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    for i in range(3):
        alone = jax.grad(loss, argnums=(0, 1))(x[i], kernel[i])
        for t, a in zip(together, alone):
            np.testing.assert_allclose(t[i], a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_model_loss_and_gradients_match_across_forms(preset):
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 128, (2, 16)), jnp.int32)
    results = {}
    for form in ("autodiff", "activations_lhs"):
        model = build_model(get_config(preset, vocab_size=128, max_len=16, dense_weight_grad=form))
        params = unbox(model.init(jax.random.key(0), tokens)["params"])

        def loss(params):
            logits = model.apply({"params": params}, tokens)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0])

        results[form] = jax.jit(jax.value_and_grad(loss))(params)
    (loss_a, grads_a), (loss_b, grads_b) = results["autodiff"], results["activations_lhs"]
    np.testing.assert_array_equal(loss_a, loss_b)  # the forward pass is the same computation
    kernels = 0
    for path, a in jax.tree_util.tree_leaves_with_path(grads_a):
        b = grads_b
        for key in path:
            b = b[key.key]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
        kernels += "kernel" in jax.tree_util.keystr(path)
    assert kernels >= 6  # the Dense kernels were among the compared gradients


def test_auto_is_activations_lhs_on_cpu_without_remat_only():
    assert jax.default_backend() == "cpu"  # conftest runs the suite on CPU
    assert uses_activations_lhs(get_config("gpt2-tiny"))
    assert not uses_activations_lhs(get_config("gpt2-tiny", remat="save_dots"))
    assert not uses_activations_lhs(get_config("gpt2-tiny", dense_weight_grad="autodiff"))
    assert uses_activations_lhs(get_config("gpt2-tiny", remat="full", dense_weight_grad="activations_lhs"))


def test_unknown_form_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"dense_weight_grad='transposed' is not one of"):
        get_config("gpt2-tiny", dense_weight_grad="transposed")


def test_both_studies_pass_the_setting_to_every_run():
    """`--config.model.dense_weight_grad=autodiff` is how runs measured before activations_lhs
    reproduce bit for bit, so it must reach each run's model, not stop at the study config."""
    from experiments import emergence_plan
    from experiments.configs import emergence, scaling_laws
    from experiments.scaling_laws import run_dirs, sweep
    from research.scaling.sweep_plan import SweepSpec, ladder_models, plan_runs
    from research.training.workdir import run_fingerprint

    config = scaling_laws.get_config("cpu_tiny")
    config.model.dense_weight_grad = "autodiff"
    spec = SweepSpec(non_embedding_params=(5e3,), plan="tokens", tokens=(1e5,), min_steps=5)
    run = plan_runs(spec, ladder_models(spec, vocab_size=23, seq_len=64), batch_size=16, seq_len=64)[0]
    one = sweep.run_config(config, run, spec, tokenizer_path="/tok.model", peak_flops=1e9)
    fields = {k: v for k, v in one.model.to_dict().items() if v is not None}
    assert get_config(fields.pop("preset"), **fields).dense_weight_grad == "autodiff"
    # Like remat, it does not change what a checkpoint means: a run interrupted under one form
    # resumes under the other, in a plain workdir and in a sweep's run directory.
    assert not any("dense_weight_grad" in key for key in run_fingerprint(one.to_dict()))
    config.model.dense_weight_grad = None
    default = sweep.run_config(config, run, spec, tokenizer_path="/tok.model", peak_flops=1e9)
    assert default.model.to_dict() != one.model.to_dict()
    assert run_dirs._fingerprint(default.to_dict()) == run_dirs._fingerprint(one.to_dict())

    study = emergence.get_config("cpu_tiny")
    cached_evaluations = emergence_plan.plan_study(study).fingerprint
    study.model.dense_weight_grad = "autodiff"
    for size in study.sizes:
        fields = emergence_plan.size_model_fields(study, size)
        assert get_config(fields.pop("preset"), **fields).dense_weight_grad == "autodiff"
    # Evaluations are forward passes: those cached under one form stay valid under the other.
    assert emergence_plan.plan_study(study).fingerprint == cached_evaluations


@pytest.mark.parametrize("form,custom_calls", [("autodiff", 0), ("activations_lhs", 6 * 2)])
def test_dense_layers_route_through_the_chosen_form(form, custom_calls):
    """Each block's q, k, v, out, MLP in and out projections use the form (2 blocks: 12 calls,
    q / k / v / out and MLP in / out); the float32 LM head never does."""
    config = get_config("gpt2-tiny", num_layers=2, vocab_size=64, max_len=8, dense_weight_grad=form, tie_embeddings=False)
    model = build_model(config)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = unbox(model.init(jax.random.key(0), tokens)["params"])
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, tokens))))(params))
    assert jaxpr.count("custom_vjp_call") == custom_calls
