"""How fast is the default experiment's train step, and can the data pipeline keep up with it?

Builds the default experiment's step exactly as trainer/run/train.py does (model_def, optimizer_for,
init_state, jax.jit(make_train_step(...), donate_argnums=0)) and feeds it one fixed real batch
from BatchStream over python_docs with the default tokenizer. After --warmup steps, --steps steps
are dispatched back to back and waited on once at the end; the best of --repeats such blocks counts.
Variants: the baseline model.remat=none (speed ratios are against it), the default experiment's
step (remat=full), remat=save_dots, and the default with microbatches=2. Then the data pipeline
alone, on a fresh stream: BatchStream.next_batch(batch_size) calls per second (best of --repeats
blocks of --data-batches calls, after --warmup), and data time per batch as a fraction of the
default step time (< 1: loading can keep up).

    python3 benchmarks/train_throughput.py [--steps 50] [--warmup 5] [--repeats 3]
                                           [--data-batches 200] [key=value ...]
"""

from __future__ import annotations

import argparse
import time

import jax

from meshtrain.tools.args import quiet_libraries
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.data import BatchStream, prepare_dataset, tokenizer_for
from meshtrain.trainer.step.compute import make_train_step
from meshtrain.trainer.step.guard import SpikeRule
from meshtrain.trainer.step.state import init_state, model_def, optimizer_for

BASELINE = "remat=none (baseline)"
DEFAULT = "default (remat=full)"
VARIANTS = {
    BASELINE: ["model.remat=none"],
    DEFAULT: [],
    "remat=save_dots": ["model.remat=save_dots"],
    "microbatches=2": ["train.microbatches=2"],
}


def step_seconds(overrides: list[str], batch, args) -> float:
    """Best mean seconds per step over `repeats` blocks of `steps` back-to-back steps."""
    cfg = load_experiment(None, overrides)
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    state = jax.jit(lambda: init_state(cfg, mdef, optimizer))()
    step = jax.jit(
        make_train_step(mdef, optimizer, cfg.model.z_loss, cfg.train.microbatches, SpikeRule.from_config(cfg.spike)),
        donate_argnums=0,
    )
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


def data_seconds(cfg, tokenizer, args) -> float:
    """Best mean seconds per BatchStream.next_batch(batch_size) on a fresh train stream."""
    stream = BatchStream(cfg.data, tokenizer, seed=cfg.seed, split=cfg.data.train_split)
    for _ in range(args.warmup):
        stream.next_batch(cfg.train.batch_size)
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.data_batches):
            stream.next_batch(cfg.train.batch_size)
        best = min(best, (time.perf_counter() - start) / args.data_batches)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps (and batches) per block")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the fastest counts")
    parser.add_argument("--data-batches", type=int, default=200, help="timed batches per data block")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every variant")
    args = parser.parse_args()
    quiet_libraries()

    cfg = load_experiment(None, args.overrides)
    prepare_dataset(cfg.data)
    tokenizer = tokenizer_for(cfg.data, cfg.model.vocab_size)
    stream = BatchStream(cfg.data, tokenizer, seed=cfg.seed, split=cfg.data.train_split)
    batch = jax.device_put(stream.next_batch(cfg.train.batch_size))
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

    data = data_seconds(cfg, tokenizer, args)
    print(f"\n{'data pipeline':<22} | {'ms/batch':>8} | {'batches/s':>9} | {'data / default step':>19}")
    print(f"{'-' * 22}-|-{'-' * 8}-|-{'-' * 9}-|-{'-' * 19}")
    print(f"{'BatchStream.next_batch':<22} | {data * 1e3:>8.2f} | {1 / data:>9,.1f} | {data / times[DEFAULT]:>18.3f}x")


if __name__ == "__main__":
    main()
