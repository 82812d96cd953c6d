"""Convert parameter trees between the unrolled (layers_0..layers_{L-1}) and scanned
(one "layers" entry stacked on a leading axis) layouts of research/models/stack.py."""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax.core import meta

_LAYER_KEY = re.compile(r"^(?P<name>.+)_(?P<index>\d+)$")


def unbox(params: Any) -> Any:
    """Strip flax's LogicallyPartitioned boxes, leaving plain arrays."""
    return meta.unbox(params)


def stack_layers(tree: dict, name: str) -> dict:
    """{name_0: p0, name_1: p1, ...} -> {name: stack([p0, p1, ...])}, recursively."""
    out: dict = {}
    indexed: dict[int, Any] = {}
    for key, value in tree.items():
        match = _LAYER_KEY.match(key)
        if match and match.group("name") == name:
            indexed[int(match.group("index"))] = value
        else:
            out[key] = stack_layers(value, name) if isinstance(value, dict) else value
    if indexed:
        out[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *[indexed[i] for i in range(len(indexed))])
    return out


def unstack_layers(tree: dict, name: str) -> dict:
    """Inverse of `stack_layers`."""
    out: dict = {}
    for key, value in tree.items():
        if key == name:
            num_layers = jax.tree.leaves(value)[0].shape[0]
            for i in range(num_layers):
                out[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
        else:
            out[key] = unstack_layers(value, name) if isinstance(value, dict) else value
    return out
