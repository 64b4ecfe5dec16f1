"""The periodic eval loss: the same first batches of the eval split at every evaluation.

How many batches that is gets settled once, before training starts: `train.eval_batches`, or fewer
when the split holds fewer (a small validation split is evaluated whole, with a warning, rather than
ending the run at its first eval). Every process must run the same number of eval steps (each is a
collective), so the count is the smallest any process can read.
"""

from __future__ import annotations

import jax

from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.data import BatchStream
from meshtrain.trainer.errors import DataError
from meshtrain.trainer.run.collective import gather_json


def _eval_stream(cfg: ExperimentConfig, tokenizer, feeder) -> BatchStream:
    split = cfg.data.eval_split
    return BatchStream(cfg.data, tokenizer, cfg.seed, split, feeder_index=feeder.index, feeder_count=feeder.count)


def eval_batches_available(cfg: ExperimentConfig, tokenizer, feeder) -> int:
    """The number of eval batches every evaluation uses (0 when eval is off); raises DataError when
    the eval split cannot fill a single batch. A collective."""
    if not cfg.train.eval_every:
        return 0
    stream = _eval_stream(cfg, tokenizer, feeder)
    rows = cfg.train.batch_size // feeder.count
    count = 0
    while count < cfg.train.eval_batches:
        try:
            stream.next_batch(rows)
        except StopIteration:
            break
        count += 1
    count = min(gather_json(count))
    if count == 0:
        raise DataError(
            f"eval split {cfg.data.eval_split!r} of {cfg.data.dataset!r} holds no documents: "
            "use another data.eval_split, or train.eval_every=0 to train without eval"
        )
    if count < cfg.train.eval_batches and jax.process_index() == 0:
        print(
            f"meshtrain: eval split {cfg.data.eval_split!r} holds {count} batch(es) of "
            f"{cfg.train.batch_size} rows, fewer than train.eval_batches={cfg.train.eval_batches}: "
            f"each eval uses those {count}"
        )
    return count


def evaluate(cfg: ExperimentConfig, tokenizer, eval_step, params, put, feeder, batches: int) -> float:
    """Mean cross-entropy over the first `batches` batches of the eval split."""
    stream = _eval_stream(cfg, tokenizer, feeder)
    rows = cfg.train.batch_size // feeder.count
    ce_sum, tokens = 0.0, 0.0
    for _ in range(batches):
        batch_ce, batch_tokens = eval_step(params, put(stream.next_batch(rows)))
        ce_sum, tokens = ce_sum + float(batch_ce), tokens + float(batch_tokens)
    return ce_sum / max(tokens, 1.0)
