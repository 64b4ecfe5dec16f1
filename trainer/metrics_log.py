"""Where logged metrics go: metrics.jsonl (one object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsLog:
    def __init__(self, run_dir: Path):
        self._jsonl = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
        self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()
