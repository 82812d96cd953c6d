"""Device meshes and the logical-axis rules that map model axes onto them.

Every parameter and key activation in research.models names its axes logically
("embed", "heads", ...). A rules table maps each logical name to a physical mesh axis
(data, fsdp, tensor) or to None (replicated). Rules live in the experiment config so a
user can re-shard a model without touching it.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Re-exported: the names and rules live in a module of their own that imports no jax (sharding_rules).
from research.sharding_rules import ACTIVATION_AXES, DEFAULT_RULES, MESH_AXES, PARAM_AXES, Rules  # noqa: E402,F401


def resolve_mesh_shape(shape: Sequence[int], num_devices: int,
                       axis_names: Sequence[str] = MESH_AXES) -> tuple[int, ...]:
    """`shape` with its (at most one) -1 filled so that the mesh holds `num_devices` devices."""
    shape = list(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {tuple(shape)} needs one size per axis {tuple(axis_names)}.")
    bad = [s for s in shape if s != -1 and (not isinstance(s, (int, np.integer)) or s < 1)]
    if bad:  # (2, -2, -2) has the right product but no meaning; jax.make_mesh then raised numpy's words
        raise ValueError(f"mesh shape {tuple(shape)} has size(s) {bad}; each axis needs a positive size, "
                         "or -1 for one axis to fill the rest.")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} has more than one -1; at most one axis can fill the rest.")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if known <= 0 or num_devices % known:
            raise ValueError(f"mesh shape {tuple(shape)} cannot fill {num_devices} devices.")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(
            f"mesh shape {tuple(shape)} holds {int(np.prod(shape))} devices but {num_devices} are "
            "available; make the product equal the device count or use -1 for one axis."
        )
    return tuple(shape)


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh of `shape` (one -1 entry fills the rest) over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices), axis_names)
    axis_types = (jax.sharding.AxisType.Auto,) * len(axis_names)
    # jax.make_mesh lays the axes out along the physical topology (TPU torus, NVLink
    # islands), so that e.g. the tensor axis stays within the fastest links.
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types, devices=devices)


def network_granules(devices: Sequence[jax.Device]) -> tuple[str, list[list[jax.Device]]]:
    """The devices grouped by what the slow data-center network (DCN) separates: TPU slices
    (slice_index) or, on GPU and CPU, processes (one per host). Returns the granule kind
    ("slice" or "process") and the groups, ordered by index."""
    # Only TPU slice indices mark the network: CPU devices of a multi-process run also carry a
    # slice_index, the same (0) in every process.
    on_tpu_slices = devices[0].platform == "tpu" and hasattr(devices[0], "slice_index")
    kind, attr = ("slice", "slice_index") if on_tpu_slices else ("process", "process_index")
    groups: dict[int, list[jax.Device]] = {}
    for device in devices:
        groups.setdefault(getattr(device, attr), []).append(device)
    return kind, [groups[key] for key in sorted(groups)]


def _plural(kind: str, count: int = 2) -> str:
    return kind if count == 1 else {"process": "processes"}.get(kind, kind + "s")


def make_hybrid_mesh(ici_shape: Sequence[int], dcn_shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES,
                     devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over several slices (TPU) or hosts (GPU): axis i has ici_shape[i] * dcn_shape[i]
    devices, dcn_shape[i] of them across the slow data-center network. Put the data axis
    across it (dcn_shape=(slices, 1, 1)): data parallelism only all-reduces gradients once
    per step, while fsdp / tensor collectives stay on the fast links within a slice / host."""
    devices = list(jax.devices() if devices is None else devices)
    ici_shape, dcn_shape = tuple(ici_shape), tuple(dcn_shape)
    if not len(ici_shape) == len(dcn_shape) == len(axis_names):
        raise ValueError(f"ici_shape {ici_shape} and dcn_shape {dcn_shape} need one size per axis "
                         f"{tuple(axis_names)}.")
    total = int(np.prod(ici_shape)) * int(np.prod(dcn_shape))
    if total != len(devices):
        raise ValueError(f"ici_shape {ici_shape} x dcn_shape {dcn_shape} holds {total} devices but {len(devices)} "
                         "are available; make the products equal the device count.")
    kind, granules = network_granules(devices)
    if int(np.prod(dcn_shape)) != len(granules):
        raise ValueError(f"dcn_shape {dcn_shape} spans {int(np.prod(dcn_shape))} {_plural(kind)} but the "
                         f"{len(devices)} devices are in {len(granules)} {_plural(kind, len(granules))}; make its "
                         f"product {len(granules)}.")
    sizes = sorted({len(g) for g in granules})
    if len(sizes) > 1:
        raise ValueError(f"the {_plural(kind)} hold different numbers of devices {sizes}; a hybrid mesh needs "
                         "equal ones.")
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=kind == "process")
    return Mesh(grid, tuple(axis_names), axis_types=(jax.sharding.AxisType.Auto,) * len(axis_names))


def make_mesh_across_network(shape: Sequence[int], dcn_shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES,
                             devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of global `shape` (one -1 fills the rest) with dcn_shape[i] of axis i's size
    across the slow network and shape[i] / dcn_shape[i] within each slice / host."""
    devices = list(jax.devices() if devices is None else devices)
    dcn_shape = tuple(dcn_shape)
    if len(dcn_shape) != len(axis_names) or any(not isinstance(n, (int, np.integer)) or n < 1 for n in dcn_shape):
        raise ValueError(f"dcn_shape {dcn_shape} needs one positive size per axis {tuple(axis_names)}, "
                         "e.g. (2, 1, 1) for data parallelism across 2 slices or hosts.")
    shape = resolve_mesh_shape(shape, len(devices), axis_names)
    for name, size, across in zip(axis_names, shape, dcn_shape):
        if size % across:
            raise ValueError(f"mesh axis {name} has {size} devices, which do not split into {across} across the "
                             f"network (dcn_shape {dcn_shape}); make shape[{name}] a multiple of {across}.")
    ici_shape = tuple(size // across for size, across in zip(shape, dcn_shape))
    return make_hybrid_mesh(ici_shape, dcn_shape, axis_names, devices)


def describe_mesh(mesh: Mesh, dcn_shape: Sequence[int] | None = None) -> str:
    """One line saying which mesh was built: its axes, devices, and what crosses the network."""
    axes = " x ".join(f"{name} {size}" for name, size in mesh.shape.items())
    if not dcn_shape:
        return f"mesh {axes} over {mesh.size} devices (one slice/host: jax.make_mesh)"
    kind, granules = network_granules(list(mesh.devices.flat))
    across = " x ".join(f"{name} {n}" for name, n in zip(mesh.axis_names, dcn_shape))
    within = " x ".join(f"{name} {size // n}" for (name, size), n in zip(mesh.shape.items(), dcn_shape))
    return (f"hybrid mesh {axes} over {mesh.size} devices in {len(granules)} {_plural(kind, len(granules))}: "
            f"{across} across the network (dcn), {within} within each {kind}")


def logical_to_sharding(logical_specs, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Map a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), mesh_specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def unmapped_logical_axes(logical_specs, rules: Rules = DEFAULT_RULES) -> set[str]:
    """Logical axis names in `logical_specs` that no rule mentions (should be empty)."""
    ruled = {name for name, _ in rules}
    seen: set[str] = set()
    for spec in jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)):
        seen.update(axis for axis in spec if axis is not None)
    return seen - ruled
