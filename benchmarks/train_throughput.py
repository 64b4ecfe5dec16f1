"""How fast is the default experiment's train step, and how do remat and accumulation change it?

Builds the default experiment's step exactly as trainer/run/train.py does (make_mesh, plan_run,
init_sharded_state, jit_train_step: jitted with the plan's shardings, the state donated) and feeds
it one fixed real batch, the run's first (the default mixture and tokenizer), placed by global_batch. After --warmup steps, --steps steps
are dispatched back to back and waited on once at the end; the best of --repeats such blocks counts.
Variants: the baseline model.remat=none (speed ratios are against it), the default experiment's
step (remat=full), remat=save_dots, and the default with microbatches=2. Whether the input
pipeline keeps up with the step is benchmarks/input_pipeline.py's question (it imports
step_seconds from here).

    python3 benchmarks/train_throughput.py [--steps 50] [--warmup 5] [--repeats 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import time

import jax
from step_setup import build_step

from meshtrain.tools.args import quiet_libraries
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.batch_schedule import data_shards
from meshtrain.trainer.data import FEATURES, BatchStream, prepare_dataset, tokenizer_for

BASELINE = "remat=none (baseline)"
DEFAULT = "default (remat=full)"
VARIANTS = {
    BASELINE: ["model.remat=none"],
    DEFAULT: [],
    "remat=save_dots": ["model.remat=save_dots"],
    "microbatches=2": ["train.microbatches=2"],
}


def step_seconds(overrides: list[str], local_batch: dict, args) -> float:
    """Best mean seconds per step over `repeats` blocks of `steps` back-to-back steps."""
    built = build_step(overrides)
    state, step = built.state, built.step
    batch = built.place(local_batch)
    for _ in range(args.warmup):  # The first call compiles.
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        best = min(best, (time.perf_counter() - start) / args.steps)
    return best


def first_batch(cfg, tokenizer) -> dict:
    """The run's first global batch, as the train step receives it (FEATURES only)."""
    stream = BatchStream(cfg.data, tokenizer, seed=cfg.seed, num_shards=data_shards(cfg.train, cfg.data.shards))
    batch = stream.next_batch(cfg.train.batch_size, step=0)
    return {k: batch[k] for k in FEATURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps (and batches) per block")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the fastest counts")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every variant")
    args = parser.parse_args()
    quiet_libraries()

    cfg = load_experiment(None, args.overrides)
    prepare_dataset(cfg.data)
    tokenizer = tokenizer_for(cfg.data, cfg.model.vocab_size)
    batch = first_batch(cfg, tokenizer)
    tokens = cfg.train.batch_size * cfg.data.seq_len
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; default experiment "
        f"(batch {cfg.train.batch_size} x seq_len {cfg.data.seq_len} = {tokens} tokens/step, "
        f"{cfg.model.num_layers} layers, d_model {cfg.model.d_model}); best of {args.repeats} "
        f"blocks of {args.steps} steps after {args.warmup} warmup"
    )

    times = {name: step_seconds(args.overrides + extra, batch, args) for name, extra in VARIANTS.items()}
    baseline = times[BASELINE]
    print(f"{'variant':<22} | {'ms/step':>8} | {'tokens/s':>9} | {'speed vs baseline':>17}")
    print(f"{'-' * 22}-|-{'-' * 8}-|-{'-' * 9}-|-{'-' * 17}")
    for name, seconds in times.items():
        print(f"{name:<22} | {seconds * 1e3:>8.2f} | {tokens / seconds:>9,.0f} | {baseline / seconds:>16.2f}x")


if __name__ == "__main__":
    main()
