"""The model's view of the mesh while a step is traced: the sharding side of model.axes.Layout.

The model asks for activations along logical axes and for its MLP output projection; a MeshLayout
answers with sharding constraints from the rules and, under tensor parallelism, the ring collective
matmul of sharding/collectives.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding

from meshtrain.sharding.collectives import ring_matmul_applicable, ring_reduce_scatter_matmul
from meshtrain.sharding.rules import partition_spec, split_ways


class MeshLayout:
    """The model's view of the mesh while a step is traced (an axes.Layout)."""

    def __init__(self, mesh: Mesh, rules, collective_matmul: bool):
        self.mesh, self.rules, self.collective_matmul = mesh, rules, collective_matmul

    def sharding(self, names: Sequence[str]) -> NamedSharding:
        return NamedSharding(self.mesh, partition_spec(names, self.rules))

    def constrain(self, x: jax.Array, names: tuple[str, ...]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, self.sharding(names))

    def mlp_output(self, h: jax.Array, kernel: jax.Array) -> jax.Array | None:
        if self.collective_matmul and ring_matmul_applicable(h.shape, self.mesh, self.rules):
            return ring_reduce_scatter_matmul(h, kernel, mesh=self.mesh, rules=self.rules)
        return None

    @property
    def platform(self) -> str:
        return self.mesh.devices.flat[0].platform

    def split_ways(self, name: str) -> int:
        return split_ways(partition_spec((name,), self.rules)[0], self.mesh.shape)

    def per_shard(self, fn, args: tuple, in_names: tuple, out_names: tuple):
        specs = tuple(partition_spec(names, self.rules) for names in in_names)
        return jax.shard_map(
            fn, mesh=self.mesh, in_specs=specs, out_specs=partition_spec(out_names, self.rules), check_vma=False
        )(*args)
