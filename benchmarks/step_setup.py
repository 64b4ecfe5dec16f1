"""The train step as `meshtrain train` builds it, for the benchmarks that time it.

make_mesh, plan_run, init_sharded_state and jit_train_step, in that order, from an experiment
with overrides: one copy of the sequence (train_throughput.py, gpu_mfu.py). It imports nothing of
the data pipeline, so gpu_mfu.py runs where grain and TFDS are not installed.
"""

from __future__ import annotations

import dataclasses

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.step.partition import (
    ShardingPlan,
    global_batch,
    init_sharded_state,
    jit_train_step,
    make_mesh,
    plan_run,
)
from meshtrain.trainer.step.state import model_def, optimizer_for


@dataclasses.dataclass
class BuiltStep:
    """A fresh sharded state and the jitted step (the state donated), with what built them."""

    cfg: ExperimentConfig
    plan: ShardingPlan
    state: object
    step: object

    def place(self, local_batch: dict) -> dict:
        """This process's rows of a batch -> the global batch the step takes."""
        return global_batch(self.plan, local_batch)


def build_step(overrides: list[str]) -> BuiltStep:
    cfg = load_experiment(None, overrides)
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, make_mesh(cfg))
    state = init_sharded_state(cfg, mdef, optimizer, plan)
    return BuiltStep(cfg, plan, state, jit_train_step(cfg, mdef, optimizer, plan))
