"""The pure train and eval steps, and their compilation with shardings.

`train_step(state, batch) -> (state, metrics)` splits the global batch into k
microbatches, accumulates token-weighted gradients in float32 (the master weights'
dtype), and applies one optimizer update, so k microbatches of B/k rows give the same
update as one batch of B rows. Dropout keys are fold_in(fold_in(rng, step), microbatch):
a resumed run draws exactly the keys it would have drawn.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from research.models.config import ConfigError
from research.training.losses import LossFn
from research.training.optimizers import Schedule
from research.training.partitioning import shard_batch
from research.training.state import TrainState

Array = jax.Array
Metrics = dict[str, Array]
# Per-token means in the loss's aux, averaged over microbatches weighted by their tokens.
TOKEN_MEANS = ("cross_entropy", "z_loss", "accuracy")


def check_master_weights(model_config: Any) -> None:
    """One line, before compiling, for a model whose parameters would train in a dtype other than
    float32. The step accumulates float32 gradients and the optimizer's moments follow them, so
    with bfloat16 parameters an update below bf16's resolution is lost (norm scales at 1.0 never
    moved in the audit's 10 steps), float16 moments underflowed (loss 6.25 -> 7.26), and the
    blocked loop died on moments whose dtype changed after the first step. A bf16 param_dtype
    stays valid for inference (generate, evaluate)."""
    dtype = str(model_config.param_dtype)
    if dtype != "float32":
        raise ConfigError(f"model.param_dtype={dtype}: training keeps float32 master weights; set "
                          f"model.param_dtype=float32, with model.dtype={dtype} for {dtype} compute "
                          f"({dtype} parameters are for inference: generate, evaluate).")


def _microbatches(batch: Mapping[str, Array], k: int, batch_spec: PartitionSpec) -> dict[str, Array]:
    """[B, ...] -> [k, B/k, ...] taking rows i, i+k, i+2k, ... for microbatch i.

    Each device holds a contiguous block of rows, so this strided split keeps every
    microbatch evenly spread over the devices without moving data.
    """
    def split(x):
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        if not batch_spec:  # an unsplit batch (one device, or a model whole on its device): nothing to keep
            return x
        return jax.lax.with_sharding_constraint(x, PartitionSpec(None, *batch_spec))
    return {name: split(x) for name, x in batch.items()}


def make_train_step(model: nn.Module, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    schedule: Schedule, *, microbatches: int = 1,
                    batch_spec: PartitionSpec = PartitionSpec(), param_shardings: Any = None
                    ) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """The pure train step. `batch_spec` is the batch axis's PartitionSpec (for microbatching);
    `param_shardings` (the params' shardings) keeps the gradient-accumulation buffers sharded
    like the params instead of whatever the scan carry would otherwise get (replicated)."""
    shard_like_params = ((lambda tree: jax.lax.with_sharding_constraint(tree, param_shardings))
                         if param_shardings is not None else (lambda tree: tree))

    def weighted_loss(params, batch, key):
        loss, aux = loss_fn(model, params, batch, key)
        # Sum, not mean, over this microbatch's tokens: microbatches then add up exactly.
        return loss * jax.lax.stop_gradient(aux["num_tokens"]), aux

    grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

    def train_step(state: TrainState, batch: Mapping[str, Array]) -> tuple[TrainState, Metrics]:
        step_key = jax.random.fold_in(state.rng, state.step)

        def accumulate(carry, index_and_batch):
            grads_sum, sums = carry
            index, micro = index_and_batch
            (loss_sum, aux), grads = grad_fn(state.params, micro, jax.random.fold_in(step_key, index))
            grads_sum = shard_like_params(jax.tree.map(jnp.add, grads_sum, grads))
            n = aux["num_tokens"]
            sums = {"loss": sums["loss"] + loss_sum, "num_tokens": sums["num_tokens"] + n,
                    **{m: sums[m] + aux[m] * n for m in TOKEN_MEANS}}
            return (grads_sum, sums), None

        zeros = (shard_like_params(jax.tree.map(jnp.zeros_like, state.params)),
                 {m: jnp.zeros((), jnp.float32) for m in ("loss", "num_tokens", *TOKEN_MEANS)})
        if microbatches == 1:
            (grads, sums), _ = accumulate(zeros, (0, batch))
        else:
            (grads, sums), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(microbatches), _microbatches(batch, microbatches, batch_spec)))
        num_tokens = jnp.maximum(sums["num_tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / num_tokens, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": sums["cross_entropy"] / num_tokens, "total_loss": sums["loss"] / num_tokens,
                   "z_loss": sums["z_loss"] / num_tokens, "accuracy": sums["accuracy"] / num_tokens,
                   "num_tokens": sums["num_tokens"], "grad_norm": optax.tree.norm(grads),
                   "learning_rate": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: nn.Module, loss_fn: LossFn) -> Callable[[Any, Any], Metrics]:
    """(params, batch) -> token-weighted sums of cross-entropy and accuracy, deterministic."""

    def eval_step(params: Any, batch: Mapping[str, Array]) -> Metrics:
        _, aux = loss_fn(model, params, batch, None)
        n = aux["num_tokens"]
        return {"loss_sum": aux["cross_entropy"] * n, "correct_sum": aux["accuracy"] * n, "num_tokens": n}

    return eval_step


def evaluate(eval_step: Callable[[Any, Any], Metrics], params: Any, batches: Iterable[Mapping[str, Any]],
             sharding: NamedSharding) -> dict[str, float]:
    """Token-weighted eval loss (nats), perplexity and accuracy over `batches` (numpy, process-local)."""
    sums = {"loss_sum": 0.0, "correct_sum": 0.0, "num_tokens": 0.0}
    for batch in batches:
        out = jax.device_get(eval_step(params, shard_batch(batch, sharding)))
        sums = {k: sums[k] + float(out[k]) for k in sums}
    n = max(sums["num_tokens"], 1.0)
    loss = sums["loss_sum"] / n
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)), "eval_accuracy": sums["correct_sum"] / n}


def jit_train_step(train_step: Callable, state_shardings: TrainState, batch_sharding: NamedSharding):
    """Compiled once; the incoming state's buffers are donated to the new state."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def jit_eval_step(eval_step: Callable, param_shardings: Any, batch_sharding: NamedSharding):
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding), out_shardings=replicated)
