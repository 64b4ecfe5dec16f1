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
which has published runs gets its ceiling fitted to them, in turn with the family's rates
(calibrate.fit_with_ceilings: the best kind at 1.0, the family's matmul efficiency carrying the
level they share). A kind with a measured ceiling (the GPUs') keeps it.

It prints the fitted values, to be copied into hardware.yaml by hand: this is how the shipped values
were set (BENCHMARKS.md, "Predicted against published"), once per family and kind, never per run.
"""

from __future__ import annotations

from meshtrain.trainer.config.hardware import efficiency_family, efficiency_with
from meshtrain.trainer.planning.calibrate import fit_with_ceilings, mean_squared_log_error, with_ceilings
from meshtrain.trainer.planning.published import PublishedRun, observation, published_runs

RATES = ("matmul_efficiency", "attention_efficiency", "hbm_efficiency")
START = 0.5  # every fitted rate starts here, not at the values it replaces, so the fit is reproducible
SPREADS = tuple(i / 100 for i in range(11))  # straggler_spread tried: 0 to 0.10
OVERLAPS = tuple(i / 10 for i in range(10))  # fsdp_overlap tried: 0 to 0.9


def ceiling_is_free(run: PublishedRun) -> bool:
    """Whether the fit sets this run's kind's matmul ceiling: none measured (absent, or fitted before)."""
    return run.spec.matmul_ceiling is None or run.spec.matmul_ceiling_fitted


def main() -> None:
    runs = [run for run in published_runs() if not run.held_out]
    for name in sorted({run.spec.efficiency_family for run in runs}):
        rows = [run for run in runs if run.spec.efficiency_family == name]
        observations = [observation(run) for run in rows]
        free_kinds = {run.spec.kind for run in rows if ceiling_is_free(run)}
        fits = {}
        for overlap in OVERLAPS:
            for spread in SPREADS:
                start = efficiency_with(
                    efficiency_family(rows[0].spec),
                    {**dict.fromkeys(RATES, START), "fsdp_overlap": overlap, "straggler_spread": spread},
                )
                family, ceilings = fit_with_ceilings(start, observations, free_kinds, RATES)
                loss = mean_squared_log_error(family, with_ceilings(observations, ceilings))
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
