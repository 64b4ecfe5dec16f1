"""Fit each efficiency family of configs/hardware.yaml to the published runs of its chips.

    python3 benchmarks/fit_efficiency_families.py

For each family (tpu, nvidia) the matmul, attention and HBM efficiencies are fitted with
trainer/planning/calibrate.py to the rows of configs/published_runs.yaml whose hardware belongs to
it, leaving out rows marked held_out, with rates capped at 1.0 (no faster than the datasheet) and
starting from 0.5 each. The FSDP overlap and the straggler spread couple with the rates (a slower
step, an exposed all-gather and a longer wait look alike on one row), so they are not left to the
coordinate search: they are tried on a grid, the rates refitted at each point, and the point with
the lowest loss kept. The overlap is a hinge (nothing is exposed until the all-gather outlasts the
share of compute it may hide behind), so a coordinate search would stall on its flat part.

A kind whose matmul ceiling nobody has measured (no shape search is published for any TPU) but
which has published runs gets its ceiling fitted to them: the family's rates and the kinds'
ceilings are fitted in turn, each kind's ceiling moved by the mean log error of its own rows, then
all of them divided by the largest, so the best kind sits at 1.0 and the family's matmul efficiency
carries the level they share. A kind with a measured ceiling (the GPUs') keeps it.

It prints the fitted values, to be copied into hardware.yaml by hand: this is how the shipped values
were set (BENCHMARKS.md, "Predicted against published"), once per family and kind, never per run.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

from meshtrain.trainer.config.hardware import EfficiencyFamily, efficiency_family, efficiency_with
from meshtrain.trainer.planning.calibrate import Observation, fit_family, mean_squared_log_error
from meshtrain.trainer.planning.published import PublishedRun, observation, published_runs

RATES = ("matmul_efficiency", "attention_efficiency", "hbm_efficiency")
START = 0.5  # every fitted rate starts here, not at the values it replaces, so the fit is reproducible
SPREADS = tuple(i / 100 for i in range(11))  # straggler_spread tried: 0 to 0.10
OVERLAPS = tuple(i / 10 for i in range(10))  # fsdp_overlap tried: 0 to 0.9
TURNS = 4  # rates, then ceilings, this many times: the ceilings move by less than 0.5% on the last turn


def ceiling_is_free(run: PublishedRun) -> bool:
    """Whether the fit sets this run's kind's matmul ceiling: none measured (absent, or fitted before)."""
    return run.spec.matmul_ceiling is None or run.spec.matmul_ceiling_fitted


def with_ceilings(rows: Sequence[PublishedRun], ceilings: Mapping[str, float]) -> list[Observation]:
    """The rows as observations, each kind named in `ceilings` given that matmul ceiling."""
    out = []
    for run in rows:
        seen = observation(run)
        if run.spec.kind in ceilings:
            spec = dataclasses.replace(run.spec, matmul_ceiling=ceilings[run.spec.kind])
            seen = dataclasses.replace(seen, spec=spec)
        out.append(seen)
    return out


def fit_point(start: EfficiencyFamily, rows: Sequence[PublishedRun]) -> tuple[EfficiencyFamily, dict[str, float]]:
    """The family's rates and the free kinds' ceilings fitted in turn (module docstring)."""
    ceilings = {run.spec.kind: 1.0 for run in rows if ceiling_is_free(run)}
    family = start
    for turn in range(TURNS if ceilings else 1):
        observations = with_ceilings(rows, ceilings)
        family = fit_family(family, observations, RATES, rounds=6 if turn == 0 else 2, max_rate=1.0).family
        if not ceilings:
            break
        logs: dict[str, list[float]] = {kind: [] for kind in ceilings}
        for run, seen in zip(rows, observations, strict=True):
            if run.spec.kind in ceilings:
                logs[run.spec.kind].append(math.log(seen.predicted_s(family) / seen.step_s))
        moved = {kind: ceilings[kind] * math.exp(statistics.mean(values)) for kind, values in logs.items()}
        best = max(moved.values())
        ceilings = {kind: value / best for kind, value in moved.items()}
        # The family's matmul rate takes over the best kind's level, so each prediction stays put.
        family = efficiency_with(family, {"matmul_efficiency": min(1.0, family.matmul_efficiency * best)})
    if ceilings:
        family = fit_family(family, with_ceilings(rows, ceilings), RATES, rounds=2, max_rate=1.0).family
    return family, ceilings


def main() -> None:
    runs = [run for run in published_runs() if not run.held_out]
    for name in sorted({run.spec.efficiency_family for run in runs}):
        rows = [run for run in runs if run.spec.efficiency_family == name]
        fits = {}
        for overlap in OVERLAPS:
            for spread in SPREADS:
                start = efficiency_with(
                    efficiency_family(rows[0].spec),
                    {**dict.fromkeys(RATES, START), "fsdp_overlap": overlap, "straggler_spread": spread},
                )
                family, ceilings = fit_point(start, rows)
                loss = mean_squared_log_error(family, with_ceilings(rows, ceilings))
                fits[overlap, spread] = (loss, family, ceilings)
        (overlap, spread), (loss, family, ceilings) = min(fits.items(), key=lambda item: item[1][0])
        rates = ", ".join(f"{field} {getattr(family, field):.3f}" for field in RATES)
        kinds = ", ".join(
            f"{kind} {value:.3f} ({sum(run.spec.kind == kind for run in rows)} rows)"
            for kind, value in sorted(ceilings.items())
        )
        by_overlap = ", ".join(f"{o:.1f}: {min(fits[o, s][0] for s in SPREADS):.4f}" for o in OVERLAPS)
        print(
            f"{name} ({len(rows)} rows): {rates}; fsdp_overlap {overlap:.1f}, straggler_spread {spread:.2f} "
            f"(mean squared log error {loss:.4f}; {fits[overlap, 0.0][0]:.4f} with no spread; best loss by "
            f"fsdp_overlap: {by_overlap})" + (f"; fitted matmul_ceiling: {kinds}" if ceilings else "")
        )


if __name__ == "__main__":
    main()
