"""Fit each efficiency family of configs/hardware.yaml to the published runs of its chips.

    python3 benchmarks/fit_efficiency_families.py

For each family (tpu, nvidia) the matmul, attention and HBM efficiencies are fitted with
trainer/planning/calibrate.py to the rows of configs/published_runs.yaml whose hardware belongs to
it, leaving out rows marked held_out, with rates capped at 1.0 (no faster than the datasheet) and
starting from 0.5 each. The FSDP overlap and the straggler spread couple with the rates (a slower
step, an exposed all-gather and a longer wait look alike on one row), so they are not left to the
coordinate search: they are tried on a grid, the rates refitted at each point, and the point with
the lowest loss kept. The overlap is a hinge (nothing is exposed until the all-gather outlasts the
share of compute it may hide behind), so a coordinate search would stall on its flat part. It
prints the fitted values, to be copied into hardware.yaml by hand: this is how the shipped values
were set (BENCHMARKS.md, "Predicted against published"), once per family and never per run.
"""

from __future__ import annotations

from meshtrain.trainer.config.hardware import efficiency_family, efficiency_with
from meshtrain.trainer.planning.calibrate import fit_family, mean_squared_log_error
from meshtrain.trainer.planning.published import observation, published_runs

RATES = ("matmul_efficiency", "attention_efficiency", "hbm_efficiency")
START = 0.5  # every fitted rate starts here, not at the values it replaces, so the fit is reproducible
SPREADS = tuple(i / 100 for i in range(11))  # straggler_spread tried: 0 to 0.10
OVERLAPS = tuple(i / 10 for i in range(10))  # fsdp_overlap tried: 0 to 0.9


def main() -> None:
    runs = [run for run in published_runs() if not run.held_out]
    for name in sorted({run.spec.efficiency_family for run in runs}):
        rows = [run for run in runs if run.spec.efficiency_family == name]
        observations = [observation(r) for r in rows]
        fits = {}
        for overlap in OVERLAPS:
            for spread in SPREADS:
                start = efficiency_with(
                    efficiency_family(rows[0].spec),
                    {**dict.fromkeys(RATES, START), "fsdp_overlap": overlap, "straggler_spread": spread},
                )
                fit = fit_family(start, observations, RATES, rounds=6, max_rate=1.0)
                fits[overlap, spread] = (mean_squared_log_error(fit.family, observations), fit)
        (overlap, spread), (loss, fit) = min(fits.items(), key=lambda item: item[1][0])
        moved = ", ".join(f"{field} {before:.3f} -> {after:.3f}" for field, (before, after) in fit.moved.items())
        by_overlap = ", ".join(f"{o:.1f}: {min(fits[o, s][0] for s in SPREADS):.4f}" for o in OVERLAPS)
        print(
            f"{name} ({len(rows)} rows): median error {fit.error_before:.1%} -> {fit.error_after:.1%}; {moved}; "
            f"fsdp_overlap {overlap:.1f}, straggler_spread {spread:.2f} (mean squared log error {loss:.4f}; "
            f"{fits[overlap, 0.0][0]:.4f} with no spread; best loss by fsdp_overlap: {by_overlap})"
        )


if __name__ == "__main__":
    main()
