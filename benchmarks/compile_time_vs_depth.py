"""Does compile time stay flat with depth when layers are stacked and scanned?

configs/base.yaml claims `model.scan_layers: true` ("scan over stacked layers so compile time does
not grow with depth"). For each depth this builds the default experiment's train step with the
library's own functions (model_def, optimizer_for, make_train_step) and times
`jax.jit(step).lower(abstract_state, abstract_batch).compile()` (tracing + lowering + XLA compile;
nothing is executed), once scanned and once unrolled over the same stacked parameters.

    python3 benchmarks/compile_time_vs_depth.py [--layers 2 4 8 16] [--remat full] [--repeats 2]

Each time is the fastest of --repeats fresh compilations (a new step function each time, so no jit
cache is hit; the persistent compilation cache is switched off).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.step.compute import make_train_step
from meshtrain.trainer.step.guard import SpikeRule
from meshtrain.trainer.step.state import abstract_state, model_def, optimizer_for

jax.config.update("jax_enable_compilation_cache", False)


def abstract_batch(batch_size: int, seq_len: int) -> dict:
    ints = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    return {
        "inputs": ints,
        "targets": ints,
        "segment_ids": ints,
        "positions": ints,
        "weights": jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32),
    }


def compile_seconds(num_layers: int, scan: bool, remat: str, repeats: int) -> float:
    """Fastest of `repeats` lower+compile times of the train step at this depth."""
    cfg = load_experiment(None, [f"model.num_layers={num_layers}", f"model.scan_layers={scan}", f"model.remat={remat}"])
    best = float("inf")
    for _ in range(repeats):
        mdef = model_def(cfg)
        optimizer = optimizer_for(cfg, mdef)
        step = make_train_step(
            mdef, optimizer, cfg.model.z_loss, cfg.train.microbatches, SpikeRule.from_config(cfg.spike)
        )
        state = abstract_state(cfg, mdef, optimizer)
        batch = abstract_batch(cfg.train.batch_size, cfg.data.seq_len)
        start = time.perf_counter()
        jax.jit(step, donate_argnums=0).lower(state, batch).compile()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"])
    parser.add_argument("--repeats", type=int, default=2, help="compilations per point; the fastest counts")
    args = parser.parse_args()

    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; default experiment, "
        f"model.remat={args.remat}; best of {args.repeats} lower+compile per point"
    )
    compile_seconds(args.layers[0], True, args.remat, 1)  # Warm up imports and XLA's own caches.
    rows = []
    for n in args.layers:
        scan = compile_seconds(n, True, args.remat, args.repeats)
        unrolled = compile_seconds(n, False, args.remat, args.repeats)
        rows.append((n, scan, unrolled))
    print(f"{'layers':>6} | {'scan s':>7} | {'unrolled s':>10} | {'unrolled/scan':>13} | {'scan vs first':>13}")
    print(f"{'-' * 6}-|-{'-' * 7}-|-{'-' * 10}-|-{'-' * 13}-|-{'-' * 13}")
    for n, scan, unrolled in rows:
        print(f"{n:>6} | {scan:>7.2f} | {unrolled:>10.2f} | {unrolled / scan:>12.2f}x | {scan / rows[0][1]:>12.2f}x")


if __name__ == "__main__":
    main()
