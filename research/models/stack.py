"""Run a stack of identical blocks, unrolled or with nn.scan, with optional remat.

A block is a module with attributes (config, deterministic) and the signature
`block(x, cache, *shared) -> (x, cache)`. Unrolled, its params live under
`{name}_0 ... {name}_{L-1}` and `cache` is a list; scanned, params and cache are stacked
on a leading "layers" axis under `{name}`. research/models/layout.py converts between
the two parameter layouts, and both compute the same function.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from research.models.config import ModelConfig
from research.models.layers import remat_policy


def run_stack(block_cls: type[nn.Module], config: ModelConfig, num_layers: int, x: jax.Array,
              cache: Any, *shared: Any, deterministic: bool, name: str) -> tuple[jax.Array, Any]:
    """Apply `num_layers` blocks to x; must be called inside a compact method."""
    block = block_cls
    if config.remat != "none":
        # Under scan, XLA cannot CSE across iterations, so prevent_cse is not needed there.
        block = nn.remat(block, policy=remat_policy(config.remat), prevent_cse=not config.scan_layers)
    if config.scan_layers:
        scanned = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0,) + (nn.broadcast,) * len(shared),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return scanned(config, deterministic=deterministic, name=name)(x, cache, *shared)
    new_caches: list[Any] = []
    for i in range(num_layers):
        layer_cache = None if cache is None else cache[i]
        x, layer_cache = block(config, deterministic=deterministic, name=f"{name}_{i}")(x, layer_cache, *shared)
        new_caches.append(layer_cache)
    return x, (None if cache is None else new_caches)


def stack_caches(layer_caches: Sequence[Any]) -> Any:
    """List of per-layer caches -> one cache with a leading layers axis (scan layout)."""
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *layer_caches)
