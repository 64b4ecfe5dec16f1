"""Meshes over 8 virtual CPU devices and the logical-axis rules that map the model onto them."""

from __future__ import annotations

import jax
import pytest

from meshtrain.sharding.mesh import MESH_AXES, MeshError, MeshShape, build_mesh
from meshtrain.sharding.rules import check_rules, named_sharding, partition_spec
from meshtrain.trainer.config import load_experiment

# The shipped rules: mesh.rules of configs/base.yaml, their one home.
DEFAULT_RULES = load_experiment(None, []).mesh.rules


def test_the_suite_sees_eight_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "ici,expected",
    [
        ({"data": 8}, {"data": 8}),
        ({"fsdp": -1}, {"fsdp": 8}),
        ({"fsdp": 4, "tensor": 2}, {"fsdp": 4, "tensor": 2}),
        ({"data": 2, "fsdp": 2, "tensor": -1}, {"data": 2, "fsdp": 2, "tensor": 2}),
        ({"fsdp": 2, "sequence": 4}, {"fsdp": 2, "sequence": 4}),
    ],
)
def test_mesh_sizes_and_fill(ici, expected):
    mesh = build_mesh(MeshShape(ici=ici, dcn={}))
    assert dict(mesh.shape) == {axis: expected.get(axis, 1) for axis in MESH_AXES}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize(
    "shape,fragment",
    [
        (MeshShape({"fsdp": 3}, {}), "has 3 devices but 8 are available"),
        (MeshShape({"fsdp": -1, "tensor": 3}, {}), "does not divide the 8"),
        (MeshShape({"fdsp": 2}, {}), "mesh.ici_fdsp: no such mesh axis"),
        (MeshShape({"fsdp": -1, "data": -1}, {}), "at most one may be -1"),
        (MeshShape({"fsdp": 0}, {}), "mesh.ici_fsdp=0"),
    ],
)
def test_bad_meshes_are_named(shape, fragment):
    with pytest.raises(MeshError, match=fragment.replace(".", r"\.")):
        build_mesh(shape)


def test_default_rules_give_fsdp_tensor_and_data_parallelism():
    assert tuple(partition_spec(("batch", "length", "embed"), DEFAULT_RULES)) == (("data", "fsdp"), "sequence", None)
    assert tuple(partition_spec(("layers", "embed", "mlp"), DEFAULT_RULES)) == (None, "fsdp", "tensor")
    assert tuple(partition_spec(("vocab", "embed"), DEFAULT_RULES)) == ("tensor", "fsdp")
    assert tuple(partition_spec(("layers", "embed", "kv_heads", "kv"), DEFAULT_RULES)) == (None, "fsdp", None, None)


def test_indivisible_dimension_names_tensor_dimension_and_axis():
    mesh = build_mesh(MeshShape({"fsdp": 4, "tensor": 2}, {}))
    with pytest.raises(MeshError, match=r"layers\.attn\.query: dimension 2 \(heads, size 3\).*tensor = 2 ways"):
        named_sharding("layers.attn.query", (2, 128, 3, 32), ("layers", "embed", "heads", "kv"), mesh, DEFAULT_RULES)


def test_rules_naming_an_unknown_mesh_axis_are_refused():
    with pytest.raises(MeshError, match="'model'"):
        check_rules((("heads", ("model",)),))
