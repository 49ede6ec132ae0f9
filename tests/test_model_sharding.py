"""Mesh from config and logical-axis resolution."""

import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from jaxgrow import config as config_lib
from jaxgrow.model import layout, sharding


def mesh_cfg(**kw):
    return ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 1, **kw})


def test_mesh_shape_resolution_and_errors():
    assert sharding.resolve_mesh_shape(mesh_cfg(), 8) == (1, 8, 1)
    assert sharding.resolve_mesh_shape(mesh_cfg(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    assert sharding.resolve_mesh_shape(mesh_cfg(data=-1, fsdp=2, tensor=2, dcn_data=2), 8) == (2, 2, 2)
    assert sharding.resolve_mesh_shape(mesh_cfg(data=1, fsdp=2, tensor=2, dcn_data=2), 8) == (2, 2, 2)
    with pytest.raises(sharding.MeshError, match="= 6 but there are 8 devices"):
        sharding.resolve_mesh_shape(mesh_cfg(data=3, fsdp=2), 8)
    with pytest.raises(sharding.MeshError, match="not divisible"):
        sharding.resolve_mesh_shape(mesh_cfg(fsdp=-1, tensor=3), 8)


def test_hybrid_mesh_falls_back_on_devices_without_slices(devices8):
    mesh = sharding.make_mesh(mesh_cfg(data=1, fsdp=2, tensor=2, dcn_data=2), devices8)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_logical_rules_replicate_what_does_not_divide():
    shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.logical_to_spec(("layers", "embed", "q_heads", "head_dim"), (4, 64, 6, 32), shape) == \
        P(None, "fsdp", "tensor", None)
    # one KV head (MQA) cannot be split over tensor=2: replicated
    assert sharding.logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (4, 64, 1, 32), shape) == \
        P(None, "fsdp", None, None)
    assert sharding.logical_to_spec(("batch", "length", "activation_embed"), (8, 16, 64), shape) == \
        P(("data", "fsdp"), None, None)
    # a mesh axis is used at most once per array
    assert sharding.logical_to_spec(("vocab", "mlp"), (8, 8), shape) == P("tensor", None)


def test_every_layout_axis_has_a_rule():
    m = config_lib.model_config()
    for spec in layout.param_specs(m):
        assert all(a in layout.LOGICAL_AXIS_RULES for a in spec.axes)
        assert len(spec.axes) == len(spec.shape) == len(spec.roles)


def test_undivided_dimensions_are_named_and_warned(devices8, caplog):
    import logging  # noqa: PLC0415

    m = config_lib.model_config(vocab_size=512, hidden_size=64, ffn_size=128, num_layers=1, num_heads=3,
                            num_kv_heads=1, head_dim=16)
    dims = sharding.undivided_dims(m, {"data": 1, "fsdp": 2, "tensor": 2})
    assert "layers/attn/q_proj q_heads (size 3) over tensor (size 2)" in dims
    assert any(d.startswith("layers/attn/k_proj kv_heads (size 1)") for d in dims)
    assert not any("embed" in d.split()[1] for d in dims)  # 64 splits over fsdp=2
    mesh = sharding.make_mesh(mesh_cfg(data=1, fsdp=4, tensor=2), devices8)
    with caplog.at_level(logging.WARNING, logger="jaxgrow"):
        sharding.warn_undivided(m, mesh, "stage 0 (x)")
        sharding.warn_undivided(m, mesh, "stage 0 (x)")
    assert len([r for r in caplog.records if "replicated instead" in r.message]) == 1


def test_process_rows_follow_the_sharding(devices8):
    # one process owns every device here: it supplies all rows, in order, whatever the mesh
    mesh = sharding.make_mesh(mesh_cfg(data=2, fsdp=2, tensor=2), devices8)
    assert list(sharding.process_rows(sharding.batch_sharding(mesh), 8)) == list(range(8))
    assert sharding.axes_spanning_processes(mesh) == []
