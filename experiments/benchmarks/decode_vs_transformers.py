"""Greedy decoding side by side with transformers' `generate`, on the same weights, in one process.

    python -m experiments.benchmarks.decode_vs_transformers [--batch_sizes=1,8 --new_tokens=128 --rounds=3]

Builds the gpt2-small preset with random weights (nothing is downloaded), writes them as a
Hugging Face checkpoint (research.models.hf.to_hf) and loads it into transformers'
GPT2LMHeadModel, so both frameworks run the same float32 weights. Each batch size is
compiled / warmed up once per framework, then the two alternate for --rounds timed runs
(project, transformers, project, ...), so both see the same load on a shared machine; the
medians and their ratio are printed with the load average (/proc/loadavg) around each run.

Threads: XLA:CPU runs on one intra-op pool sized to the machine's cores; torch gets the same
count (--torch_threads, default: os.cpu_count()), so neither is starved or oversubscribed.
OMP_WAIT_POLICY (--omp_wait_policy, default PASSIVE) is set before torch is imported: with
the default active spin-waiting, torch's OpenMP barriers stall whenever another process
holds a core (measured here at load 11, batch 8: 1234 ms/step active, 274 ms/step passive),
which would measure the machine's load rather than the framework. Not a test: figures
depend on the machine and on whatever else runs on it.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from absl import app, flags

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Prompt length (tokens) of every row.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating timed runs per framework and batch size.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", None, "torch intra-op threads (default: os.cpu_count()).")
_OMP_WAIT = flags.DEFINE_enum("omp_wait_policy", "PASSIVE", ["PASSIVE", "ACTIVE", "unset"],
                              "OMP_WAIT_POLICY for torch's OpenMP pool ('unset' leaves the environment alone).")


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """-> (seconds, load average just before, output)."""
    load = load_average()
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, load, out


def compare(batch_sizes: Sequence[int], new_tokens: int, prompt_len: int, rounds: int, torch_threads: int,
            seed: int = 0) -> list[dict[str, Any]]:
    """One row per batch size: median seconds and tokens/s of each framework, their ratio, loads."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from research.decoding import generate
    from research.models import build_model, get_config
    from research.models.hf import to_hf

    torch.set_num_threads(torch_threads)
    config = get_config("gpt2-small")
    model = build_model(config)
    params = jax.jit(lambda rng: model.init(rng, jnp.ones((1, 1), jnp.int32))["params"])(jax.random.key(seed))
    with tempfile.TemporaryDirectory() as folder:
        to_hf(model, params, folder)
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batch_sizes:
        prompts_BP = rng.integers(1, config.vocab_size, size=(batch, prompt_len))
        ids = torch.from_numpy(prompts_BP)
        hf_options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          attention_mask=torch.ones_like(ids), pad_token_id=0)

        def project():
            return jax.block_until_ready(generate(model, params, prompts_BP.tolist(), max_new_tokens=new_tokens))

        def reference():
            with torch.inference_mode():
                return hf_model.generate(ids, **hf_options)

        ours, theirs = project(), reference()  # compile / warm up outside the timed runs
        # Same weights: the greedy continuations agree until float rounding breaks a near-tie
        # (random weights give nearly flat logits), so report how far they agree.
        agree = _agreeing_prefix(np.asarray(ours.tokens_BN), theirs[:, prompt_len:].numpy())
        times = {"project": [], "transformers": []}
        loads = []
        for _ in range(rounds):
            for name, run in (("project", project), ("transformers", reference)):
                seconds, load, out = timed(run)
                times[name].append(seconds)
                loads.append(load)
        assert int(out.shape[1]) == prompt_len + new_tokens and int(ours.lengths_B.min()) == new_tokens
        loads.append(load_average())
        row: dict[str, Any] = dict(batch=batch, new_tokens=new_tokens, load_min=min(loads), load_max=max(loads),
                                   agreeing_tokens_min=agree)
        for name, seconds in times.items():
            median = statistics.median(seconds)
            row[f"{name}_tokens_per_s"] = batch * new_tokens / median
            row[f"{name}_runs_s"] = seconds
        row["ratio"] = row["project_tokens_per_s"] / row["transformers_tokens_per_s"]
        rows.append(row)
    return rows


def _agreeing_prefix(a_BN, b_BN) -> int:
    """The smallest, over rows, number of leading tokens on which both outputs agree."""
    same_BN = (a_BN == b_BN).cumprod(axis=1)
    return int(same_BN.sum(axis=1).min())


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    try:
        batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    except ValueError:
        sys.exit(f"error: --batch_sizes={','.join(_BATCH_SIZES.value)} must be comma-separated integers.")
    if min(batch_sizes) < 1 or _ROUNDS.value < 1 or _NEW_TOKENS.value < 1 or _PROMPT_LEN.value < 1:
        sys.exit("error: --batch_sizes, --rounds, --new_tokens and --prompt_len must be positive.")
    from research.optional_imports import MissingDependencyError, require_installed
    try:  # checked without importing: OMP_WAIT_POLICY must be set before torch loads
        for module in ("torch", "transformers"):
            require_installed(module, "experiments.benchmarks.decode_vs_transformers (it times transformers)")
    except MissingDependencyError as error:
        sys.exit(f"error: {error}")
    if _OMP_WAIT.value != "unset":
        if "torch" in sys.modules:
            sys.exit("error: torch was imported before OMP_WAIT_POLICY could be set; run this module directly.")
        os.environ["OMP_WAIT_POLICY"] = _OMP_WAIT.value
    threads = _TORCH_THREADS.value or os.cpu_count()
    rows = compare(batch_sizes, _NEW_TOKENS.value, _PROMPT_LEN.value, _ROUNDS.value, threads)
    import jax
    import torch
    import transformers

    print(f"gpt2-small greedy, float32, prompt {_PROMPT_LEN.value} + {_NEW_TOKENS.value} new tokens, "
          f"{_ROUNDS.value} alternating rounds; jax {jax.__version__} on {jax.devices()[0].platform} "
          f"({os.cpu_count()} cores) vs transformers {transformers.__version__} / torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    for row in rows:
        print(f"batch {row['batch']:>3}: project {row['project_tokens_per_s']:7.1f} tokens/s, transformers "
              f"{row['transformers_tokens_per_s']:7.1f} tokens/s, ratio {row['ratio']:.2f}x  "
              f"(load {row['load_min']:.1f}-{row['load_max']:.1f}; greedy outputs agree on the first "
              f"{row['agreeing_tokens_min']} tokens of every row)")
        print(f"    runs (s): project {' '.join(f'{s:.2f}' for s in row['project_runs_s'])}; "
              f"transformers {' '.join(f'{s:.2f}' for s in row['transformers_runs_s'])}")


if __name__ == "__main__":
    app.run(main)
