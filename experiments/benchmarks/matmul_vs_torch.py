"""The bar model's matmuls in XLA:CPU and in torch, in one process, alternating shape by shape.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.benchmarks.matmul_vs_torch [--d_model=512 --vocab_size=32000]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python -m ...   # XLA's Eigen dots instead of YNNPACK

For each dense layer of a GPT (q/k/v/out D->D, MLP D->4D and 4D->D, the tied LM head D->V)
it times the three products of a training step, forward, dX = dY W^T and dW = X^T dY, with
M = batch x seq rows, in XLA (jit) and in torch (2 threads), twice each, alternating, and
prints GFLOP/s, CPU milliseconds (getrusage, which survives a loaded machine better than wall
time) and the per-step totals weighted by how often each shape occurs. It answers whether
XLA:CPU loses to torch in the matmul library itself. Not a test.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from typing import Callable, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads would count as CPU

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_D_MODEL = flags.DEFINE_integer("d_model", 512, "Model width D.")
_LAYERS = flags.DEFINE_integer("num_layers", 8, "Decoder layers.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Vocabulary V (the tied LM head).")
_ROWS = flags.DEFINE_integer("rows", 2048, "M = batch x seq.")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    fn()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - wall) / reps, (_cpu_seconds() - cpu) / reps


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from research.optional_imports import MissingDependencyError, import_optional
    try:
        torch = import_optional("torch", "experiments.benchmarks.matmul_vs_torch (it times PyTorch beside XLA)")
    except MissingDependencyError as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(os.cpu_count() or 1)
    M, D, V, L = _ROWS.value, _D_MODEL.value, _VOCAB.value, _LAYERS.value
    # (name, K, N, occurrences per step); the head's weight is the tied table E [V, D], used as E^T.
    shapes = [("q/k/v/out D->D", D, D, 4 * L), ("mlp in D->4D", D, 4 * D, L), ("mlp out 4D->D", 4 * D, D, L),
              ("lm head D->V", D, V, 1)]
    totals = np.zeros(4)  # xla wall, xla cpu, torch wall, torch cpu
    rng = np.random.default_rng(0)
    for name, K, N, count in shapes:
        head = name.startswith("lm head")
        x, dy = rng.standard_normal((M, K), np.float32), rng.standard_normal((M, N), np.float32)
        w = rng.standard_normal((N, K) if head else (K, N), np.float32)
        jx, jw, jdy = map(jnp.asarray, (x, w, dy))
        tx, tw, tdy = map(torch.from_numpy, (x, w, dy))
        products = {
            "fwd": (jax.jit(lambda x, w: x @ (w.T if head else w)), (jx, jw), lambda: tx @ (tw.t() if head else tw)),
            "dX": (jax.jit(lambda dy, w: dy @ (w if head else w.T)), (jdy, jw), lambda: tdy @ (tw if head else tw.t())),
            "dW": (jax.jit(lambda x, dy: (dy.T @ x) if head else (x.T @ dy)), (jx, jdy),
                   lambda: (tdy.t() @ tx) if head else (tx.t() @ tdy)),
        }
        flops = 2 * M * K * N
        reps = max(2, int(3e10 // flops))
        for kind, (xla_fn, args, torch_fn) in products.items():
            runs = {"xla": [], "torch": []}
            for _ in range(2):
                runs["xla"].append(_time(lambda: jax.block_until_ready(xla_fn(*args)), reps))
                runs["torch"].append(_time(torch_fn, reps))
            best = [min(t[i] for t in runs[fw]) for fw in ("xla", "torch") for i in (0, 1)]
            totals += count * np.asarray(best)
            print(f"{name:16s} {kind:3s}  xla {flops / best[0] / 1e9:6.1f} GF/s ({best[1] * 1e3:7.1f} ms cpu)  "
                  f"torch {flops / best[2] / 1e9:6.1f} GF/s ({best[3] * 1e3:7.1f} ms cpu)  "
                  f"xla/torch cpu {best[1] / best[3]:.2f}", flush=True)
    print(f"per-step matmuls: xla {totals[1]:.2f} s cpu ({totals[0]:.2f} s wall), torch {totals[3]:.2f} s cpu "
          f"({totals[2]:.2f} s wall); load {' '.join(open('/proc/loadavg').read().split()[:3])}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


if __name__ == "__main__":
    app.run(main)
