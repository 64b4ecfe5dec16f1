"""Rewind-and-skip: what the training loop does when the spike guard trips, and the record of it.

PaLM (section 5.1): "we re-started training from a checkpoint roughly 100 steps before the spike
started, and skipped roughly 200-500 data batches, which cover the batches that were seen before and
during the spike." Here that is automatic: when `spike.max_consecutive` steps in a row were bad
(trainer/step/guard.py), the loop restores the newest checkpoint at least `spike.rewind_steps` before
the first bad step (or the initial state when there is none), deletes the newer checkpoints of the
abandoned trajectory, and reads past the next `spike.skip_batches` batches without training on them.

Each recovery is appended to the run directory's recoveries.json (trainer/tracking/recoveries.py). Its skipped batch ranges, with
`train.skip_batches`, are the run's skip list, which every later start reads: the batches a run
trains on are then the same across restarts and process counts (batch numbers are global, and a
skipped batch is read with the size the next trained step uses).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence

from meshtrain.trainer.errors import UserError


class DivergedError(UserError):
    """Rewinding did not help: the run keeps going bad with no good checkpoint in between."""


@dataclasses.dataclass(frozen=True)
class SkipList:
    """Sorted, merged half-open ranges [start, end) of global batch numbers that are never trained on."""

    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[Sequence[int]]) -> SkipList:
        merged: list[list[int]] = []
        for start, end in sorted((int(a), int(b)) for a, b in ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return cls(tuple((a, b) for a, b in merged))

    def end_of_skip(self, batch: int) -> int:
        """The first batch number >= `batch` that is not skipped."""
        i = bisect.bisect_right([start for start, _ in self.ranges], batch) - 1
        if i >= 0 and batch < self.ranges[i][1]:
            return self.ranges[i][1]
        return batch

    def __len__(self) -> int:
        return sum(end - start for start, end in self.ranges)


def skip_list(configured: Iterable[Sequence[int]], recoveries: list[dict]) -> SkipList:
    """`train.skip_batches` plus the ranges the run's recoveries skipped."""
    return SkipList.of([*configured, *(r["skipped_batches"] for r in recoveries)])


def rewind_target(checkpoint_steps: Iterable[int], first_bad_step: int, rewind_steps: int) -> int | None:
    """The newest checkpoint step at least `rewind_steps` before the first bad step (None: none is)."""
    eligible = [s for s in checkpoint_steps if s <= first_bad_step - rewind_steps]
    return max(eligible) if eligible else None
