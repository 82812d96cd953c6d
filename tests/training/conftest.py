"""Shared pieces of the training tests: tiny models, synthetic batches, a cached tokenizer."""
import numpy as np
import pytest

from research.models import build_model, get_config
from research.sharding import DEFAULT_RULES
from research.training import losses, partitioning
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import abstract_batch, create_train_state
from research.training.train_step import jit_train_step, make_train_step

# One decoder layer, small vocab: compiles in seconds; every size divides 8 devices.
TINY_GPT = dict(num_layers=1, vocab_size=128, max_len=32)


def synthetic_batch(family: str, batch: int, length: int, vocab: int, seed: int = 0,
                    ragged_weights: bool = False) -> dict[str, np.ndarray]:
    """Random tokens in research/data's batch schema, with two packed documents per row."""
    rng = np.random.default_rng(seed)
    tokens = lambda: rng.integers(1, vocab, (batch, length)).astype(np.int32)
    half = length // 2
    segments = np.concatenate([np.ones((batch, half)), np.full((batch, length - half), 2)], 1).astype(np.int32)
    positions = np.concatenate([np.arange(half), np.arange(length - half)])[None].repeat(batch, 0).astype(np.int32)
    weights = np.ones((batch, length), np.float32)
    if ragged_weights:  # rows carry different numbers of target tokens
        weights = (rng.random((batch, length)) < rng.random((batch, 1))).astype(np.float32)
    if family == "encoder_decoder":
        return {"encoder_inputs": tokens(), "encoder_segment_ids": segments, "encoder_positions": positions,
                "decoder_inputs": tokens(), "decoder_targets": tokens(), "decoder_segment_ids": segments,
                "decoder_positions": positions, "loss_weights": weights}
    return {"inputs": tokens(), "targets": tokens(), "segment_ids": segments, "positions": positions,
            "loss_weights": weights}


def one_step(model_config, batch, mesh, *, objective="causal_lm", microbatches=1, opt=None, rules=DEFAULT_RULES):
    """(state before, state after, metrics) of one train step of `model_config` on `mesh`."""
    import jax
    model = build_model(model_config)
    obj = losses.get_objective(objective, model_config.family)
    optimizer, schedule = make_optimizer(opt or OptimizerConfig(total_steps=10))
    state, shardings = create_train_state(model, obj, optimizer, abstract_batch(batch), mesh, rules, seed=0)
    before = jax.device_get(state)
    step = jit_train_step(make_train_step(model, losses.make_loss_fn(obj), optimizer, schedule,
                                          microbatches=microbatches,
                                          batch_spec=partitioning.batch_partition_spec(rules)),
                          shardings, partitioning.batch_sharding(mesh, rules))
    with partitioning.sharding_context(mesh, rules):
        state, metrics = step(state, partitioning.shard_batch(batch, partitioning.batch_sharding(mesh, rules)))
    return before, state, jax.device_get(metrics)


@pytest.fixture
def tiny_gpt():
    return get_config("gpt2-tiny", **TINY_GPT)
