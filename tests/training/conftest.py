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


def run_config(preset: str, tokenizer_path: str, **train):
    """experiments/configs/pretrain.py:`preset` shrunk to seconds: 1-layer model, 8 rows of 32
    tokens (one per fake device), a pre-trained tokenizer, every step logged."""
    from experiments.configs import pretrain
    config = pretrain.get_config(preset)
    config.model.num_layers = 1
    config.data.max_documents = 60
    config.data.tokenizer.model_path = tokenizer_path
    config.train.update({**dict(num_steps=8, batch_size=8, seq_len=32, log_every_steps=1, eval_every_steps=4,
                                eval_batches=1, progress_bar=False, peak_flops=1e9), **train})
    config.opt.warmup_steps = 2
    config.checkpoint.every_steps = 4
    return config


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory):
    """SentencePiece models trained once per session: plain (V=512) and with 100 T5 sentinels."""
    from research import data
    out = {}
    for name, tok in {"plain": dict(vocab_size=512), "t5": dict(vocab_size=412, num_extra_ids=100)}.items():
        config = data.DataConfig(source="stdlib", max_documents=200,
                                 tokenizer=data.TokenizerConfig(max_training_chars=300_000, **tok))
        out[name] = data.build_tokenizer(config, str(tmp_path_factory.mktemp(f"tokenizer_{name}"))).path
    return out


def tokenizer_for(preset: str, tokenizers) -> str:
    return tokenizers["t5" if preset.startswith("t5") else "plain"]


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """The environment for subprocesses that share this process's persistent XLA cache: a
    rerun of one config (resume tests) compiles once, in-process or in a subprocess. That is
    the suite's cache (tests/conftest.py) when one is set, so a kill test's subprocesses reuse
    what its in-process run compiled; otherwise a fresh one for this module."""
    import os
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") and jax.config.jax_compilation_cache_dir == \
            os.environ["JAX_COMPILATION_CACHE_DIR"]:
        yield env
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    previous = {name: getattr(jax.config, name) for name in names}
    directory = str(tmp_path_factory.mktemp("xla_cache"))
    for name, value in zip(names, (directory, 0.0, 0)):
        jax.config.update(name, value)
    yield {**env, "JAX_COMPILATION_CACHE_DIR": directory}
    for name, value in previous.items():
        jax.config.update(name, value)
    cc.reset_cache()
