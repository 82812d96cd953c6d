"""Batched L-BFGS and the Huber-LSE objective: gradients, convergence, parity with scipy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from research.scaling import COARSE_GRID
from research.scaling.huber_lse import huber_lse_value_and_grad
from research.scaling.lbfgs import minimize_batched


def rosenbrock(x_PK, scale_P, _):
    """Rosenbrock valleys of different steepness per problem; minimum 0 at (1, 1)."""
    x, y = x_PK[:, 0], x_PK[:, 1]
    f = (1 - x) ** 2 + scale_P * (y - x**2) ** 2
    g = jnp.stack([-2 * (1 - x) - 4 * scale_P * x * (y - x**2), 2 * scale_P * (y - x**2)], axis=1)
    return f, g


@pytest.mark.parametrize("num_terms", [1, 2])
def test_huber_lse_gradient_matches_autodiff(num_terms):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x_PK = jnp.asarray(np.concatenate([rng.uniform(0, 8, (6, num_terms)), rng.uniform(-1, 1, (6, 1)),
                                           rng.uniform(0.1, 1.0, (6, num_terms))], axis=1))
        weight_PR = jnp.asarray(rng.integers(0, 3, (6, 20)).astype(float))
        # Residuals on both sides of delta: log losses spread by ~5%.
        data = (jnp.asarray(rng.uniform(15, 25, (num_terms, 20))), jnp.asarray(rng.normal(0.9, 0.05, 20)))
        value, grad = jax.jit(huber_lse_value_and_grad)(x_PK, weight_PR, data)
        auto = jax.jit(jax.grad(lambda x: huber_lse_value_and_grad(x, weight_PR, data)[0].sum()))(x_PK)
        assert value.dtype == jnp.float64
        np.testing.assert_allclose(grad, auto, rtol=1e-9, atol=1e-12)


def test_converges_per_problem_and_compacts():
    rng = np.random.default_rng(1)
    P = 1100  # >= 4 * 256, so the batch is compacted once most problems finish
    with jax.enable_x64(True):
        scale_P = jnp.asarray(rng.choice([1.0, 10.0, 100.0], P))
        result = minimize_batched(rosenbrock, rng.uniform(-2, 2, (P, 2)), scale_P, chunk=10, gtol=1e-10, ftol=0)
    assert result.converged_P.all()
    np.testing.assert_allclose(result.x_PK, 1.0, atol=1e-6)
    # Steep valleys take more steps: problems ran for their own number of evaluations.
    assert result.evaluations_P.min() < result.evaluations_P.max()


def rosenbrock_3d(x_PK, scale_P, _):
    """Rosenbrock in 3 parameters: shapes no other test of this file compiles."""
    a, b, c = x_PK[:, 0], x_PK[:, 1], x_PK[:, 2]
    f = (1 - a) ** 2 + scale_P * (b - a**2) ** 2 + scale_P * (c - b**2) ** 2
    g = jnp.stack([-2 * (1 - a) - 4 * scale_P * a * (b - a**2),
                   2 * scale_P * (b - a**2) - 4 * scale_P * b * (c - b**2), 2 * scale_P * (c - b**2)], axis=-1)
    return f, g


def test_compacting_the_batch_compiles_no_program_of_its_own():
    """Dropping finished problems copies rows on the host: a gather or scatter on the device
    compiled a program per array shape per compaction (227 programs in one cpu_tiny fit, 46 now)."""
    lowered = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(kwargs.get("fun_name", "?"))

    rng = np.random.default_rng(2)
    P = 1100  # compacted to 256 rows once three quarters have finished
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with jax.enable_x64(True):
            scale_P = rng.choice([1.0, 10.0, 100.0], P)
            result = minimize_batched(rosenbrock_3d, rng.uniform(-1.5, 1.5, (P, 3)), scale_P, chunk=10, gtol=1e-10,
                                      ftol=0)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert result.converged_P.all()
    np.testing.assert_allclose(result.x_PK, 1.0, atol=1e-5)
    assert result.evaluations_P.max() > 2 * result.evaluations_P.min()  # so rows were dropped
    # _init once, the step loop at 1100 rows and again at 256; besides them only jax's own staging
    # of host arrays (jit(stage)), no gather, scatter or broadcast of the compaction.
    assert sorted(name for name in lowered if name != "jit(stage)") == ["jit(_init)", "jit(_steps)", "jit(_steps)"], \
        lowered


def test_max_evaluations_marks_unconverged():
    with jax.enable_x64(True):
        result = minimize_batched(rosenbrock, np.full((4, 2), -1.5), jnp.full(4, 100.0), max_evaluations=5, chunk=5)
    assert not result.converged_P.any()
    assert (result.evaluations_P <= 6).all()


def test_a_start_whose_objective_is_not_finite_has_not_converged():
    """It is inactive from its first evaluation: counted as converged, it inflated num_converged."""
    with jax.enable_x64(True):
        result = minimize_batched(rosenbrock, np.array([[0.0, 0.0], [np.inf, 0.0]]), jnp.full(2, 1.0), gtol=1e-10)
    assert result.converged_P.tolist() == [True, False]


def test_matches_scipy_lbfgsb_on_chinchilla_objective(chinchilla_table):
    """An independent optimiser from the same starts reaches the same objective."""
    table = chinchilla_table
    data = (np.log([table.N, table.D]), np.log(table.loss))
    starts = COARSE_GRID.points()[::18]
    with jax.enable_x64(True):
        jdata = tuple(jnp.asarray(d) for d in data)
        ours = minimize_batched(huber_lse_value_and_grad, starts, jnp.ones((len(starts), len(table))), jdata)

        one = jax.jit(lambda x: huber_lse_value_and_grad(x[None], jnp.ones((1, len(table))), jdata))

        def fun(x):
            value, grad = one(jnp.asarray(x))
            return float(value[0]), np.asarray(grad[0])
        theirs = [scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B") for x0 in starts]
    best_theirs = min(r.fun for r in theirs)
    assert ours.value_P.min() <= best_theirs * (1 + 1e-6)
