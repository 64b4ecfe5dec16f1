"""Fit each efficiency family of configs/hardware.yaml to the published runs of its chips.

    python3 benchmarks/fit_efficiency_families.py

For each family (tpu, nvidia) the matmul, attention and HBM efficiencies are fitted with
trainer/planning/calibrate.py to the rows of configs/published_runs.yaml whose hardware belongs to
it, leaving out rows marked held_out, with rates capped at 1.0 (no faster than the datasheet) and
starting from 0.5 each. It
prints the fitted values, to be copied into hardware.yaml by hand: this is how the shipped values
were set (BENCHMARKS.md, "Predicted against published"), once per family and never per run.
"""

from __future__ import annotations

from meshtrain.trainer.config.hardware import efficiency_family, efficiency_with
from meshtrain.trainer.planning.calibrate import fit_family
from meshtrain.trainer.planning.published import observation, published_runs

FIELDS = ("matmul_efficiency", "attention_efficiency", "hbm_efficiency")
START = 0.5  # every fitted rate starts here, not at the values it replaces, so the fit is reproducible


def main() -> None:
    runs = [run for run in published_runs() if not run.held_out]
    for name in sorted({run.spec.efficiency_family for run in runs}):
        rows = [run for run in runs if run.spec.efficiency_family == name]
        start = efficiency_with(efficiency_family(rows[0].spec), dict.fromkeys(FIELDS, START))
        fit = fit_family(start, [observation(r) for r in rows], FIELDS, rounds=6, max_rate=1.0)
        moved = ", ".join(f"{field} {before:.3f} -> {after:.3f}" for field, (before, after) in fit.moved.items())
        print(f"{name} ({len(rows)} rows): median error {fit.error_before:.1%} -> {fit.error_after:.1%}; {moved}")


if __name__ == "__main__":
    main()
