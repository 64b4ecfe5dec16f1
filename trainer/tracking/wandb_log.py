"""Weights & Biases, when `tracking.wandb` is on: the metrics metrics.jsonl gets, the resolved config,
and at the end the report.

wandb is an optional extra, imported only when a run asks for it (so meshtrain needs nothing of it
otherwise; this is not a late import around a cycle). The W&B run id is derived from the run
directory, so every restart of a run continues the same W&B run (resume="allow"). WANDB_MODE=offline
keeps the run on disk for `wandb sync`. W&B's files go into run_dir/wandb for a local run directory
(wandb writes local files only), else into the working directory.
"""

from __future__ import annotations

import hashlib
import importlib

from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.config.serialize import config_to_dict
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.storage.paths import as_path, is_url


def wandb_run_id(run_dir) -> str:
    """A stable W&B run id for a run directory (W&B ids: at most 64 of [a-z0-9])."""
    return hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]


class WandbLog:
    def __init__(self, cfg: ExperimentConfig, run_dir):
        try:
            wandb = importlib.import_module("wandb")
        except ImportError:
            raise UserError('tracking.wandb=true needs the wandb package: pip install -e ".[wandb]"') from None
        self.run_dir = as_path(run_dir)
        local = not is_url(self.run_dir)
        if local:
            (self.run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=cfg.tracking.wandb_project,
            entity=cfg.tracking.wandb_entity,
            name=cfg.name,
            id=wandb_run_id(run_dir),
            resume="allow",
            config=config_to_dict(cfg),
            dir=str(self.run_dir) if local else None,
        )

    def log(self, step: int, record: dict) -> None:
        """The record's numbers (W&B plots numbers; events and lists stay in metrics.jsonl)."""
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            self._run.log(numbers, step=step)

    def finish(self) -> None:
        """The report (as a file of the run, and its totals as the run's summary), then the run's end."""
        report = self.run_dir / "report.md"
        if report.is_file() and not is_url(self.run_dir):
            self._run.save(str(report), base_path=str(self.run_dir), policy="now")
        self._run.finish()
