"""Logical axis rules: the table that says which mesh axes each of the model's axis names spans.

The model names its axes (batch, embed, heads, ...) and never a mesh; the table (`mesh.rules` in
configs/base.yaml, the one copy of the defaults) is the one place where names meet mesh axes, and
this module the one place that reads it: partition_spec applies Flax's first-claim-wins rule, and
spec_axes / split_ways say what one entry of the result splits over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from meshtrain.sharding.mesh import MESH_AXES, MeshError


def check_rules(rules: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Raises MeshError naming any mesh axis in the rules that the mesh does not have."""
    for logical, mesh_axes in rules:
        for axis in mesh_axes:
            if axis not in MESH_AXES:
                raise MeshError(f"rule {logical!r} -> {axis!r}: no such mesh axis; axes are {', '.join(MESH_AXES)}")


def partition_spec(names: Sequence[str], rules) -> PartitionSpec:
    """The PartitionSpec of an array whose dimensions carry logical `names`."""
    flax_rules = [(logical, tuple(mesh_axes) or None) for logical, mesh_axes in rules]
    return nn.logical_to_mesh_axes(tuple(names), flax_rules)


def spec_axes(entry) -> tuple[str, ...]:
    """The mesh axes one PartitionSpec entry (None, a name, or a tuple of names) splits over."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def split_ways(entry, mesh_sizes: Mapping[str, int]) -> int:
    """Into how many parts one PartitionSpec entry splits its dimension, given {axis: size}
    (a Mesh's `.shape`, or sizes planned for a mesh that does not exist yet)."""
    return math.prod(int(mesh_sizes.get(axis, 1)) for axis in spec_axes(entry))


def dimension_axes(names: Sequence[str], rules) -> list[tuple[str, ...]]:
    """For each dimension named `names`, the mesh axes it splits over under `rules`."""
    return [spec_axes(entry) for entry in partition_spec(names, rules)]


def named_sharding(what: str, shape: Sequence[int], names: Sequence[str], mesh: Mesh, rules) -> NamedSharding:
    """The NamedSharding of an array, after checking every split dimension divides evenly.

    `what` names the array in the error (a parameter path, or 'batch'), so a bad layout says which
    tensor, which dimension and which mesh axis disagree before anything is compiled.
    """
    spec = partition_spec(names, rules)
    for dim, (size, entry) in enumerate(zip(shape, spec)):
        axes, ways = spec_axes(entry), split_ways(entry, mesh.shape)
        if size % ways:
            raise MeshError(
                f"{what}: dimension {dim} ({names[dim]}, size {size}) is split over mesh "
                f"axes {' x '.join(axes)} = {ways} ways, which does not divide it"
            )
    return NamedSharding(mesh, spec)
