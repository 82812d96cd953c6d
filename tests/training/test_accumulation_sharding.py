"""Gradient-accumulation buffers are sharded like the params: on an FSDP mesh (1, 8, 1) with
4 microbatches the compiled step holds ~1/8 of the gradient sum per device, not all of it."""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from research.models import build_model, get_config
from research.sharding import DEFAULT_RULES
from research.training import losses, partitioning
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import abstract_batch, create_train_state
from research.training.train_step import jit_train_step, make_train_step
from tests.training.conftest import synthetic_batch


def test_accumulated_gradients_are_sharded_like_params():
    config = get_config("gpt2-tiny", num_layers=2, d_model=256, d_ff=1024, vocab_size=1024, max_len=32)
    model, objective = build_model(config), losses.get_objective("causal_lm", "decoder")
    optimizer, schedule = make_optimizer(OptimizerConfig(total_steps=10))
    batch = synthetic_batch("decoder", 32, 32, 1024)
    mesh = partitioning.make_training_mesh((1, 8, 1))
    state, shardings = create_train_state(model, objective, optimizer, abstract_batch(batch), mesh, DEFAULT_RULES,
                                          seed=0)
    batch_sharding = partitioning.batch_sharding(mesh, DEFAULT_RULES)
    replicated = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), shardings.params)

    def temp_bytes(carry_shardings):
        step = jit_train_step(make_train_step(model, losses.make_loss_fn(objective), optimizer, schedule,
                                              microbatches=4, batch_spec=partitioning.batch_partition_spec(DEFAULT_RULES),
                                              param_shardings=carry_shardings), shardings, batch_sharding)
        with partitioning.sharding_context(mesh, DEFAULT_RULES):
            compiled = step.lower(state, partitioning.shard_batch(batch, batch_sharding)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    params_bytes = sum(np.prod(leaf.shape) * 4 for leaf in jax.tree.leaves(state.params))
    like_params, whole = temp_bytes(shardings.params), temp_bytes(replicated)
    # A replicated carry holds every gradient on every device: 7/8 of the params more.
    assert whole - like_params > 0.5 * params_bytes, (like_params, whole, params_bytes)
