"""Batched L-BFGS: minimise many independent small problems at once.

Scaling-law fits restart L-BFGS from thousands of initialisations (4500 for Chinchilla's
Approach 3) and refit hundreds of bootstrap resamples. Each problem has only a handful of
parameters, so a Python loop over problems (scipy.optimize.minimize per start: ~20 s for
the Chinchilla grid) spends its time in interpreter overhead. Here the problem index is the
leading axis P of every array and one step of every problem is one fused XLA computation.

Two choices keep the batch from running at the pace of its slowest member (measured on the
4500-start, 240-run Chinchilla fit, 2 shared CPU cores):
- the backtracking line search is folded into the outer loop: each step evaluates one trial
  point per problem, and a problem whose trial fails the Armijo test halves its step for the
  next evaluation while the others move on. An inner line-search loop makes every problem
  pay for the longest search in the batch: 744 s, against 37 s for the same objective here
  (jax.vmap of optax.lbfgs behaves alike: 38 s for 200 starts);
- every `chunk` evaluations, once three quarters of the batch has finished, the finished
  problems are dropped (sizes are powers of two, each a quarter of the last or less, so
  only a few shapes are ever compiled: compiling dominates small fits).

Stopping rule per problem, as scipy's L-BFGS-B: the relative decrease of the objective in one
step, (f_k - f_k+1) / max(|f_k|, |f_k+1|), is below `ftol` (relative all the way down: no floor
of 1, which made it absolute for small objectives), the largest gradient component is below `gtol`, or the line search
shrinks the step below 2**-40 without a decrease.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# objective(x_PK, per_problem, shared) -> (f_P, df/dx_PK); row p depends only on row p of x
# and of every leaf of per_problem (arrays with leading axis P); `shared` is common data.
ValueAndGrad = Callable[[jax.Array, Any, Any], tuple[jax.Array, jax.Array]]

_ARMIJO_C1 = 1e-4  # sufficient-decrease constant (Nocedal & Wright's usual choice)
_MIN_STEP = 2.0**-40  # below this the trial point is lost in float64 rounding of x
_MIN_BUCKET = 256  # below this, running finished rows costs less than compiling a new shape
_HISTORY = ("s", "y", "rho")  # state entries (memory M, problems P, ...): oldest pair first


@dataclasses.dataclass(frozen=True)
class BatchedMinimum:
    """Where each of P problems stopped (numpy arrays)."""

    x_PK: np.ndarray
    value_P: np.ndarray
    iterations_P: np.ndarray  # accepted steps
    evaluations_P: np.ndarray  # objective + gradient evaluations
    converged_P: np.ndarray  # False: ran out of evaluations before a stopping rule fired


def minimize_batched(objective: ValueAndGrad, x0_PK: np.ndarray, per_problem: Any = (), shared: Any = (), *,
                     max_evaluations: int = 3000, memory: int = 10, ftol: float = 2.2e-9,
                     gtol: float = 1e-5, chunk: int = 50) -> BatchedMinimum:
    """Minimise P independent problems from the starts x0_PK (P problems, K parameters).

    `objective` returns values and gradients, and must be a module-level function (it is a
    static jit argument, so repeated fits reuse the compiled loop). Defaults for `ftol` / `gtol` are scipy
    L-BFGS-B's (factr=1e7 -> 1e7 * float64 eps). Arrays take the dtype of x0_PK: call inside
    `jax.enable_x64()` with float64 starts for float64, as the fits in this package do.
    """
    x0_PK = jnp.asarray(x0_PK)
    assert x0_PK.ndim == 2, f"x0_PK must be (problems, parameters), got {x0_PK.shape}"
    P = x0_PK.shape[0]
    options = (memory, float(ftol), float(gtol), int(chunk))
    state = _init(objective, x0_PK, per_problem, shared, memory)
    index = np.arange(P)  # which original problem each batch row holds
    out = {k: np.zeros(P, dtype) for k, dtype in
           (("value", np.float64), ("iterations", np.int64), ("evaluations", np.int64), ("converged", bool))}
    x_out = np.array(x0_PK, np.float64)
    while True:
        state = _steps(objective, options, state, per_problem, shared)
        active = np.asarray(state["active"])
        spent = np.asarray(state["evaluations"])
        finished = (~active) | (spent >= max_evaluations)
        real = index >= 0  # padding rows carry index -1
        done = finished & real
        x_out[index[done]] = np.asarray(state["x"])[done]
        for key, field in (("value", "f"), ("iterations", "iterations"), ("evaluations", "evaluations")):
            out[key][index[done]] = np.asarray(state[field])[done]
        # Stopped by a rule, at a finite value: a start whose objective was not finite (inactive
        # from the first evaluation) did not converge, and counted as if it had.
        out["converged"][index[done]] = ~active[done] & np.isfinite(np.asarray(state["f"])[done])
        keep = np.flatnonzero(~finished & real)
        if keep.size == 0:
            break
        state["active"] = jnp.asarray(active & ~finished)  # out of evaluations: stop where recorded
        size = max(_MIN_BUCKET, 1 << int(np.ceil(np.log2(keep.size))))
        if 4 * size <= len(index):  # compact (the paper grid: 4500 -> 1024 -> 256 rows), pad with row 0
            rows = np.concatenate([keep, np.full(size - keep.size, keep[0])])
            index = np.concatenate([index[keep], np.full(size - keep.size, -1)])
            # On the host: the same copies, but a gather on the device compiled a program for every
            # array shape of every compaction (181 of the 227 programs one cpu_tiny fit compiled).
            state = {k: (v[:, rows] if k in _HISTORY else v[rows]) for k, v in jax.device_get(state).items()}
            state["active"][keep.size:] = False
            per_problem = jax.tree.map(lambda v: np.asarray(v)[rows], per_problem)
    return BatchedMinimum(x_out, out["value"], out["iterations"], out["evaluations"], out["converged"])


@functools.partial(jax.jit, static_argnums=(0, 4))
def _init(objective, x0_PK, per_problem, shared, memory):
    f_P, g_PK = objective(x0_PK, per_problem, shared)
    P, K = x0_PK.shape
    history_MPK = jnp.zeros((memory, P, K), x0_PK.dtype)
    active_P = jnp.isfinite(f_P) & jnp.all(jnp.isfinite(g_PK), axis=-1)
    return {"x": x0_PK, "f": f_P, "g": g_PK, "d": jnp.zeros_like(x0_PK), "t": jnp.ones(P, x0_PK.dtype),
            "searching": jnp.zeros(P, bool), "s": history_MPK, "y": history_MPK,
            "rho": jnp.zeros((memory, P), x0_PK.dtype),
            "iterations": jnp.zeros(P, jnp.int32), "evaluations": jnp.ones(P, jnp.int32), "active": active_P}


def _direction(g_PK, s_MPK, y_MPK, rho_MP):
    """Two-loop recursion; history is oldest..newest along M, and slots with rho = 0 are empty."""
    # lax.scan rather than a Python loop over M: the unrolled loop took seconds to compile.
    def newest_first(q_PK, pair):
        s_PK, y_PK, rho_P = pair
        alpha_P = rho_P * jnp.sum(s_PK * q_PK, axis=-1)
        return q_PK - alpha_P[:, None] * y_PK, alpha_P

    def oldest_first(r_PK, pair):
        s_PK, y_PK, rho_P, alpha_P = pair
        beta_P = rho_P * jnp.sum(y_PK * r_PK, axis=-1)
        return r_PK + (alpha_P - beta_P)[:, None] * s_PK, None

    q_PK, alpha_MP = jax.lax.scan(newest_first, g_PK, (s_MPK, y_MPK, rho_MP), reverse=True)
    s_PK, y_PK = s_MPK[-1], y_MPK[-1]
    has_pair_P = rho_MP[-1] > 0
    yy_P = jnp.where(has_pair_P, jnp.sum(y_PK * y_PK, axis=-1), 1.0)
    # Initial Hessian scale s.y / y.y from the newest pair; before any pair, a first step of
    # length <= 1 along -g, so it cannot jump far in log-parameter space.
    gamma_P = jnp.where(has_pair_P, jnp.sum(s_PK * y_PK, axis=-1) / yy_P,
                        1.0 / jnp.maximum(1.0, jnp.linalg.norm(g_PK, axis=-1)))
    r_PK, _ = jax.lax.scan(oldest_first, gamma_P[:, None] * q_PK, (s_MPK, y_MPK, rho_MP, alpha_MP))
    d_PK = -r_PK
    # A poor curvature history can give an ascent direction: fall back to steepest descent.
    descent_P = jnp.sum(g_PK * d_PK, axis=-1) < 0
    steepest_PK = -g_PK / jnp.maximum(1.0, jnp.linalg.norm(g_PK, axis=-1, keepdims=True))
    return jnp.where(descent_P[:, None], d_PK, steepest_PK)


def _push(history_M_, new_, keep_P):
    """Append `new` as the newest entry (dropping the oldest) for problems where keep_P."""
    pushed = jnp.concatenate([history_M_[1:], new_[None]], axis=0)
    return jnp.where(keep_P.reshape((1, -1) + (1,) * (pushed.ndim - 2)), pushed, history_M_)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _steps(objective, options, state, per_problem, shared):
    """`chunk` evaluations of every active problem: one trial point each per evaluation."""
    _, ftol, gtol, chunk = options

    def step(_, st):
        active_P = st["active"]
        # A problem that is not mid-search starts a new line search along a fresh direction.
        fresh_P = ~st["searching"]
        d_PK = jnp.where(fresh_P[:, None], _direction(st["g"], st["s"], st["y"], st["rho"]), st["d"])
        t_P = jnp.where(fresh_P, 1.0, st["t"])
        trial_PK = st["x"] + t_P[:, None] * d_PK
        f_trial, g_trial = objective(trial_PK, per_problem, shared)
        slope_P = jnp.sum(st["g"] * d_PK, axis=-1)
        accept_P = active_P & jnp.isfinite(f_trial) & jnp.all(jnp.isfinite(g_trial), axis=-1) & (
            f_trial <= st["f"] + _ARMIJO_C1 * t_P * slope_P)

        s_PK, y_PK = trial_PK - st["x"], g_trial - st["g"]
        sy_P = jnp.sum(s_PK * y_PK, axis=-1)
        # Keep a pair only with positive curvature, so the implied Hessian stays positive definite.
        keep_P = accept_P & (sy_P > 1e-10 * jnp.sum(y_PK * y_PK, axis=-1))
        rho_P = 1.0 / jnp.where(keep_P, sy_P, 1.0)

        f_P = jnp.where(accept_P, f_trial, st["f"])
        # Relative, as scipy's factr test: (f_k - f_k+1) / max(|f_k|, |f_k+1|) <= ftol. No floor of 1:
        # a summed Huber objective of a good fit is ~1e-8..1e-12, and an absolute test stops
        # while parameters are still off in their third digit (beta 0.536 for a true 0.50).
        scale_P = jnp.maximum(jnp.maximum(jnp.abs(st["f"]), jnp.abs(f_P)), jnp.finfo(f_P.dtype).tiny)
        small_decrease_P = (st["f"] - f_P) <= ftol * scale_P
        small_grad_P = jnp.max(jnp.abs(g_trial), axis=-1) <= gtol
        step_lost_P = ~accept_P & (0.5 * t_P < _MIN_STEP)
        done_P = active_P & ((accept_P & (small_decrease_P | small_grad_P)) | step_lost_P)
        return {"x": jnp.where(accept_P[:, None], trial_PK, st["x"]), "f": f_P,
                "g": jnp.where(accept_P[:, None], g_trial, st["g"]), "d": d_PK,
                "t": jnp.where(accept_P, 1.0, 0.5 * t_P), "searching": active_P & ~accept_P,
                "s": _push(st["s"], s_PK, keep_P), "y": _push(st["y"], y_PK, keep_P),
                "rho": _push(st["rho"], rho_P, keep_P),
                "iterations": st["iterations"] + accept_P, "evaluations": st["evaluations"] + active_P,
                "active": active_P & ~done_P}

    return jax.lax.fori_loop(0, chunk, step, state)
