"""When a run does not fit in a chip's memory: what would, found by searching the analytic estimate.

Four changes are tried, each reported with the memory per chip it gives:
- smaller microbatches: the fewest train.microbatches (doubling) while each still splits evenly
  over the batch axes; with a batch ramp, the largest train.microbatch_size instead, so the count
  follows the ramp (one fixed count must split the smallest batch too);
- another split of the same chips: half of one ICI axis moved to the tensor or sequence axis
  (activations are split by those, not by fsdp or data);
- full rematerialization (when not already on);
- more chips (the fewest, in steps the mesh can absorb, by doubling then bisecting: memory per
  chip only falls as the mesh's filling axis grows).
Those that fit come first, the one with the least extra time leading: accumulation adds no FLOPs
(only one more gather of FSDP-split weights per microbatch), a new split adds collectives but no
FLOPs, remat adds the recomputed forward pass (its extra hardware FLOPs are given), and more chips
change the job itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from meshtrain.sharding.mesh import MESH_AXES
from meshtrain.trainer.config.batch_schedule import batch_sizes, largest_microbatch, splits_into_microbatches
from meshtrain.trainer.config.hardware import HardwareSpec
from meshtrain.trainer.config.mesh_shape import mesh_sizes
from meshtrain.trainer.config.schema import ExperimentConfig, TrainConfig
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.planning.flops import hardware_flops_per_token
from meshtrain.trainer.planning.memory import memory_on_chips
from meshtrain.trainer.step.partition import batch_split_problem

_MAX_CHIP_DOUBLINGS = 24  # the "more chips" search gives up beyond chips x 2^24


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One change and what it does: `change` is the override or flag to give."""

    change: str
    fits: bool
    memory_per_chip_bytes: int | None  # None: no figure (nothing to measure, or only XLA would know)
    chips: int | None = None  # for the "more chips" suggestion: how many
    note: str | None = None
    extra_flops_pct: float | None = None  # hardware FLOPs the change adds per step, in % (None: not a per-step cost)

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


def _smaller_microbatches(train: TrainConfig) -> Iterator[tuple[TrainConfig, str]]:
    """(train config, the override) for ever smaller microbatches: train.microbatch_size halved
    with a ramp (so the count follows it), train.microbatches doubled without one."""
    if len(set(batch_sizes(train))) > 1 or train.microbatch_size:
        rows = largest_microbatch(train) // 2
        while rows >= 1:
            yield dataclasses.replace(train, microbatches=1, microbatch_size=rows), f"train.microbatch_size={rows}"
            rows //= 2
        return
    micro = train.microbatches * 2
    while micro <= max(batch_sizes(train)):
        yield dataclasses.replace(train, microbatches=micro), f"train.microbatches={micro}"
        micro *= 2


def fewest_microbatches(cfg: ExperimentConfig, chips: int, limit: int) -> Suggestion | None:
    """The fewest microbatches that fit, or the smallest that still splits every batch of the
    schedule evenly over the batch axes; None when no smaller microbatch does."""
    sizes = mesh_sizes(cfg, chips)
    note = "no extra FLOPs; FSDP-split weights are gathered once more per microbatch"
    best = None
    for train, change in _smaller_microbatches(cfg.train):
        trial = dataclasses.replace(cfg, train=train)
        if not all(splits_into_microbatches(train, s) for s in batch_sizes(train)) or batch_split_problem(
            trial, sizes, 1
        ):
            break
        total = memory_on_chips(trial, chips).total
        best = Suggestion(change, total <= limit, total, note=note, extra_flops_pct=0.0)
        if best.fits:
            break
    return best


def _splits_evenly(cfg: ExperimentConfig, chips: int) -> bool:
    """Whether the tensor axis divides the heads, MLP and vocabulary, the sequence axis the sequence,
    and the batch axes every microbatch (what a new split must keep true to be worth suggesting)."""
    try:
        sizes = mesh_sizes(cfg, chips)
    except ConfigError:
        return False
    tensor, sequence = sizes.get("tensor", 1), sizes.get("sequence", 1)
    model = cfg.model
    if model.num_heads % tensor or model.d_ff % tensor or model.vocab_size % tensor or cfg.data.seq_len % sequence:
        return False
    return batch_split_problem(cfg, sizes, 1) is None


def another_split(cfg: ExperimentConfig, chips: int, limit: int) -> Suggestion | None:
    """Half of one ICI axis moved to the tensor or sequence axis, on the same chips: the split that
    fits with the least memory, or else the one with the least; None when no such split is valid."""
    best = None
    for source in MESH_AXES:
        size = getattr(cfg.mesh, f"ici_{source}")
        if size < 2 or size % 2:
            continue
        for target in ("tensor", "sequence"):
            wanted = getattr(cfg.mesh, f"ici_{target}")
            if target == source or wanted < 1:
                continue
            mesh = dataclasses.replace(cfg.mesh, **{f"ici_{source}": size // 2, f"ici_{target}": wanted * 2})
            trial = dataclasses.replace(cfg, mesh=mesh)
            if not _splits_evenly(trial, chips):
                continue
            total = memory_on_chips(trial, chips).total
            change = f"mesh.ici_{source}={size // 2} mesh.ici_{target}={wanted * 2}"
            found = Suggestion(
                change, total <= limit, total, note="no extra FLOPs; more collectives", extra_flops_pct=0.0
            )
            if best is None or (found.fits, -found.memory_per_chip_bytes) > (best.fits, -best.memory_per_chip_bytes):
                best = found
    return best


def suggestions(cfg: ExperimentConfig, spec: HardwareSpec, chips: int, limit: int) -> list[Suggestion]:
    """What would make the run fit in `limit` bytes per chip (see the module docstring): those that
    fit first, by least extra time; then the rest, nearest to fitting first."""
    found = [fewest_microbatches(cfg, chips, limit), another_split(cfg, chips, limit)]
    if cfg.model.remat != "full":
        remat = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, remat="full"))
        total = memory_on_chips(remat, chips).total
        seq = cfg.data.seq_len
        extra = hardware_flops_per_token(cfg.model, seq, "full") / hardware_flops_per_token(cfg.model, seq) - 1
        found.append(
            Suggestion(
                "model.remat=full",
                total <= limit,
                total,
                note=f"recomputes each block's forward pass in the backward pass: +{100 * extra:.0f}% hardware FLOPs",
                extra_flops_pct=100 * extra,
            )
        )
    found.append(_more_chips_or_why_not(cfg, spec, chips, limit))
    found = [s for s in found if s is not None]
    rank = {id(s): i for i, s in enumerate(found)}  # ties keep the docstring's order
    fitting = sorted(
        (s for s in found if s.fits), key=lambda s: (s.extra_flops_pct is None, s.extra_flops_pct or 0, rank[id(s)])
    )
    rest = sorted(
        (s for s in found if not s.fits), key=lambda s: (s.memory_per_chip_bytes is None, s.memory_per_chip_bytes or 0)
    )
    return fitting + rest


def _more_chips_or_why_not(cfg: ExperimentConfig, spec: HardwareSpec, chips: int, limit: int) -> Suggestion:
    grown = more_chips(cfg, spec, chips, limit)
    if grown is not None:
        return dataclasses.replace(grown, note="the same per-step work on a bigger job")
    if chip_step(cfg, spec, chips) is None:
        return Suggestion(
            "more chips",
            False,
            None,
            note=f"the mesh fixes the chip count at {chips} (no "
            f"mesh.ici_* axis is -1): set one to -1 (e.g. mesh.ici_fsdp=-1) to let it grow with the chips",
        )
    return Suggestion(
        "more chips",
        False,
        None,
        note="more chips do not make it fit: the memory per chip "
        "stops shrinking (what is not split over the mesh, e.g. one row's activations, is "
        "already too large)",
    )
