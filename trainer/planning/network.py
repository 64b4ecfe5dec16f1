"""How long a ring collective takes over the links a mesh axis spans, from configs/hardware.yaml's
figures: the network arithmetic of the performance model (trainer/planning/performance.py).

    gather_seconds(spec, family, ici, dcn, "fsdp", full_bytes)  # -> {"ici": s, "dcn": s}
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from meshtrain.sharding.mesh import MESH_AXES
from meshtrain.trainer.config.hardware import EfficiencyFamily, HardwareSpec
from meshtrain.trainer.errors import ConfigError


class NoNetworkFigure(ConfigError):
    """A layout whose collectives cross a network the kind gives no bandwidth for (a cpu 'chip' is a
    whole machine, with no figure for the network between machines): its step cannot be predicted."""

    def __init__(self, spec: HardwareSpec, field: str, axis: str):
        super().__init__(
            f"{axis} on {spec.kind}: {spec.kind} has no {field} in configs/hardware.yaml, so the collectives "
            f"of that axis, and the step, cannot be predicted"
        )


def ring_bandwidth(
    spec: HardwareSpec, family: EfficiencyFamily, ici: Mapping[str, int], axis: str
) -> tuple[float, float]:
    """(ICI, DCN) bytes/s one chip moves in a ring collective over `axis`, given the mesh's sizes
    inside a slice or server (`ici`).

    On a TPU torus an axis covering k of its D dimensions runs bidirectional rings over 2k links;
    k is its share of the slice's dimensions by log size (fsdp 256 x tensor 12 on a 12x16x16 v4
    slice: fsdp covers ~2.1 dimensions, tensor ~0.9). On a switch (NVSwitch) an axis inside the
    server gets the GPU's full NVLink bandwidth. Across slices or servers: the chip's DCN share."""
    link = spec.ici_link_bandwidth_bytes_per_s or 0.0
    inside = 0.0
    if ici.get(axis, 1) > 1 and link:
        if spec.ici_torus_dims:
            slice_chips = math.prod(ici.get(a, 1) for a in MESH_AXES)
            dims = spec.ici_torus_dims * math.log(ici[axis]) / math.log(max(slice_chips, 2))
            inside = 2.0 * max(dims, 0.5) * link * family.ici_efficiency
        else:
            inside = link * family.ici_efficiency
    across = (spec.dcn_bandwidth_bytes_per_s or 0.0) * family.dcn_efficiency
    return inside, across


def gather_seconds(
    spec: HardwareSpec,
    family: EfficiencyFamily,
    ici: Mapping[str, int],
    dcn: Mapping[str, int],
    axis: str,
    full_bytes: float,
) -> dict[str, float]:
    """Seconds, by network, of a ring all-gather (or reduce-scatter: the same bytes) over `axis` of
    a tensor of `full_bytes` per chip once gathered: hierarchical, DCN first on the slice's share.
    A network the kind has no figure for is a NoNetworkFigure, not an infinite step."""
    inside, across = ici.get(axis, 1), dcn.get(axis, 1)
    ici_bw, dcn_bw = ring_bandwidth(spec, family, ici, axis)
    out = {"ici": 0.0, "dcn": 0.0}
    if inside > 1:
        if not ici_bw:
            raise NoNetworkFigure(spec, "ici_link_bandwidth_bytes_per_s", f"mesh.ici_{axis}={inside}")
        out["ici"] = full_bytes * (inside - 1) / inside / ici_bw
    if across > 1:
        if not dcn_bw:
            raise NoNetworkFigure(spec, "dcn_bandwidth_bytes_per_s", f"mesh.dcn_{axis}={across}")
        out["dcn"] = full_bytes / inside * (across - 1) / across / dcn_bw
    return out
