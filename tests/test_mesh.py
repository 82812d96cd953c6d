"""Meshes: jax.make_mesh over the topology, and a hybrid (multi-slice / multi-host) mesh."""
import jax
import numpy as np
import pytest

from research.sharding import make_hybrid_mesh, make_mesh


def test_make_mesh_uses_every_device_once_with_auto_axes():
    mesh = make_mesh((2, -1, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_hybrid_mesh_within_one_host_and_bad_shapes():
    # This machine is one process (one granule), so the network axis has size 1.
    mesh = make_hybrid_mesh((1, 8, 1), (1, 1, 1))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    with pytest.raises(ValueError, match=r"holds 16 devices but 8"):
        make_hybrid_mesh((1, 8, 1), (2, 1, 1))
    with pytest.raises(ValueError, match="one size per axis"):
        make_hybrid_mesh((8,), (1, 1, 1))
