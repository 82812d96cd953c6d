"""The objective of Hoffmann et al.'s Approach 3, for any number of power-law terms.

A law L = exp(e) + sum_j exp(a_j) / X_j**alpha_j is predicted in log-sum-exp form,
log L_hat = LSE(a_1 - alpha_1 log X_1, ..., a_J - alpha_J log X_J, e), and scored by the
Huber loss of log L_hat - log L summed over runs. J = 2 (X = N, D) is Chinchilla's
L(N, D); J = 1 is a Kaplan-style L(X) = E + (X_c / X)**alpha with a = alpha log X_c.

Parameters along K are (a_1..a_J, e, alpha_1..alpha_J): for J = 2 exactly the paper's
(a, b, e, alpha, beta). The gradient is written out by hand (a softmax-weighted sum over
runs): on the 4500 x 240 Chinchilla problem, whose evaluations are the fit's cost, value
and gradient take ~50 ms against ~500 ms by autodiff through jax.nn.logsumexp.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta, on residuals of log loss
# L-BFGS's gradient test for this objective. Outside |r| < delta each run adds a gradient of
# size ~delta, so scipy's default pgtol of 1e-5 (made for gradients of order one) is 1% of one
# run's pull: a bootstrap refit started at the full-data optimum stopped there at once, and the
# intervals came out ~25% too narrow (80% intervals held the true beta in 46% of simulated
# datasets at the cpu_tiny design; 96% with this tolerance: tests/scaling/test_simulation_coverage.py).
HUBER_GTOL = 1e-5 * HUBER_DELTA


def huber_lse_value_and_grad(x_PK: jax.Array, weight_PR: jax.Array, data: tuple[jax.Array, jax.Array],
                             delta: float = HUBER_DELTA) -> tuple[jax.Array, jax.Array]:
    """(f_P, df/dx_PK) for P parameter vectors; f = sum_R weight * Huber(log L_hat - log L).

    data = (log_X_JR, log_loss_R) over R runs and J variables; log_loss may instead be (P, R),
    one row per problem (many datasets on one design); weight_PR holds each problem's run
    multiplicities (ones for a fit, resample counts for a bootstrap).
    """
    log_X_JR, log_loss_R = data
    J = log_X_JR.shape[0]
    assert x_PK.shape[1] == 2 * J + 1, (x_PK.shape, J)
    # One (P, R) array per term rather than a stacked (J, P, R) one: XLA CPU fused the
    # stacked form ~10x slower. No max-shift: in float64, exp overflows only for a term
    # above 709 (a predicted loss of e^709) and underflows only with all terms below -745;
    # the line search rejects such non-finite trial points, and in between the unshifted
    # sum is as accurate as the shifted one (the shift cost 3x in time).
    e_P1 = x_PK[:, J, None]
    exp_e_PR = jnp.broadcast_to(jnp.exp(e_P1), (x_PK.shape[0], log_X_JR.shape[1]))
    exp_terms = [jnp.exp(x_PK[:, j, None] - x_PK[:, J + 1 + j, None] * log_X_JR[j]) for j in range(J)]
    total_PR = exp_e_PR + sum(exp_terms)
    residual_PR = jnp.log(total_PR) - log_loss_R
    magnitude_PR = jnp.abs(residual_PR)
    huber_PR = jnp.where(magnitude_PR <= delta, 0.5 * residual_PR**2, delta * (magnitude_PR - 0.5 * delta))
    # d log L_hat / d term = softmax weight of that term; d Huber / d residual = clip(residual).
    slope_PR = weight_PR * jnp.clip(residual_PR, -delta, delta) / total_PR
    # Sums over runs as matrix products: XLA CPU's row reductions of float64 were ~4x slower.
    ones_R = jnp.ones(log_X_JR.shape[1], log_X_JR.dtype)  # log_loss may also be per problem, (P, R)
    value_P = (weight_PR * huber_PR) @ ones_R
    grad_e_P = (slope_PR * exp_e_PR) @ ones_R
    grad_P2 = [(slope_PR * exp_PR) @ jnp.stack([ones_R, -log_X_JR[j]], axis=1) for j, exp_PR in enumerate(exp_terms)]
    grad_PK = jnp.stack([*(g[:, 0] for g in grad_P2), grad_e_P, *(g[:, 1] for g in grad_P2)], axis=1)
    return value_P, grad_PK
