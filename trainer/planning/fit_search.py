"""When a run does not fit in a chip's memory: what would, found by searching the analytic estimate.

Three changes are tried, each reported with the memory per chip it gives: more chips (the fewest,
in steps the mesh can absorb, by doubling then bisecting: memory per chip only falls as the mesh's
filling axis grows), full rematerialization (when not already on), and more microbatches (the
fewest, while each still splits evenly over the batch axes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from meshtrain.model import axes
from meshtrain.sharding.mesh import MESH_AXES
from meshtrain.sharding.rules import dimension_axes, split_ways
from meshtrain.trainer.config.batch_schedule import batch_sizes
from meshtrain.trainer.config.hardware import HardwareSpec
from meshtrain.trainer.config.mesh_shape import mesh_sizes
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.planning.memory import memory_on_chips

_MAX_CHIP_DOUBLINGS = 24  # the "more chips" search gives up beyond chips x 2^24


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One change and what it does: `change` is the override or flag to give."""

    change: str
    fits: bool
    memory_per_chip_bytes: int | None  # None: no figure (nothing to measure, or only XLA would know)
    chips: int | None = None  # for the "more chips" suggestion: how many
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The --json object: every field, the note only when there is one."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "note" or v is not None}


def _fits(cfg: ExperimentConfig, chips: int, limit: int) -> tuple[bool, int] | None:
    """(fits, total bytes per chip) on `chips` chips, None when cfg.mesh cannot lay out that many."""
    try:
        total = memory_on_chips(cfg, chips).total
    except ConfigError:
        return None
    return total <= limit, total


def chip_step(cfg: ExperimentConfig, spec: HardwareSpec, chips: int) -> int | None:
    """The smallest chip increment the mesh can absorb: whole hosts in every slice, times the fixed
    ICI sizes when one ICI axis fills (-1); None when the ICI sizes are all fixed."""
    ici = [getattr(cfg.mesh, f"ici_{a}") for a in MESH_AXES]
    if -1 not in ici:
        return None
    fixed = math.prod(s for s in ici if s != -1)
    per_host = min(spec.chips_per_host, max(1, chips // cfg.hardware.num_slices))
    return cfg.hardware.num_slices * math.lcm(fixed, per_host)


def more_chips(cfg: ExperimentConfig, spec: HardwareSpec, chips: int, limit: int) -> Suggestion | None:
    """The fewest chips (a multiple of chip_step, more than `chips`) on which the estimate fits;
    None when the mesh fixes the chip count or even chips x 2^24 does not fit."""
    step = chip_step(cfg, spec, chips)
    if step is None:
        return None
    low = chips // step  # in units of step: at most `chips`, which does not fit
    high, previous = low + 1, None
    for _ in range(_MAX_CHIP_DOUBLINGS):
        result = _fits(cfg, high * step, limit)
        if result is not None and result[0]:
            break
        if result is not None and previous is not None and result[1] > 0.99 * previous:
            return None  # doubling the chips no longer shrinks the memory per chip
        previous = result[1] if result is not None else previous
        low, high = high, high * 2
    else:
        return None
    while high - low > 1:
        middle = (low + high) // 2
        result = _fits(cfg, middle * step, limit)
        if result is not None and result[0]:
            high = middle
        else:
            low = middle
    return Suggestion(f"--chips {high * step}", True, _fits(cfg, high * step, limit)[1], chips=high * step)


def fewest_microbatches(cfg: ExperimentConfig, chips: int, limit: int) -> Suggestion | None:
    """The fewest train.microbatches above the current (doubling) that fits, or the last that still
    splits every batch of the schedule evenly over the batch axes; None when none does."""
    sizes = batch_sizes(cfg.train)
    ways = split_ways(dimension_axes((axes.BATCH,), cfg.mesh.rules)[0], mesh_sizes(cfg, chips))
    micro, best = cfg.train.microbatches * 2, None
    while all(size % micro == 0 and (size // micro) % ways == 0 for size in sizes):
        trial = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, microbatches=micro))
        total = memory_on_chips(trial, chips).total
        best = Suggestion(f"train.microbatches={micro}", total <= limit, total)
        if best.fits:
            break
        micro *= 2
    return best


def suggestions(cfg: ExperimentConfig, spec: HardwareSpec, chips: int, limit: int) -> list[Suggestion]:
    """What would make the run fit in `limit` bytes per chip: more chips, full remat, more microbatches."""
    grown = more_chips(cfg, spec, chips, limit)
    if grown is not None:
        out = [grown]
    elif chip_step(cfg, spec, chips) is None:
        out = [
            Suggestion(
                "more chips",
                False,
                None,
                note=f"the mesh fixes the chip count at {chips} (no "
                f"mesh.ici_* axis is -1): set one to -1 (e.g. mesh.ici_fsdp=-1) to let it grow with the chips",
            )
        ]
    else:
        out = [
            Suggestion(
                "more chips",
                False,
                None,
                note="more chips do not make it fit: the memory per chip "
                "stops shrinking (what is not split over the mesh, e.g. one row's activations, is "
                "already too large)",
            )
        ]
    if cfg.model.remat != "full":
        remat = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, remat="full"))
        total = memory_on_chips(remat, chips).total
        out.append(
            Suggestion(
                "model.remat=full",
                total <= limit,
                total,
                note="recomputes each block's forward pass in the backward pass (more hardware FLOPs)",
            )
        )
    micro = fewest_microbatches(cfg, chips, limit)
    if micro is not None:
        out.append(micro)
    return out
