"""The train state and its creation directly in its sharded layout.

Parameters are never materialised on one device: `jax.eval_shape` of the initialiser
gives shapes and logical axis names, the rules table turns those into shardings, and the
initialiser is compiled with those `out_shardings` so each device builds only its shards.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.sharding import Rules
from research.training.losses import Objective, init_params
from research.training.partitioning import mirrored_shardings, param_shardings, sharding_context


@struct.dataclass
class TrainState:
    """Everything a step updates. `rng` is fixed; step keys are fold_in(rng, step)."""

    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any  # float32 master weights (param_dtype)
    opt_state: Any
    rng: jax.Array  # uint32[2] base key of dropout


def abstract_batch(batch: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a batch (global shapes)."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


def _initializer(model: nn.Module, objective: Objective, optimizer: optax.GradientTransformation,
                 batch_spec: Mapping[str, jax.ShapeDtypeStruct], with_boxed_params: bool = False):
    """seed key -> TrainState; with_boxed_params: (the params with their logical-axis boxes, the state),
    both from one trace of the model's init."""
    def init(seed_key: jax.Array):
        params_key, train_key = jax.random.split(seed_key)
        batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()}
        boxed = init_params(model, objective, batch, params_key)
        params = meta.unbox(boxed)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                           rng=train_key)
        return (boxed, state) if with_boxed_params else state
    return init


def train_state_shardings(model: nn.Module, objective: Objective, optimizer: optax.GradientTransformation,
                          batch_spec: Mapping[str, jax.ShapeDtypeStruct], mesh: Mesh,
                          rules: Rules) -> tuple[TrainState, TrainState]:
    """(abstract state, its NamedShardings), computed without allocating anything."""
    # One trace for both (two eval_shapes traced the model's init twice: ~0.2 s each for a tiny
    # model, paid by every run that starts).
    with sharding_context(mesh, rules):
        boxed, abstract = jax.eval_shape(_initializer(model, objective, optimizer, batch_spec, with_boxed_params=True),
                                         jax.random.PRNGKey(0))
    params = param_shardings(boxed, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = TrainState(step=replicated, params=params,
                           opt_state=mirrored_shardings(abstract.opt_state, abstract.params, params, mesh),
                           rng=replicated)
    return abstract, shardings


def create_train_state(model: nn.Module, objective: Objective, optimizer: optax.GradientTransformation,
                       batch_spec: Mapping[str, jax.ShapeDtypeStruct], mesh: Mesh, rules: Rules,
                       seed: int, shardings: TrainState | None = None) -> tuple[TrainState, TrainState]:
    """A fresh state created already sharded, and its shardings (`shardings`: train_state_shardings'
    for these arguments, when the caller has them; computed here otherwise)."""
    if shardings is None:
        _, shardings = train_state_shardings(model, objective, optimizer, batch_spec, mesh, rules)
    init = jax.jit(_initializer(model, objective, optimizer, batch_spec), out_shardings=shardings)
    with sharding_context(mesh, rules):
        state = init(jax.random.PRNGKey(seed))
    return state, shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying target shardings: the restore target on any mesh."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def create_stacked_train_state(model: nn.Module, objective: Objective, optimizer: optax.GradientTransformation,
                               batch_spec: Mapping[str, jax.ShapeDtypeStruct], mesh: Mesh, rules: Rules,
                               seeds: Sequence[int], stacked_shardings: TrainState) -> TrainState:
    """K fresh states on a leading model axis, model i created by the very program
    create_train_state(..., seeds[i]) runs (so bit-identical to it), then stacked. One
    compilation serves all K calls; a vmapped initialiser of 16 took longer to compile on
    XLA:CPU (all threefry: 6.96 / 10.13 s CPU against 4.54 / 4.61 s for the 1e4 ladder model,
    same process, load 5-7), and the optimizer's initial state does not depend on its numbers.
    Equal seeds share one call."""
    shardings = jax.tree.map(lambda s: NamedSharding(s.mesh, PartitionSpec(*s.spec[1:])), stacked_shardings)
    init = jax.jit(_initializer(model, objective, optimizer, batch_spec), out_shardings=shardings)
    with sharding_context(mesh, rules):
        by_seed = {seed: init(jax.random.PRNGKey(seed)) for seed in dict.fromkeys(seeds)}
    return stack_trees([by_seed[seed] for seed in seeds], stacked_shardings)


def stack_trees(trees: Sequence[Any], stacked_shardings: Any) -> Any:
    """K equal-structure trees of arrays -> one tree with a leading model axis, laid out as
    `stacked_shardings`. In one process this goes through host memory (bit-exact, and no
    program to compile: a jitted stack of the ~60 leaves of 16 states took 1.6 s to compile
    under load); across processes, where no host holds every shard, a jitted stack."""
    if jax.process_count() == 1:
        host = jax.device_get(list(trees))
        return jax.device_put(jax.tree.map(lambda *x: np.stack(x), *host), stacked_shardings)
    return jax.jit(lambda *t: jax.tree.map(lambda *x: jnp.stack(x), *t), out_shardings=stacked_shardings)(*trees)
