"""Training throughput and MFU of a ~1B LLaMA-style decoder at seq 2048 in bf16, on one host.

    python -m experiments.benchmarks.accelerator_train                # GPU / TPU host, defaults
    python -m experiments.benchmarks.accelerator_train --preset=llama-20m --seq_len=256 \\
        --batch_size=2 --steps=2                                      # a small CPU run

Defaults: preset tinyllama-1.1b (D 2048, 22 layers, 32 heads / 4 kv heads, F 5632, V 32000),
seq 2048, bf16 compute with float32 master weights, scan over layers, attention_kernel=auto
(cuDNN flash attention on GPU, splash on TPU), remat=minimal, AdamW, all devices on the
fsdp axis. Prints tokens/s, MFU against the datasheet dense bf16 peak (research/training/
peak_flops.py; on CPU a measured, labelled peak) with and without attention FLOPs (causal
attention counted once), and the attention kernel and remat policy that ran.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags

from research.models import build_model, get_config
from research.models.attention_kernels import resolve_kernel
from research.models.config import AttentionKernelName, ConfigError, Remat
from research.sharding import DEFAULT_RULES
from research.training import losses, partitioning
from research.training.metrics import model_size
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.peak_flops import peak_flops
from research.training.state import abstract_batch, create_train_state
from research.training.train_step import jit_train_step, make_train_step

_PRESET = flags.DEFINE_string("preset", "tinyllama-1.1b", "Decoder preset (LLaMA-style).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 2048, "Tokens per row T.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global rows per step; 0 = 4 per device.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one compile-and-warm-up step).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype (weights stay float32).")
_REMAT = flags.DEFINE_enum("remat", "minimal", list(Remat.__args__), "Remat policy (research/models/layers.py).")
_KERNEL = flags.DEFINE_enum("attention_kernel", "auto", list(AttentionKernelName.__args__), "Attention kernel.")
_MESH = flags.DEFINE_list("mesh", ["1", "-1", "1"], "Mesh (data, fsdp, tensor); -1 fills the devices.")
_PEAK = flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s of all devices; 0 = datasheet (measured on CPU).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the figures as JSON here.")


def benchmark(*, preset: str, seq_len: int, batch_size: int, steps: int, dtype: str, remat: str,
              attention_kernel: str, mesh_shape: Sequence[int], peak_override: float = 0.0) -> dict[str, Any]:
    """Compile, warm up, then time `steps` train steps -> figures (median step)."""
    mesh = partitioning.make_training_mesh(tuple(mesh_shape))
    batch_size = batch_size or 4 * mesh.size
    config = get_config(preset, max_len=seq_len, dtype=dtype, remat=remat, attention_kernel=attention_kernel,
                        scan_layers=True)
    # Before compiling: one line, not JAX's IndivisibleError (e.g. 4 kv heads over tensor=8).
    partitioning.check_batch_size(batch_size, 1, mesh, DEFAULT_RULES)
    partitioning.check_model_fits_mesh(config, mesh, DEFAULT_RULES)
    model = build_model(config)
    objective = losses.get_objective("causal_lm", "decoder")
    optimizer, schedule = make_optimizer(OptimizerConfig(total_steps=1000, warmup_steps=10))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "segment_ids": np.ones((batch_size, seq_len), np.int32),
             "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy(),
             "loss_weights": np.ones((batch_size, seq_len), np.float32)}
    state, shardings = create_train_state(model, objective, optimizer, abstract_batch(batch), mesh,
                                          DEFAULT_RULES, seed=0)
    size = model_size(config, state.params, seq_len)
    batch_sharding = partitioning.batch_sharding(mesh, DEFAULT_RULES)
    step = jit_train_step(make_train_step(model, losses.make_loss_fn(objective), optimizer, schedule,
                                          batch_spec=partitioning.batch_partition_spec(DEFAULT_RULES),
                                          param_shardings=shardings.params), shardings, batch_sharding)
    peak = peak_flops(list(mesh.devices.flat), override=peak_override)
    kernel = resolve_kernel(config, has_bias=False, has_segments=True, dropout=False, q_len=seq_len,
                            kv_len=seq_len)
    with partitioning.sharding_context(mesh, DEFAULT_RULES):
        global_batch = partitioning.shard_batch(batch, batch_sharding)
        start = time.perf_counter()
        state, metrics = step(state, global_batch)
        jax.block_until_ready(metrics)
        compile_seconds = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = step(state, global_batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    step_seconds = float(np.median(times))
    tokens_per_second = batch_size * seq_len / step_seconds
    return {
        "preset": preset, "device": f"{jax.devices()[0].device_kind} x {mesh.size}", "mesh": dict(mesh.shape),
        "seq_len": seq_len, "batch_size": batch_size, "dtype": dtype, "remat": remat,
        "attention_kernel": f"{attention_kernel} -> {kernel}", "params_total": size["params_total"],
        "first_step_seconds": compile_seconds, "step_seconds_median": step_seconds,
        "tokens_per_second": tokens_per_second,
        "tokens_per_second_per_device": tokens_per_second / mesh.size,
        "peak_flops": peak.flops_per_second, "peak_source": peak.source,
        "mfu": tokens_per_second * size["train_flops_per_token"] / peak.flops_per_second,
        "mfu_without_attention": tokens_per_second * size["train_flops_per_token_without_attention"]
        / peak.flops_per_second,
        "loss": float(metrics["loss"]),
    }


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        figures = benchmark(preset=_PRESET.value, seq_len=_SEQ_LEN.value, batch_size=_BATCH.value,
                            steps=_STEPS.value, dtype=_DTYPE.value, remat=_REMAT.value,
                            attention_kernel=_KERNEL.value, mesh_shape=[int(x) for x in _MESH.value],
                            peak_override=_PEAK.value)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    for name, value in figures.items():
        print(f"{name:>30}: {value:.4g}" if isinstance(value, float) else f"{name:>30}: {value}")
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    app.run(main)
