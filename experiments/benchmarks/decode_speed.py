"""Greedy decoding speed: `python -m experiments.benchmarks.decode_speed [--preset=gpt2-small --batch_sizes=1,8]`.

Random weights (speed does not depend on their values; nothing is downloaded). Each batch
size is compiled and run once untimed, then timed over --repeats runs with
block_until_ready; tokens/s = batch * new_tokens / median seconds. No stop tokens, so
every run generates exactly --new_tokens tokens per row.
"""
from __future__ import annotations

import statistics
import sys
import time
from typing import Sequence

from absl import app, flags

_PRESET = flags.DEFINE_string("preset", "gpt2-small", "Model preset (research.models.preset_names()).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Prompt length (tokens) of every row.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per batch size (the median is reported).")


def measure_decode_speed(preset: str, batch_sizes: Sequence[int], new_tokens: int = 128, prompt_len: int = 16,
                         repeats: int = 3, seed: int = 0) -> list[dict[str, float]]:
    """Greedy-generation throughput of `preset` with random weights -> one row per batch size.

    Row keys: batch, new_tokens, seconds (median over `repeats`, compile excluded),
    tokens_per_s (generated tokens across the batch per second), ms_per_step.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from research.decoding import generate
    from research.models import build_model, get_config

    config = get_config(preset)
    model = build_model(config)
    params = jax.jit(lambda rng: model.init(rng, jnp.ones((1, 1), jnp.int32))["params"])(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batch_sizes:
        prompts = rng.integers(1, config.vocab_size, size=(batch, prompt_len)).tolist()
        run = lambda: jax.block_until_ready(generate(model, params, prompts, max_new_tokens=new_tokens))
        run()  # compile (and warm up) outside the timed runs
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = run()
            seconds.append(time.perf_counter() - start)
        assert int(out.lengths_B.min()) == new_tokens, "a row stopped early; the timing would undercount"
        median = statistics.median(seconds)
        rows.append(dict(batch=batch, new_tokens=new_tokens, seconds=median, tokens_per_s=batch * new_tokens / median,
                         ms_per_step=1e3 * median / new_tokens))
    return rows


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    try:
        batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    except ValueError:
        sys.exit(f"error: --batch_sizes={','.join(_BATCH_SIZES.value)} must be comma-separated integers.")
    from research.models.config import ConfigError

    try:
        rows = measure_decode_speed(_PRESET.value, batch_sizes, _NEW_TOKENS.value, _PROMPT_LEN.value, _REPEATS.value)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    import jax

    print(f"{_PRESET.value} greedy, prompt {_PROMPT_LEN.value} + {_NEW_TOKENS.value} new tokens on "
          f"{jax.devices()[0].platform} ({jax.device_count()} device(s))")
    for row in rows:
        print(f"batch {row['batch']:>3}: {row['tokens_per_s']:8.1f} tokens/s  {row['ms_per_step']:7.2f} ms/step  "
              f"({row['seconds']:.2f} s per run)")


if __name__ == "__main__":
    app.run(main)
