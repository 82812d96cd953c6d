"""Run metrics: JSONL + TensorBoard writers, model size at init, throughput and MFU.

MFU (model FLOPs utilisation, Chowdhery et al. 2022) = achieved model FLOP/s / peak FLOP/s,
with model FLOPs from research/models/sizing.py (6N + attention, per target token,
unembedding included) and the peak either given or measured by a matmul benchmark on the
same devices.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.models import sizing
from research.models.config import ModelConfig

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Appends one JSON record per logged step to <workdir>/metrics.jsonl and mirrors the
    scalars to TensorBoard event files in <workdir>/tensorboard. Only process 0 writes."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tensorboard = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # imported lazily: slow, and only process 0 needs it
            os.makedirs(workdir, exist_ok=True)
            self._tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def forget_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites them, so the log reads as one run."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _plain(value: Any) -> Any:
    """numpy / jax scalars -> Python numbers for JSON."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of <workdir>/metrics.jsonl, in order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def model_size(config: ModelConfig, params: Any, target_len: int, source_len: int | None = None) -> dict[str, int]:
    """Parameter counts (total from the actual tree, the embedding share by sizing's
    convention) and training FLOPs per target token at these sequence lengths."""
    total = sizing.count_param_tree(params)
    embedding = sizing.param_counts(config).embedding
    flops = sizing.flops_per_token(config, target_len, source_len=source_len, include_embedding=True)
    return {"params_total": total, "params_embedding": embedding, "params_non_embedding": total - embedding,
            "train_flops_per_token": flops.train,
            "train_flops_per_token_without_attention": flops.train_without_attention}


def measure_peak_flops(devices: Sequence[jax.Device] | None = None, *, size: int = 1024,
                       dtype: Any = jnp.float32, repeats: int = 5) -> float:
    """Matmul FLOP/s of `devices` together (default: all): one [size, size] matmul per
    device, the best of `repeats` timed runs. A practical peak, below the data sheet's."""
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.asarray(devices), ("devices",))
    sharding = NamedSharding(mesh, PartitionSpec("devices"))
    n = len(devices)
    make = jax.jit(lambda key: jax.random.normal(key, (n, size, size), dtype), out_shardings=sharding)
    a, b = make(jax.random.PRNGKey(1)), make(jax.random.PRNGKey(2))
    # Several chained products per call so dispatch overhead does not count.
    chain = 4

    @jax.jit
    def matmuls(a, b):
        for _ in range(chain):
            a = jnp.einsum("NIJ,NJK->NIK", a, b) * (1.0 / size)
        return a

    matmuls(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmuls(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return chain * n * 2 * size**3 / best


class Throughput:
    """tokens/s and MFU over the steps fetched since the last reading.

    The first step (compilation) is never timed, and `restart` drops time spent outside
    training (evaluation, checkpointing) from the current window.
    """

    def __init__(self, tokens_per_step: float, flops_per_token: float, peak_flops: float | None):
        self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
        self._start, self._steps = 0.0, -1

    def step_done(self) -> None:
        self._steps += 1
        if self._steps == 0:
            self._start = time.perf_counter()

    def restart(self) -> None:
        if self._steps >= 0:  # before the first fetched step there is nothing to drop
            self._start, self._steps = time.perf_counter(), 0

    def read(self) -> dict[str, float]:
        """{tokens_per_second, mfu (a fraction; when a peak is known)}; empty before a timed step."""
        if self._steps <= 0:
            return {}
        now = time.perf_counter()
        tokens_per_second = self._steps * self.tokens_per_step / max(now - self._start, 1e-9)
        self._start, self._steps = now, 0
        out = {"tokens_per_second": tokens_per_second}
        if self.peak_flops:
            out["mfu"] = tokens_per_second * self.flops_per_token / self.peak_flops
        return out
