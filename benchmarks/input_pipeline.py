"""Can one host's input pipeline (tokenize + pack + mix) feed its share of the train step?

Two cases, each a fresh BatchStream exactly as a run's feeder builds it, timed through
`next_batch(rows, step)` (which reads, tokenizes in grain's reader threads, packs and mixes):

- default: the default experiment's two-source mixture (python_docs 0.7, python_source 0.3,
  8 shards, one feeder), 8 rows x 128 tokens per step. Demand: what the default train step
  consumes, measured in the same run with the step train_throughput.py builds (remat=full).
- palm: one feeder's share of PaLM 540B's batch. configs/experiment/palm-540b-v4-6144.yaml's data
  section (six sources with Table 2's weights, seq_len 2048), each source read from an embedded
  corpus (PaLM's are not public: five prose sources on python_docs, github on python_source), with
  the default tokenizer. The feeders are those of the run's own plan on the experiment's mesh over
  compile-only TPU v4 devices (libtpu: pip install -e ".[tpu]"): 2 x 3072 chips on 1536 hosts,
  the hosts along the 12-way tensor axis holding the same rows. A feeder reads the ramp's last
  batch (2048) / feeders rows per step, from data.shards / feeders shards of each source. Demand:
  the paper's 238.3K tokens/s (Appendix B, Table 3) / feeders; every host of a feeder loads the
  same rows, so this is each host's demand.

For each: the first batch of a fresh stream (opening the splits, the first documents tokenized:
what a restart waits for), then steady state: the best of --repeats blocks of --batches calls
after --warmup calls. Tokens/s counts row slots (rows x seq_len); "filled" is the share of them
holding document tokens (weights 1), the rest being packing's padding.

    python3 benchmarks/input_pipeline.py [--batches 100] [--warmup 5] [--repeats 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
from train_throughput import first_batch, step_seconds

from meshtrain.tools.args import quiet_libraries
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.batch_schedule import batch_sizes, data_shards
from meshtrain.trainer.config.schema import SourceConfig
from meshtrain.trainer.data import BatchStream, prepare_dataset, tokenizer_for
from meshtrain.trainer.planning.aot_compile import resolve_target, topology_devices
from meshtrain.trainer.step.partition import make_mesh, plan_run
from meshtrain.trainer.step.state import model_def, optimizer_for

PALM_EXPERIMENT = "palm-540b-v4-6144"
PALM_TOKENS_PER_SEC = 238.3e3  # PaLM 540B on 6144 TPU v4 chips (Chowdhery et al. 2022, Appendix B, Table 3)
# Where each of PaLM's sources is read from here: prose on CPython's documentation, code on its source.
EMBEDDED = {"palm_github": "python_source"}


@dataclasses.dataclass
class Measured:
    first_batch_s: float
    batch_s: float
    filled: float


def measure(data_cfg, tokenizer, seed: int, rows: int, args) -> Measured:
    start = time.perf_counter()
    stream = BatchStream(data_cfg, tokenizer, seed=seed, feeder_count=1)
    stream.next_batch(rows, step=0)
    first = time.perf_counter() - start
    for step in range(1, args.warmup):
        stream.next_batch(rows, step=step)
    best, weights = float("inf"), []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for step in range(args.batches):
            weights.append(stream.next_batch(rows, step=step)["weights"].mean())
        best = min(best, (time.perf_counter() - start) / args.batches)
    return Measured(first, best, float(np.mean(weights)))


def palm_share(default_cfg) -> tuple:
    """PaLM's data section on embedded corpora, its rows per feeder per step, its feeder count and chips."""
    cfg = load_experiment(PALM_EXPERIMENT, [])
    topology, num_slices, spec = resolve_target(cfg, None, None)
    devices = topology_devices(topology, num_slices, spec)
    mdef = model_def(cfg)
    feeders = plan_run(cfg, mdef, optimizer_for(cfg, mdef), make_mesh(cfg, devices, num_slices)).feeder.count
    mixture = tuple(
        SourceConfig(dataset=EMBEDDED.get(s.dataset, "python_docs"), weight=s.weight, name=s.dataset)
        for s in cfg.data.mixture
    )
    shards = data_shards(cfg.train, cfg.data.shards) // feeders
    data = dataclasses.replace(cfg.data, mixture=mixture, shards=shards, data_dir=default_cfg.data.data_dir)
    return data, max(batch_sizes(cfg.train)) // feeders, feeders, len(devices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100, help="timed batches per block")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the fastest counts")
    parser.add_argument("--steps", type=int, default=30, help="timed train steps per block (the demand)")
    parser.add_argument("overrides", nargs="*", help="key=value applied to the default experiment")
    args = parser.parse_args()
    quiet_libraries()

    cfg = load_experiment(None, args.overrides)
    prepare_dataset(cfg.data)
    tokenizer = tokenizer_for(cfg.data, cfg.model.vocab_size)
    rows = cfg.train.batch_size
    default_data = dataclasses.replace(cfg.data, shards=data_shards(cfg.train, cfg.data.shards))
    step_s = step_seconds(args.overrides, first_batch(cfg, tokenizer), args)
    palm_data, palm_rows, feeders, chips = palm_share(cfg)

    cases = [
        ("default", default_data, rows, rows * cfg.data.seq_len / step_s, "the default train step, measured"),
        (
            "palm (one feeder)",
            palm_data,
            palm_rows,
            PALM_TOKENS_PER_SEC / feeders,
            f"238.3K tokens/s / {feeders} feeders ({chips} chips)",
        ),
    ]
    print(
        f"jax {jax.__version__}; best of {args.repeats} blocks of {args.batches} batches after {args.warmup}; "
        f"tokenizer {tokenizer.path} ({len(tokenizer.pieces())} pieces)"
    )
    header = "case | rows x seq_len | sources | first batch s | ms/batch | tokens/s | filled | demand tokens/s | supply / demand"
    print(header)
    print("|".join("-" * len(column) for column in header.split("|")))
    for name, data_cfg, case_rows, demand, why in cases:
        m = measure(data_cfg, tokenizer, cfg.seed, case_rows, args)
        supply = case_rows * data_cfg.seq_len / m.batch_s
        print(
            f"{name} | {case_rows} x {data_cfg.seq_len} | {len(data_cfg.mixture) or 1} | {m.first_batch_s:.2f} | "
            f"{m.batch_s * 1e3:.2f} | {supply:,.0f} | {m.filled:.1%} | {demand:,.0f} ({why}) | {supply / demand:,.1f}x"
        )


if __name__ == "__main__":
    main()
