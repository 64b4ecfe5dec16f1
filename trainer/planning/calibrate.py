"""Fitting the performance model's free efficiencies to step times that were measured.

    fit_family(family, observations)  # -> Fit(family=..., error_before=..., error_after=...)
    fit_with_ceilings(family, observations, free_kinds)  # -> (family, {kind: matmul ceiling})

An observation is a step the model can predict (workload, layout, chip) and the seconds it took.
The fit moves only the family's efficiencies (FREE_FIELDS: how fast the matmuls, the attention
kernel and memory-bound work run, the per-op floor and how much one slice's step varies), never the
chips' datasheet figures, by coordinate search on a log scale minimizing the mean squared log error
of predicted over measured step time. Fewer observations than free fields cannot tell the
efficiencies apart: then one factor scales the rate efficiencies together, keeping the family's own
shares of the step. `meshtrain plan --calibrate RUN` fits them to one run's metrics.jsonl; the same
routine set configs/hardware.yaml's family values against configs/published_runs.yaml.

fit_with_ceilings also fits the matmul ceiling of each kind in `free_kinds` (no TPU shape search is
published, so a TPU kind's ceiling is fitted to its own runs): the family's rates and the kinds'
ceilings in turn, each ceiling moved by the mean log error of its kind's observations, then all of
them divided by the largest, so the best kind sits at 1.0 and the family's matmul efficiency
carries the level they share.

Written here rather than taken from scipy.optimize: meshtrain does not depend on scipy, and a
handful of bounded one-dimensional searches over a cheap model is all this needs.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

from meshtrain.trainer.config.hardware import MAX_RATE_EFFICIENCY, EfficiencyFamily, HardwareSpec, efficiency_with
from meshtrain.trainer.planning.performance import Layout, Workload, predict_step

# The efficiencies a fit may move, with the range each is searched in.
FREE_FIELDS = {
    "matmul_efficiency": (0.05, MAX_RATE_EFFICIENCY),
    "attention_efficiency": (0.05, MAX_RATE_EFFICIENCY),
    "hbm_efficiency": (0.05, MAX_RATE_EFFICIENCY),
    "op_overhead_s": (1e-7, 1e-3),
    "straggler_spread": (1e-4, 0.2),
}


@dataclasses.dataclass(frozen=True)
class Observation:
    """A measured step: what ran, where, and how long it took."""

    work: Workload
    layout: Layout
    spec: HardwareSpec
    peak_flops: float
    memory_bytes_per_s: float
    step_s: float
    label: str = ""

    def predicted_s(self, family: EfficiencyFamily) -> float:
        return predict_step(self.work, self.layout, self.spec, family, self.peak_flops, self.memory_bytes_per_s).step_s


@dataclasses.dataclass(frozen=True)
class Fit:
    family: EfficiencyFamily
    error_before: float  # median |predicted / measured - 1| with the family as it was
    error_after: float
    moved: dict[str, tuple[float, float]]  # field -> (before, after)


def mean_squared_log_error(family: EfficiencyFamily, observations: Sequence[Observation]) -> float:
    return sum(math.log(o.predicted_s(family) / o.step_s) ** 2 for o in observations) / len(observations)


def median_error(family: EfficiencyFamily, observations: Sequence[Observation]) -> float:
    errors = sorted(abs(o.predicted_s(family) / o.step_s - 1) for o in observations)
    middle = len(errors) // 2
    return errors[middle] if len(errors) % 2 else (errors[middle - 1] + errors[middle]) / 2


def _golden(loss, lo: float, hi: float, steps: int) -> float:
    """The x in [lo, hi] minimizing loss(x), by golden-section search (loss assumed unimodal)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(steps):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return (lo + hi) / 2


def _search(
    family: EfficiencyFamily, field: str, observations: Sequence[Observation], steps: int, ranges: dict
) -> EfficiencyFamily:
    """One field searched over its range on a log scale; kept only if it lowers the loss."""
    lo, hi = (math.log(x) for x in ranges[field])
    best = efficiency_with(
        family,
        {
            field: math.exp(
                _golden(
                    lambda x: mean_squared_log_error(efficiency_with(family, {field: math.exp(x)}), observations),
                    lo,
                    hi,
                    steps,
                )
            )
        },
    )
    return best if mean_squared_log_error(best, observations) < mean_squared_log_error(family, observations) else family


_RATES = ("matmul_efficiency", "attention_efficiency", "hbm_efficiency")


def _scaled(family: EfficiencyFamily, fields: Sequence[str], scale: float, ranges: dict) -> EfficiencyFamily:
    changes = {}
    for field in fields:
        if field in _RATES:
            lo, hi = ranges[field]
            changes[field] = min(max(getattr(family, field) * scale, lo), hi)
    return efficiency_with(family, changes)


def _search_scale(
    family: EfficiencyFamily, fields: Sequence[str], observations: Sequence[Observation], steps: int, ranges: dict
) -> EfficiencyFamily:
    """One factor multiplying every rate efficiency in `fields`, searched on a log scale."""
    x = _golden(
        lambda x: mean_squared_log_error(_scaled(family, fields, math.exp(x), ranges), observations),
        math.log(0.1),
        math.log(MAX_RATE_EFFICIENCY),
        steps,
    )
    return _scaled(family, fields, math.exp(x), ranges)


def fit_family(
    family: EfficiencyFamily,
    observations: Sequence[Observation],
    fields: Sequence[str] = tuple(FREE_FIELDS),
    rounds: int = 3,
    steps: int = 24,
    max_rate: float = MAX_RATE_EFFICIENCY,
) -> Fit:
    """`family` with `fields` refitted to the observations (module docstring); rate efficiencies
    stay at or below `max_rate` (1.0: no faster than the datasheet, as hardware.yaml's families)."""
    if not observations:
        raise ValueError("no observations to fit to")
    unknown = [f for f in fields if f not in FREE_FIELDS]
    if unknown:
        raise ValueError(f"cannot fit {unknown[0]!r}: free fields are {', '.join(FREE_FIELDS)}")
    ranges = {f: (lo, min(hi, max_rate) if f in _RATES else hi) for f, (lo, hi) in FREE_FIELDS.items()}
    fitted = family
    if len(observations) < len(fields):
        # Too few steps to tell the efficiencies apart: scale the family's rates together, keeping
        # the shares of the step the family's own values give.
        fitted = _search_scale(family, fields, observations, steps, ranges)
    else:
        for _ in range(rounds):
            for field in fields:
                fitted = _search(fitted, field, observations, steps, ranges)
    return Fit(
        family=fitted,
        error_before=median_error(family, observations),
        error_after=median_error(fitted, observations),
        moved={f: (getattr(family, f), getattr(fitted, f)) for f in fields},
    )


def with_ceilings(observations: Sequence[Observation], ceilings: Mapping[str, float]) -> list[Observation]:
    """The observations, those of each kind named in `ceilings` on chips with that matmul ceiling."""
    return [
        dataclasses.replace(o, spec=dataclasses.replace(o.spec, matmul_ceiling=ceilings[o.spec.kind]))
        if o.spec.kind in ceilings
        else o
        for o in observations
    ]


def fit_with_ceilings(
    family: EfficiencyFamily,
    observations: Sequence[Observation],
    free_kinds: Iterable[str],
    fields: Sequence[str] = _RATES,
    turns: int = 4,
    max_rate: float = 1.0,
) -> tuple[EfficiencyFamily, dict[str, float]]:
    """`fields` of the family and the matmul ceilings of `free_kinds` fitted in turn (module
    docstring): (the family, {kind: ceiling}, the best kind at 1.0). With no free kind among the
    observations it is fit_family alone."""
    free = set(free_kinds)
    ceilings = {o.spec.kind: 1.0 for o in observations if o.spec.kind in free}
    seen = with_ceilings(observations, ceilings)
    family = fit_family(family, seen, fields, rounds=6, max_rate=max_rate).family
    for _ in range(turns if ceilings else 0):
        logs: dict[str, list[float]] = {kind: [] for kind in ceilings}
        for o in seen:
            if o.spec.kind in ceilings:
                logs[o.spec.kind].append(math.log(o.predicted_s(family) / o.step_s))
        moved = {kind: ceilings[kind] * math.exp(statistics.fmean(v)) for kind, v in logs.items()}
        best = max(moved.values())
        ceilings = {kind: value / best for kind, value in moved.items()}
        seen = with_ceilings(observations, ceilings)
        # The family's matmul rate takes over the best kind's level, so each prediction stays put.
        family = efficiency_with(family, {"matmul_efficiency": min(max_rate, family.matmul_efficiency * best)})
        family = fit_family(family, seen, fields, rounds=2, max_rate=max_rate).family
    return family, ceilings
