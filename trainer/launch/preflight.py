"""What `meshtrain launch` checks before it renders a job: that the job would start and fit.

A recipe is the start of a multi-thousand-dollar job; rendering one whose batch does not divide over
the job's devices, or whose step does not fit in a chip's memory, only moves the failure to the
first minute on the pod. Both are checked against the job the recipe describes (its chip and
process count), with the same rules the run itself applies (trainer/step/partition.py) and the
analytic memory estimate `meshtrain cost` prints; a step that does not fit names the change that
fits with the least extra time (trainer/planning/fit_search.py).
"""

from __future__ import annotations

from meshtrain.trainer.config.mesh_shape import mesh_sizes
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.formatting import format_bytes, format_mesh
from meshtrain.trainer.planning.fit_search import suggestions
from meshtrain.trainer.planning.memory import memory_on_chips
from meshtrain.trainer.step.partition import batch_split_problem, batch_ways


def check_job(cfg: ExperimentConfig, chips: int, processes: int, spec) -> None:
    """Raises a one-line ConfigError when the run would not start or fit on `chips` chips fed by
    `processes` processes."""
    sizes = mesh_sizes(cfg, chips)
    ways = batch_ways(cfg, sizes)
    # Processes load distinct rows, or groups of them share rows (trainer/step/partition.py's Feeder).
    if ways % processes and processes % ways:
        raise ConfigError(
            f"the {chips}-chip job would not start: its {processes} processes cannot load equal parts of "
            f"a batch split {ways} ways (mesh {format_mesh(sizes)}): make one of the two divide the other"
        )
    problem = batch_split_problem(cfg, sizes, min(ways, processes))
    if problem:
        raise ConfigError(f"the {chips}-chip job would not start: {problem}")
    if spec.hbm_bytes is None:
        return
    total = memory_on_chips(cfg, chips).total
    if total <= spec.hbm_bytes:
        return
    fixes = [s for s in suggestions(cfg, spec, chips, spec.hbm_bytes) if s.fits]
    fix = (
        f"{fixes[0].change} fits ({format_bytes(fixes[0].memory_per_chip_bytes)} per chip)"
        if fixes
        else "nothing tried fits (`meshtrain cost` shows what was tried)"
    )
    raise ConfigError(
        f"the {chips}-chip job would not fit: a step needs about {format_bytes(total)} per chip, a "
        f"{cfg.hardware.kind} has {format_bytes(spec.hbm_bytes)}; {fix}"
    )
