"""Meshes: jax.make_mesh over the topology, and a hybrid (multi-slice / multi-host) mesh."""
import jax
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


def test_training_mesh_with_a_network_shape_and_its_description():
    from research.sharding import describe_mesh
    from research.training import partitioning
    hybrid = partitioning.make_training_mesh((2, -1, 1), dcn_shape=(1, 1, 1))
    plain = partitioning.make_training_mesh((2, -1, 1), dcn_shape=())
    assert dict(hybrid.shape) == dict(plain.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    # One process is one granule: the hybrid mesh is the single-host mesh, device for device.
    assert [d.id for d in hybrid.devices.flat] == [d.id for d in plain.devices.flat]
    # What the loop logs about the mesh it built.
    assert describe_mesh(hybrid, (1, 1, 1)) == (
        "hybrid mesh data 2 x fsdp 4 x tensor 1 over 8 devices in 1 process: data 1 x fsdp 1 x tensor 1 across "
        "the network (dcn), data 2 x fsdp 4 x tensor 1 within each process")
    assert describe_mesh(plain, ()) == "mesh data 2 x fsdp 4 x tensor 1 over 8 devices (one slice/host: jax.make_mesh)"


@pytest.mark.parametrize("shape, dcn_shape, message", [
    ((-1, 1, 1), (2, 1, 1), r"^mesh.dcn_shape: dcn_shape \(2, 1, 1\) spans 2 processes but the 8 devices are in 1 process; "
                            r"make its product 1"),
    ((-1, 1, 1), (2, 1), r"^mesh.dcn_shape: dcn_shape \(2, 1\) needs one positive size per axis"),
    ((-1, 1, 1), (0, 1, 1), r"^mesh.dcn_shape: dcn_shape \(0, 1, 1\) needs one positive size per axis"),
    ((1, 8, 1), (2, 1, 1), r"^mesh.dcn_shape: mesh axis data has 1 devices, which do not split into 2"),
    ((3, -1, 1), (1, 1, 1), r"^mesh.shape: mesh shape \(3, -1, 1\) cannot fill 8 devices"),
    # The product is 8, but only -1 means "fill the rest": jax.make_mesh raised numpy's reshape error.
    ((2, -2, -2), None, r"^mesh.shape: mesh shape \(2, -2, -2\) has size\(s\) \[-2, -2\]; each axis needs a "
                        r"positive size, or -1"),
])
def test_training_mesh_refuses_bad_network_shapes_in_one_line(shape, dcn_shape, message):
    from research.models.config import ConfigError
    from research.training import partitioning
    with pytest.raises(ConfigError, match=message) as error:
        partitioning.make_training_mesh(shape, dcn_shape=dcn_shape)
    assert "\n" not in str(error.value)


def test_a_bert_whose_d_model_does_not_split_over_the_tensor_axis_is_one_line():
    """BERT's pooler and MLM transform put d_model on the tensor-parallel "mlp" axis: the check let
    d_model=36 over 8 through (heads, d_ff and vocab split), and placing the params raised JAX's
    IndivisibleError."""
    from research.models import ConfigError, get_config
    from research.sharding import DEFAULT_RULES
    from research.training.partitioning import check_model_fits_mesh, make_training_mesh
    mesh = make_training_mesh((1, 1, 8))
    bert = get_config("bert-test", d_model=36, num_heads=8, head_dim=8)
    with pytest.raises(ConfigError, match=r"model bert-test: d_model=36 does not split over mesh axis tensor of "
                                          r"size 8 \(rule 'mlp' -> 'tensor'"):
        check_model_fits_mesh(bert, mesh, DEFAULT_RULES)
    check_model_fits_mesh(get_config("bert-test", d_model=32, num_heads=8, head_dim=8), mesh, DEFAULT_RULES)


def test_a_scanned_t5_whose_encoder_layers_do_not_split_over_a_layers_rule_is_one_line():
    """With a rules table that lays 'layers' on a mesh axis, a scanned T5's encoder stack is its own
    "layers" dimension: the check read num_layers only, let num_encoder_layers=3 over 2 through,
    and placing the params raised JAX's IndivisibleError after the workdir was claimed."""
    from research.models import ConfigError, get_config
    from research.sharding import DEFAULT_RULES
    from research.training.partitioning import check_model_fits_mesh, make_training_mesh
    mesh = make_training_mesh((4, 2, 1))
    rules = tuple(("layers", "fsdp") if logical == "layers" else (logical, axes) for logical, axes in DEFAULT_RULES)
    t5 = get_config("t5-tiny", num_layers=2, num_encoder_layers=3, scan_layers=True)
    with pytest.raises(ConfigError, match=r"model t5-tiny: num_encoder_layers=3 does not split over mesh axis fsdp"):
        check_model_fits_mesh(t5, mesh, rules)
    check_model_fits_mesh(get_config("t5-tiny", num_layers=2, num_encoder_layers=4, scan_layers=True), mesh, rules)
