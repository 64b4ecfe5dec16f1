"""The planner: every layout of an experiment over a kind of chip, predicted, kept if it fits, ranked.

    plan_layouts(cfg, spec, chips=[6144])  # -> [Candidate, ...] best first

A candidate is a chip count, a mesh (tensor inside the slice or server; fsdp or data parallelism over
the rest of the slice; data parallelism across slices or servers over DCN, or FSDP across them when
a replica does not fit in one slice), a microbatch count and a remat policy. Each is predicted by
trainer/planning/performance.py and kept when the analytic memory model (trainer/planning/memory.py)
says it fits in the chip's memory. Chip counts are powers of two (TPUs: whole slices beyond one pod;
GPUs: whole servers beyond one). No pipeline parallelism: meshtrain has none (README, "Planning").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator

from meshtrain.model.config import REMAT_POLICIES
from meshtrain.sharding.mesh import MESH_AXES
from meshtrain.trainer.config.batch_schedule import tokens_through
from meshtrain.trainer.config.hardware import PRICE_TIERS, EfficiencyFamily, HardwareSpec, efficiency_family
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.planning.experiment_prediction import attention_kind, chip_rates, workload_of
from meshtrain.trainer.planning.memory import memory_on_chips
from meshtrain.trainer.planning.peaks import memory_limit, price_per_chip_hour
from meshtrain.trainer.planning.performance import Layout, StepPrediction, predict_step
from meshtrain.trainer.step.partition import batch_split_problem

MAX_CHIPS = 2**16
MAX_TENSOR = 64  # tensor parallelism beyond this leaves matmuls too thin on any chip listed


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One layout on one chip count, with its prediction, memory and price."""

    chips: int
    num_slices: int
    layout: Layout
    prediction: StepPrediction
    memory_bytes: int
    memory_limit: int | None
    days: float
    chip_hours: float
    dollars: dict[str, float]  # price tier -> USD
    microbatch_rows: int  # train.microbatch_size: sequences per microbatch (the count follows a ramp)
    topology: str | None  # TPUs: the slice's topology name ('v4:12x16x16'); None elsewhere
    memory_source: str = "analytic"  # or "xla": the peak of the AOT-compiled step (meshtrain plan --aot)

    @property
    def overrides(self) -> list[str]:
        """The key=value settings that lay an experiment out as this candidate."""
        mesh = [f"mesh.ici_{a}={self.layout.ici[a]}" for a in MESH_AXES]
        mesh += [f"mesh.dcn_{a}={self.layout.dcn[a]}" for a in MESH_AXES]
        return [
            *mesh,
            "train.microbatches=1",
            f"train.microbatch_size={self.microbatch_rows}",
            f"model.remat={self.layout.remat}",
            f"hardware.chips={self.chips}",
            f"hardware.num_slices={self.num_slices}",
            f"hardware.topology={self.topology or 'null'}",
        ]

    def as_dict(self) -> dict:
        return {
            "chips": self.chips,
            "num_slices": self.num_slices,
            "mesh": self.layout.describe(),
            "microbatches": self.layout.microbatches,
            "remat": self.layout.remat,
            "prediction": self.prediction.as_dict(),
            "memory_bytes_per_chip": self.memory_bytes,
            "memory_limit_bytes": self.memory_limit,
            "memory_source": self.memory_source,
            "days": self.days,
            "chip_hours": self.chip_hours,
            "usd_by_tier": self.dollars,
            "overrides": self.overrides,
        }


def chip_counts(spec: HardwareSpec, most: int = MAX_CHIPS) -> list[int]:
    """The chip counts the planner tries: powers of two up to `most` (on cpu: this machine, 1)."""
    if spec.platform == "cpu":
        return [1]
    return [2**k for k in range(int(math.log2(most)) + 1)]


def slices_for(spec: HardwareSpec, chips: int) -> int | None:
    """How many slices (TPU pods) or servers `chips` spans: the fewest equal parts that each fit in
    one fast (ICI / NVLink) domain, e.g. 6144 v4 chips = 2 slices of 3072; None when none do."""
    domain = spec.ici_chips_max or 1
    for slices in range(math.ceil(chips / domain), chips + 1):
        if chips % slices == 0:
            return slices
    return None


def _divides(n: int, d: int) -> bool:
    return d >= 1 and n % d == 0


def _meshes(cfg: ExperimentConfig, chips: int, slices: int) -> Iterator[tuple[dict, dict]]:
    """(ici, dcn) sizes per axis worth trying on `chips` chips in `slices` slices."""
    per_slice = chips // slices
    model = cfg.model
    for tensor in range(1, min(per_slice, MAX_TENSOR) + 1):
        if not (_divides(per_slice, tensor) and _divides(model.num_heads, tensor) and _divides(model.d_ff, tensor)):
            continue
        rest = per_slice // tensor
        for inside in ("fsdp", "data"):
            if inside == "data" and rest == 1:
                continue
            for across in ("data", "fsdp") if slices > 1 else ("data",):
                ici = dict.fromkeys(MESH_AXES, 1)
                dcn = dict.fromkeys(MESH_AXES, 1)
                ici["tensor"], ici[inside] = tensor, rest
                dcn[across] = slices
                yield ici, dcn


def _microbatch_rows(batch: int, replicas: int) -> Iterator[int]:
    """Sequences per microbatch worth trying, most first: the final batch halved while it still
    divides into the replicas (each microbatch splits evenly over the batch axes)."""
    rows = batch
    while rows >= replicas and rows % replicas == 0:
        yield rows
        if rows % 2:
            return
        rows //= 2


def plan_layouts(
    cfg: ExperimentConfig,
    spec: HardwareSpec,
    chips: Iterable[int],
    family: EfficiencyFamily | None = None,
    remat_policies: Iterable[str] = REMAT_POLICIES,
) -> list[Candidate]:
    """Every layout of `cfg` that fits on each of `chips` chips of `spec`, fastest first per chip
    count, with its predicted step, days, chip-hours and dollars for the experiment's tokens. For
    each mesh and remat policy only the fewest microbatches that fit are kept (more are slower).
    Microbatching is a train.microbatch_size, so the count follows a batch ramp, and every stage of
    the schedule must split over the batch axes as the run itself checks (batch_split_problem)."""
    family = family or efficiency_family(spec)
    work = workload_of(cfg, spec.platform)
    batch = work.batch
    tokens = tokens_through(cfg.train, cfg.data.seq_len, cfg.train.steps)
    peak, bandwidth = chip_rates(cfg, spec)
    limit = memory_limit(spec)[0]
    prices = {tier: price for tier in PRICE_TIERS if (price := price_per_chip_hour(spec, tier)) is not None}
    attention = attention_kind(cfg, spec.platform)
    found = []
    for count in chips:
        slices = slices_for(spec, count)
        if slices is None:
            continue
        topology = topology_for(spec, count // slices) if spec.platform == "tpu" else None
        for ici, dcn in _meshes(cfg, count, slices):
            sizes = {a: ici[a] * dcn[a] for a in MESH_AXES}
            for remat in remat_policies:
                for rows in _microbatch_rows(batch, sizes["data"] * sizes["fsdp"]):
                    layout = Layout(ici=ici, dcn=dcn, microbatches=batch // rows, remat=remat, attention=attention)
                    trial = laid_out(cfg, layout, count, slices, rows)
                    if batch_split_problem(trial, sizes, 1) is not None:  # the run's own check, every stage
                        continue
                    memory = memory_on_chips(trial, count).total
                    if limit is not None and memory > limit:
                        continue
                    prediction = predict_step(work, layout, spec, family, peak, bandwidth)
                    seconds = tokens / prediction.tokens_per_s
                    hours = count * seconds / 3600
                    dollars = {tier: hours * price for tier, price in prices.items()}
                    found.append(
                        Candidate(
                            count,
                            slices,
                            layout,
                            prediction,
                            memory,
                            limit,
                            seconds / 86400,
                            hours,
                            dollars,
                            rows,
                            topology,
                        )
                    )
                    break  # more microbatches only add time
    found.sort(key=lambda c: (c.chips, c.prediction.step_s))
    return found


def laid_out(cfg: ExperimentConfig, layout: Layout, chips: int, slices: int, microbatch_rows: int) -> ExperimentConfig:
    """`cfg` with its mesh, microbatch size, remat policy and chip count set to a candidate's."""
    mesh = dataclasses.replace(
        cfg.mesh,
        **{f"ici_{a}": layout.ici[a] for a in MESH_AXES},
        **{f"dcn_{a}": layout.dcn[a] for a in MESH_AXES},
    )
    train = dataclasses.replace(cfg.train, microbatches=1, microbatch_size=microbatch_rows)
    model = dataclasses.replace(cfg.model, remat=layout.remat)
    hardware = dataclasses.replace(cfg.hardware, chips=chips, num_slices=slices, topology=None)
    return dataclasses.replace(cfg, mesh=mesh, train=train, model=model, hardware=hardware)


def topology_for(spec: HardwareSpec, chips: int) -> str:
    """A TPU topology name for a slice of `chips` chips: the most balanced shape with the kind's
    torus dimensions, smallest first and 1s last ('v4:12x16x16' for 3072 v4 chips, 'v4:2x2x1' for 4,
    'v5e:16x16' for 256)."""
    dims = spec.ici_torus_dims or 2
    best: tuple[int, ...] | None = None
    for shape in _shapes(chips, dims):
        if best is None or max(shape) - min(shape) < max(best) - min(best):
            best = shape
    best = best or (chips,)
    best = tuple(d for d in best if d > 1) + tuple(d for d in best if d == 1)  # libtpu writes 2x2x1
    return f"{spec.tpu_topology_prefix}:{'x'.join(map(str, best))}"


def _shapes(chips: int, dims: int) -> Iterator[tuple[int, ...]]:
    if dims == 1:
        yield (chips,)
        return
    for first in range(1, chips + 1):
        if chips % first == 0:
            for rest in _shapes(chips // first, dims - 1):
                if first <= rest[0]:
                    yield (first, *rest)
