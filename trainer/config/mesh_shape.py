"""The mesh an experiment asks for, read from its `mesh.*` settings: the one place that does it, for the
run (trainer/step/partition.py builds the jax Mesh from it) and for planning (sizes over chips that
are not here)."""

from __future__ import annotations

from meshtrain.sharding.mesh import MESH_AXES, MeshError, MeshShape
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError


def mesh_shape(cfg: ExperimentConfig) -> MeshShape:
    """cfg.mesh's ICI and DCN sizes per axis (-1: fill with the devices left)."""
    m = cfg.mesh
    return MeshShape(
        ici={a: getattr(m, f"ici_{a}") for a in MESH_AXES}, dcn={a: getattr(m, f"dcn_{a}") for a in MESH_AXES}
    )


def mesh_split(cfg: ExperimentConfig, chips: int) -> tuple[dict[str, int], dict[str, int]]:
    """({axis: size inside a slice}, {axis: size across slices}) for cfg.mesh resolved over `chips`
    chips in hardware.num_slices slices, as the run would build the mesh on them."""
    try:
        ici, dcn = mesh_shape(cfg).resolved(num_devices=chips, num_slices=cfg.hardware.num_slices)
    except MeshError as error:
        raise ConfigError(
            f"{chips} {cfg.hardware.kind} chips in {cfg.hardware.num_slices} slice(s): {error} "
            f"(mesh.* overrides lay the experiment out on other hardware)"
        ) from None
    return dict(zip(MESH_AXES, ici)), dict(zip(MESH_AXES, dcn))


def mesh_sizes(cfg: ExperimentConfig, chips: int) -> dict[str, int]:
    """{axis: devices along it} for cfg.mesh resolved over `chips` chips (ICI size x DCN size per axis)."""
    ici, dcn = mesh_split(cfg, chips)
    return {axis: ici[axis] * dcn[axis] for axis in MESH_AXES}
