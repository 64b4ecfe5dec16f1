"""Does compile time stay flat with depth when layers are stacked and scanned?

configs/base.yaml claims `model.scan_layers: true` ("scan over stacked layers so compile time does
not grow with depth"). For each depth this times `trace_train_step(cfg, mesh).lower().compile()`,
the run's own step (trainer/step/partition.py, as `meshtrain compile` builds it) against abstract
state and batch (tracing + lowering + XLA compile; nothing is executed), once scanned and once
unrolled over the same stacked parameters.

    python3 benchmarks/compile_time_vs_depth.py [--layers 2 4 8 16] [--remat full] [--repeats 2]

Each time is the fastest of --repeats fresh compilations (a new step function each time, so no jit
cache is hit; the persistent compilation cache is switched off).
"""

from __future__ import annotations

import argparse
import time

import jax

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.step.partition import make_mesh, trace_train_step

jax.config.update("jax_enable_compilation_cache", False)


def compile_seconds(num_layers: int, scan: bool, remat: str, repeats: int) -> float:
    """Fastest of `repeats` trace+lower+compile times of the train step at this depth."""
    cfg = load_experiment(None, [f"model.num_layers={num_layers}", f"model.scan_layers={scan}", f"model.remat={remat}"])
    best = float("inf")
    mesh = make_mesh(cfg)
    for _ in range(repeats):
        start = time.perf_counter()
        trace_train_step(cfg, mesh).lower().compile()
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
