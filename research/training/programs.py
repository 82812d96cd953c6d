"""The compiled programs a training run calls: a block of train steps, the evaluation, and
the finiteness check of the parameters, for one model or for K models trained together.

One model: the train step with the optimizer's numbers (learning rate, warmup, length) as
traced values, so runs of one model at different budgets or learning rates compile to the
same program. K models (research/training/model_batch.py): the same pure step mapped over a
leading model axis of the state, each model with its own optimizer numbers; with
train.models_across_devices each device runs its own models on whole batches.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.training import blocks, evaluation, model_batch
from research.training.optimizers import OptimizerConfig, hyperparameters, make_optimizer
from research.training.train_config import TrainConfig
from research.training.train_step import make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class Programs:
    """train_block(state, batches, num_steps, *extra_args) -> (state, metrics); run_eval(params)
    -> one dict of eval metrics per model; params_finite(params) -> [K] flags (replicated);
    member_state(state, i) -> model i's slice laid out as if trained alone (None: one model)."""

    train_block: Callable
    extra_args: tuple
    train_sharding: NamedSharding
    run_eval: Callable[[Any], list[dict[str, float]]]
    params_finite: Callable[[Any], jax.Array]
    member_state: Callable[[Any, int], Any] | None


def all_finite(params: Any, *, stacked: bool) -> jax.Array:
    """[K] (stacked models) or [1]: whether every parameter of each model is finite."""
    def flags(x: jax.Array) -> jax.Array:
        finite = jnp.isfinite(x)
        return jnp.all(finite.reshape(finite.shape[0], -1), axis=1) if stacked else jnp.all(finite)[None]
    return jnp.all(jnp.stack([flags(x) for x in jax.tree.leaves(params)]), axis=0)


def build_programs(model: Any, loss_fn: Callable, opt_configs: Sequence[OptimizerConfig], train: TrainConfig,
                   mesh: Mesh, *, shardings: Any, state_shardings: Any, batch_sharding: NamedSharding,
                   batch_partition: PartitionSpec, stacked: bool, across: bool, per_model_data: bool,
                   validation_streams: Callable[[], list[Iterator[dict[str, np.ndarray]]]],
                   batch_bytes: int) -> Programs:
    """The programs of one run (stacked=False) or of len(opt_configs) models trained together.
    Call inside the run's partitioning.sharding_context. `validation_streams()` opens one
    validation iterator per data stream (one, or one per model with per_model_data);
    `batch_bytes` is the size of one batch of every stream (the evaluation's block length)."""
    num_models = len(opt_configs)
    if stacked:
        def model_step(state, batch, values):
            # The same pure step, with this model's optimizer numbers as traced values.
            opt, sched = make_optimizer(opt_configs[0], values)
            return make_train_step(model, loss_fn, opt, sched, microbatches=train.microbatches,
                                   batch_spec=batch_partition)(state, batch)
        per_call = train.models_per_call or model_batch.default_models_per_call(mesh.devices.flat[0].platform)
        data_axis = 0 if per_model_data else None
        block_fn = model_batch.map_block_over_models(blocks.make_block_step(model_step), per_model_data, per_call)
        extra_args = (model_batch.stacked_hyperparameters(opt_configs),)
        eval_fn = model_batch.map_over_models(make_eval_step(model, loss_fn), (0, data_axis), per_call)
        if across:  # each device runs its own models on whole batches
            block_fn, eval_fn, *across_data = model_batch.split_over_devices(block_fn, eval_fn, mesh, per_model_data)
        member_state = model_batch.member_getter(shardings)
    else:
        def step_fn(state, batch, values):
            # The optimizer's numbers (learning rate, warmup, length) enter as traced
            # values, not constants: runs of one model at different budgets or learning
            # rates then compile to the same program, which a persistent compilation
            # cache (the scaling sweep's) compiles once per model instead of once per run.
            opt, sched = make_optimizer(opt_configs[0], values)
            return make_train_step(model, loss_fn, opt, sched, microbatches=train.microbatches,
                                   batch_spec=batch_partition, param_shardings=shardings.params)(state, batch)
        extra_args = ({k: np.float32(v) for k, v in hyperparameters(opt_configs[0]).items()},)
        block_fn = blocks.make_block_step(step_fn)
        eval_fn, member_state = make_eval_step(model, loss_fn), None
    data_axes = 1 + per_model_data  # the step axis, then the model axis when data differs
    train_sharding = blocks.block_sharding(batch_sharding, data_axes)
    eval_sharding = blocks.block_sharding(batch_sharding, data_axes - 1)
    if across:
        train_sharding, eval_sharding = across_data
    train_block = blocks.jit_block_step(block_fn, state_shardings, train_sharding, len(extra_args))
    run_eval = evaluation.make_evaluation(eval_fn, state_shardings.params, eval_sharding, validation_streams,
                                          train.eval_batches, num_models, per_member=per_model_data,
                                          batch_bytes=batch_bytes)
    # One flag per model, replicated (every process reads it): are all its parameters finite.
    params_finite = jax.jit(functools.partial(all_finite, stacked=stacked),
                            out_shardings=NamedSharding(mesh, PartitionSpec()))
    return Programs(train_block, extra_args, train_sharding, run_eval, params_finite, member_state)
