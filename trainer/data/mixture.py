"""A data mixture: which sources a run trains on, and which source each row of the stream is from.

Rows, not documents, are what a mixture weighs (as in Levanter and SeqIO): each source is packed
on its own, so a row holds one source's tokens and a weight is a share of the rows, hence of the
tokens trained on. Weighing documents would let a source of long documents (books) take far more
than its weight.

Which source the global row g comes from is grain's mixing rule (`grain.MapDataset.mix` over one
constant dataset per source): a deterministic interleave in which every prefix, and so every
window, holds each source's share of rows to within one row (tested over windows of every
size). It depends only on g and on the weights in effect, never on the process count or on which
process reads the row. `data.mixture_schedule` changes the weights from given steps on; a stage
starts counting rows afresh where it begins, so its first rows already follow its weights.
"""

from __future__ import annotations

import dataclasses

import grain

from meshtrain.trainer.config.schema import DataConfig


@dataclasses.dataclass(frozen=True)
class Source:
    """One source of the stream: its name (for metrics), its weight, and the data section as it
    applies to this source (its dataset, text_dir, text_key and splits in place)."""

    name: str
    weight: float
    data: DataConfig


def source_name(dataset: str) -> str:
    """A TFDS name like `c4/en:3.0.1` as a metric-friendly label (`c4-en-3.0.1`)."""
    return dataset.replace("/", "-").replace(":", "-")


def sources_of(cfg: DataConfig) -> tuple[Source, ...]:
    """data.mixture resolved against the data section; without a mixture, data.dataset alone."""
    if not cfg.mixture:
        return (Source(source_name(cfg.dataset), 1.0, dataclasses.replace(cfg, mixture=(), mixture_schedule=())),)
    out = []
    for entry in cfg.mixture:
        own = {
            key: getattr(entry, key)
            for key in ("text_dir", "text_key", "train_split", "eval_split")
            if getattr(entry, key) is not None
        }
        data = dataclasses.replace(cfg, dataset=entry.dataset, mixture=(), mixture_schedule=(), **own)
        out.append(Source(entry.name or source_name(entry.dataset), entry.weight, data))
    return tuple(out)


def weight_stages(cfg: DataConfig) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """((first step, weights), ...): the mixture's weights from step 0, then each schedule entry."""
    weights = tuple(source.weight for source in sources_of(cfg))
    return ((0, weights), *((step, tuple(w)) for step, w in cfg.mixture_schedule))


class RowSources:
    """Which source each global row comes from, stage by stage of the weight schedule."""

    def __init__(self, stages: tuple[tuple[int, tuple[float, ...]], ...]):
        self.starts = tuple(step for step, _ in stages)
        self._selections = [self._selection(weights) for _, weights in stages]

    @staticmethod
    def _selection(weights: tuple[float, ...]) -> grain.MapDataset:
        """mixed[i] = the source of the stage's i-th row. grain's mix refuses a zero weight, so only
        the sources with a positive one take part."""
        used = [k for k, w in enumerate(weights) if w > 0]
        constants = [grain.MapDataset.source([k]).repeat() for k in used]
        return grain.MapDataset.mix(constants, [weights[k] for k in used])

    def stage_at(self, step: int) -> int:
        """The schedule stage that step `step` trains in."""
        return sum(1 for start in self.starts[1:] if step >= start)

    def source_of(self, stage: int, row_in_stage: int) -> int:
        """The source of the stage's row `row_in_stage` (counted from the stage's first row)."""
        return self._selections[stage][row_in_stage]
