"""Device meshes with named axes, each split into a fast inner (ICI) and a slow outer (DCN) part.

PaLM 540B's layout reads: inside a pod, fsdp=256 x tensor=12 over ICI; across the two pods,
data=2 over DCN. A MeshShape says exactly that, and `build_mesh` turns it into a jax Mesh whose
device order puts the most talkative axis (tensor) on the nearest chips, using JAX's own mesh
utilities (hybrid meshes for several slices or processes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

# Ordered by increasing communication: the last axis gets the closest devices.
MESH_AXES = ("data", "fsdp", "sequence", "tensor")


class MeshError(ValueError):
    """A mesh shape that cannot be laid over the devices at hand."""


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """Per-axis sizes inside a slice (ici) and across slices (dcn); -1 fills with what is left."""

    ici: dict[str, int]
    dcn: dict[str, int]

    def resolved(self, num_devices: int, num_slices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(ici sizes, dcn sizes) in MESH_AXES order, with each -1 filled; raises MeshError."""
        for part, sizes in (("ici", self.ici), ("dcn", self.dcn)):
            unknown = sorted(set(sizes) - set(MESH_AXES))
            if unknown:
                raise MeshError(f"mesh.{part}_{unknown[0]}: no such mesh axis; axes are {', '.join(MESH_AXES)}")
        if num_devices % num_slices:
            raise MeshError(f"{num_devices} devices do not split into {num_slices} equal slices")
        dcn = _fill("dcn", [self.dcn.get(a, 1) for a in MESH_AXES], num_slices)
        ici = _fill("ici", [self.ici.get(a, 1) for a in MESH_AXES], num_devices // num_slices)
        return tuple(ici), tuple(dcn)


def _fill(part: str, sizes: list[int], total: int) -> list[int]:
    """Replaces one -1 by total / product(others); checks the product equals total."""
    fills = [i for i, s in enumerate(sizes) if s == -1]
    bad = [f"mesh.{part}_{MESH_AXES[i]}={s}" for i, s in enumerate(sizes) if s != -1 and s < 1]
    if bad or len(fills) > 1:
        raise MeshError(
            f"{', '.join(bad) or 'more than one axis is -1'}: each {part} size is a "
            f"positive integer, and at most one may be -1 (fill)"
        )
    known = math.prod(s for s in sizes if s != -1)
    if fills:
        if total % known:
            raise MeshError(
                f"the {part} axes other than mesh.{part}_{MESH_AXES[fills[0]]} take {known} "
                f"devices, which does not divide the {total} available"
            )
        sizes[fills[0]] = total // known
    if math.prod(sizes) != total:
        shown = ", ".join(f"mesh.{part}_{a}={s}" for a, s in zip(MESH_AXES, sizes) if s != 1) or "all 1"
        if part == "dcn":
            raise MeshError(
                f"the dcn mesh ({shown}) spans {math.prod(sizes)} slices, but this run has {total}: DCN axes "
                f"cross TPU slices (on GPUs and CPUs, processes); make them multiply to {total}, or run "
                f"{math.prod(sizes)} slices or processes"
            )
        raise MeshError(
            f"the {part} mesh ({shown}) has {math.prod(sizes)} devices but {total} are "
            f"available: make the sizes multiply to {total}, or set one to -1 to fill"
        )
    return sizes


def build_mesh(shape: MeshShape, devices: Sequence | None = None, num_slices: int | None = None) -> Mesh:
    """The jax Mesh for `shape` over `devices` (default: all of them, across all processes).

    The DCN level is TPU slices where devices span several (slice_index); elsewhere (GPU hosts,
    CPU processes) it is processes, but only when the shape asks for DCN parallelism (a size > 1):
    without it all devices form one ICI mesh, so 2 processes x 4 devices run the same layout as 1 x 8.
    """
    devices = list(jax.devices() if devices is None else devices)
    process_is_granule = False
    if num_slices is None:
        num_slices, process_is_granule = _dcn_granules(shape, devices)
    ici, dcn = shape.resolved(len(devices), num_slices)
    if num_slices == 1:
        grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
    else:
        grid = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, process_is_granule=process_is_granule, allow_split_physical_axes=True
        )
    return Mesh(_hosts_contiguous(np.asarray(grid)), MESH_AXES)


def _hosts_contiguous(grid: np.ndarray) -> np.ndarray:
    """`grid` with each axis's positions reordered so that every process holds consecutive ones.

    JAX's mesh utilities lay an axis over a plane of the torus in some row order: PaLM's fsdp=256 over
    a v4 pod's 16 x 16 (y, z) plane steps along z first, while a host's four chips are 2 x 2 x 1 in
    (x, y, z), so host 0 would hold fsdp positions 0 and 16, and with them rows 0 and 16 of every
    batch: not the one block of rows a process loads. Reordering the positions by the process
    holding each (stable, at the first position of the other axes) walks the plane along y first
    instead: the same plane, its rows traversed in the other order, which on a torus is the same
    ring. Where processes already hold consecutive positions (one host, CPU processes, GPU hosts)
    nothing moves.
    """
    process = np.vectorize(lambda d: d.process_index)(grid)
    for axis in range(grid.ndim):
        first = process[tuple(slice(None) if a == axis else 0 for a in range(grid.ndim))]
        order = np.argsort(first, kind="stable")
        grid, process = np.take(grid, order, axis=axis), np.take(process, order, axis=axis)
    return grid


def _dcn_granules(shape: MeshShape, devices: Sequence) -> tuple[int, bool]:
    """(how many DCN-connected groups the devices form, whether those groups are processes):
    TPU slices when there are several, else processes if the shape asks for DCN parallelism."""
    slices = {getattr(d, "slice_index", None) for d in devices}
    if None not in slices and len(slices) > 1:
        return len(slices), False
    if all(size in (1, -1) for size in shape.dcn.values()):
        return 1, False
    return len({d.process_index for d in devices}), True
