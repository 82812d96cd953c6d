"""Training throughput and MFU of a mid-size GPT on this machine, against its own matmul peak.

    python -m experiments.benchmarks.train_speed [--batch_size=8 --seq_len=256 --steps=4 --dtype=float32]

Builds a GPT-2-style decoder (width 512, 8 layers by default), runs the library's sharded
train step (research/training/train_step.py, AdamW, one device unless --mesh says
otherwise) on synthetic tokens, and reports tokens/s and MFU = model FLOP/s (sizing's 6N +
attention + unembedding per token) / the peak f32 matmul FLOP/s measured by
research.training.metrics.measure_peak_flops in the same process, just before each timed
step (so a sample's step and peak see about the same load on a shared machine); the
median over samples is the headline. Not a test: numbers depend on the machine and on
whatever else runs on it.

On a shared machine wall time measures the load as much as the step: cpu_seconds_per_step
(the process's user + system CPU time per step, from getrusage) is the figure to compare
across frameworks run side by side. --profile_steps=N traces N more steps and prints where
the time goes (experiments/benchmarks/step_profile.py: dots, LM head, copies, fills, ...);
matmul_library says which library XLA:CPU compiled the dots to (YNNPACK fusions by default
in jaxlib 0.10; XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= selects XLA's own Eigen dots).
"""
from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags

from experiments.benchmarks import step_profile
from research.models import build_model, get_config
from research.sharding import DEFAULT_RULES
from research.training import losses, partitioning
from research.training.metrics import measure_peak_flops, model_size
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import abstract_batch, create_train_state
from research.training.train_step import jit_train_step, make_train_step

_D_MODEL = flags.DEFINE_integer("d_model", 512, "Model width D.")
_LAYERS = flags.DEFINE_integer("num_layers", 8, "Decoder layers L.")
_VOCAB = flags.DEFINE_integer("vocab_size", 8192, "Vocabulary V (the data pipeline's default tokenizer size).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per row T.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Rows per step B.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one compile-and-warm-up step).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (weights stay float32).")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "full", "save_dots", "dots_with_no_batch_dims", "minimal", "offload"], "Rematerialisation policy.")
# Scanned layers are faster on XLA:CPU: unrolled, the backward pass fuses each layer's
# residual-gradient chain into several transposes that each recompute it.
_SCAN = flags.DEFINE_bool("scan_layers", True, "nn.scan over layers (one compiled block).")
_MESH = flags.DEFINE_list("mesh", ["1", "1", "1"], "Mesh (data, fsdp, tensor); default one device.")
_PEAK_SIZE = flags.DEFINE_integer("peak_matmul_size", 2048, "Side of the square matmuls that measure peak.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the figures as JSON here.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 0, "Trace this many more steps and print the time breakdown.")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def benchmark(*, d_model: int, num_layers: int, vocab_size: int, seq_len: int, batch_size: int, steps: int,
              dtype: str, remat: str, scan_layers: bool, mesh_shape: Sequence[int],
              peak_matmul_size: int, profile_steps: int = 0) -> dict[str, Any]:
    """Time `steps` train steps, each after a peak measurement; returns the figures."""
    mesh_shape = tuple(mesh_shape)
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    config = get_config("gpt2-small", d_model=d_model, num_layers=num_layers, num_heads=d_model // 64,
                        d_ff=4 * d_model, vocab_size=vocab_size, max_len=seq_len, dtype=dtype, remat=remat,
                        scan_layers=scan_layers)
    model = build_model(config)
    objective = losses.get_objective("causal_lm", "decoder")
    optimizer, schedule = make_optimizer(OptimizerConfig(total_steps=1000, warmup_steps=10))
    mesh = partitioning.make_mesh(mesh_shape, devices=devices)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "segment_ids": np.ones((batch_size, seq_len), np.int32),
             "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy(),
             "loss_weights": np.ones((batch_size, seq_len), np.float32)}
    state, shardings = create_train_state(model, objective, optimizer, abstract_batch(batch), mesh,
                                          DEFAULT_RULES, seed=0)
    size = model_size(config, state.params, seq_len)
    batch_sharding = partitioning.batch_sharding(mesh, DEFAULT_RULES)
    step = jit_train_step(make_train_step(model, losses.make_loss_fn(objective), optimizer, schedule,
                                          batch_spec=partitioning.batch_partition_spec(DEFAULT_RULES)),
                          shardings, batch_sharding)
    flops_per_step = batch_size * seq_len * size["train_flops_per_token"]
    with partitioning.sharding_context(mesh, DEFAULT_RULES):
        global_batch = partitioning.shard_batch(batch, batch_sharding)
        start = time.perf_counter()
        compiled = step.lower(state, global_batch).compile()
        state, metrics = compiled(state, global_batch)
        jax.block_until_ready(metrics)
        compile_seconds = time.perf_counter() - start
        # On a shared machine the load swings from second to second: pair each timed step with
        # a peak measured just before it, so that each MFU sample sees about the same load.
        times, peaks, cpu_times = [], [], []
        for _ in range(steps):
            peaks.append(measure_peak_flops(devices, size=peak_matmul_size, repeats=2))
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            state, metrics = compiled(state, global_batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
            cpu_times.append(_cpu_seconds() - cpu_start)
        profile = None
        if profile_steps:
            def run_step():
                nonlocal state, metrics
                state, metrics = compiled(state, global_batch)
                jax.block_until_ready(metrics)
            profile = step_profile.profile(run_step, compiled.as_text(), steps=profile_steps,
                                           log_dir=tempfile.mkdtemp(prefix="train_speed_trace_"))
    times, peaks = np.asarray(times), np.asarray(peaks)
    mfu = flops_per_step / times / peaks
    tokens = batch_size * seq_len
    return {"d_model": d_model, "num_layers": num_layers, "vocab_size": vocab_size, "seq_len": seq_len,
            "batch_size": batch_size, "dtype": dtype, "scan_layers": scan_layers, "devices": len(devices), **size,
            "first_step_seconds": compile_seconds, "step_seconds_median": float(np.median(times)),
            "step_seconds_min": float(times.min()), "cpu_seconds_per_step_median": float(np.median(cpu_times)),
            "matmul_library": step_profile.matmul_library(compiled.as_text()), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average": " ".join(open("/proc/loadavg").read().split()[:3]), "tokens_per_second_median": tokens / float(np.median(times)),
            "tokens_per_second_best": tokens / float(times.min()),
            "peak_flops_per_second_median": float(np.median(peaks)), "peak_flops_per_second_max": float(peaks.max()),
            "mfu_median": float(np.median(mfu)), "mfu_samples": [round(float(x), 3) for x in mfu],
            "loss": float(metrics["loss"]), **({"profile": profile} if profile else {})}


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    figures = benchmark(d_model=_D_MODEL.value, num_layers=_LAYERS.value, vocab_size=_VOCAB.value,
                        seq_len=_SEQ_LEN.value, batch_size=_BATCH.value, steps=_STEPS.value, dtype=_DTYPE.value,
                        remat=_REMAT.value, scan_layers=_SCAN.value, mesh_shape=[int(x) for x in _MESH.value],
                        peak_matmul_size=_PEAK_SIZE.value, profile_steps=_PROFILE_STEPS.value)
    for name, value in figures.items():
        if name == "profile":
            print(step_profile.format_breakdown(value))
            continue
        print(f"{name:>26}: {value:.4g}" if isinstance(value, float) else f"{name:>26}: {value}")
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    app.run(main)
