"""The periodic eval loss, per source: the same first batches of each source's eval split at every
evaluation, and the mixture's total beside them.

How many batches each source gets is settled once, before training starts: `train.eval_batches`, or
fewer when a split holds fewer (a small validation split is evaluated whole, with a warning, rather
than ending the run at its first eval). Every process must run the same number of eval steps (each is
a collective), so each count is the smallest any process can read.

The total is the sources' losses weighted by the mixture's weights (data.mixture's own, not a
schedule's later ones, so that eval_loss stays one quantity over the whole run): the loss on text
drawn as the mixture draws it. With one source it is that source's loss.
"""

from __future__ import annotations

import jax

from meshtrain.trainer.config.batch_schedule import data_shards
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.data import FEATURES, BatchStream, sources_of
from meshtrain.trainer.errors import DataError
from meshtrain.trainer.run.collective import gather_json


def _eval_stream(cfg: ExperimentConfig, tokenizer, feeder, source: str) -> BatchStream:
    return BatchStream(
        cfg.data,
        tokenizer,
        cfg.seed,
        "eval",
        source=source,
        num_shards=data_shards(cfg.train, cfg.data.shards),
        feeder_index=feeder.index,
        feeder_count=feeder.count,
    )


def eval_batches_available(cfg: ExperimentConfig, tokenizer, feeder) -> dict[str, int]:
    """Source name -> the number of eval batches every evaluation uses ({} when eval is off); raises
    DataError when a source's eval split cannot fill a single batch. A collective."""
    if not cfg.train.eval_every:
        return {}
    rows = cfg.train.batch_size // feeder.count
    counts = {}
    for source in sources_of(cfg.data):
        stream = _eval_stream(cfg, tokenizer, feeder, source.name)
        count = 0
        while count < cfg.train.eval_batches:
            try:
                stream.next_batch(rows)
            except StopIteration:
                break
            count += 1
        counts[source.name] = count
    gathered = gather_json(counts)
    counts = {name: min(c[name] for c in gathered) for name in counts}
    for source in sources_of(cfg.data):
        count, split = counts[source.name], source.data.eval_split
        if count == 0:
            raise DataError(
                f"eval split {split!r} of source {source.name!r} ({source.data.dataset!r}) holds no documents: "
                "use another eval_split, or train.eval_every=0 to train without eval"
            )
        if count < cfg.train.eval_batches and jax.process_index() == 0:
            print(
                f"meshtrain: eval split {split!r} of {source.name!r} holds {count} batch(es) of "
                f"{cfg.train.batch_size} rows, fewer than train.eval_batches={cfg.train.eval_batches}: "
                f"each eval uses those {count}"
            )
    return counts


def evaluate(cfg: ExperimentConfig, tokenizer, eval_step, params, put, feeder, batches: dict[str, int]) -> dict:
    """{"eval_loss": the weighted total, "eval_loss/<source>": mean cross-entropy of each source's
    first eval batches}."""
    rows = cfg.train.batch_size // feeder.count
    out, total, weight_sum = {}, 0.0, 0.0
    for source in sources_of(cfg.data):
        stream = _eval_stream(cfg, tokenizer, feeder, source.name)
        ce_sum, tokens = 0.0, 0.0
        for _ in range(batches[source.name]):
            batch = stream.next_batch(rows)
            batch_ce, batch_tokens = eval_step(params, put({k: batch[k] for k in FEATURES}))
            ce_sum, tokens = ce_sum + float(batch_ce), tokens + float(batch_tokens)
        out[f"eval_loss/{source.name}"] = loss = ce_sum / max(tokens, 1.0)
        total, weight_sum = total + source.weight * loss, weight_sum + source.weight
    return {"eval_loss": total / weight_sum, **out}


def eval_line(losses: dict) -> str:
    """'eval loss 2.1034' and, for a mixture, each source's beside it."""
    per_source = {k.split("/", 1)[1]: v for k, v in losses.items() if k.startswith("eval_loss/")}
    line = f"eval loss {losses['eval_loss']:.4f}"
    if len(per_source) > 1:
        line += " (" + ", ".join(f"{name} {loss:.4f}" for name, loss in per_source.items()) + ")"
    return line
