"""What the checkpoint checksums cost: save and restore time with `checkpoint.checksums` on and off.

Builds the train state of a ~100M-parameter model (float32 parameters and Adam moments: ~1.2 GB) on
this machine's devices, then alternates (A B A B ...) saving it through trainer/run/checkpoint.py
with and without checksums, waiting for each write to reach disk, and restoring it. Prints the
median of each and the ratio. Run from the repository root: `python3 benchmarks/checkpoint_checksums.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from meshtrain.tools.args import quiet_libraries
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.run.checkpoint import Checkpoints
from meshtrain.trainer.step.partition import abstract_sharded_state, init_sharded_state, make_mesh, plan_run
from meshtrain.trainer.step.state import model_def, optimizer_for

MODEL = ["model.d_model=768", "model.num_layers=12", "model.num_heads=12", "model.head_dim=64", "model.d_ff=3072"]


def benchmark_state(overrides: list[str]) -> tuple:
    """(cfg, state, abstract state, bytes) of the ~125M-parameter model's train state, built on this
    machine's devices as a run builds it (also used by checkpoint_throughput.py)."""
    cfg = load_experiment(None, [*MODEL, "model.vocab_size=32000", *overrides])
    mdef = model_def(cfg)
    optimizer = optimizer_for(cfg, mdef)
    plan = plan_run(cfg, mdef, optimizer, make_mesh(cfg))
    state = nonzero_moments(init_sharded_state(cfg, mdef, optimizer, plan))
    abstract = abstract_sharded_state(cfg, mdef, optimizer, plan)
    return cfg, state, abstract, sum(leaf.nbytes for leaf in jax.tree.leaves(state))


def nonzero_moments(state):
    """`state` with the optimizer's zero-initialized moments filled with small random values, as
    they are after any training: Orbax's files are compressed, and 1 GB of zeros shrinks to
    nothing, which made a fresh state's checkpoint a third of its size on disk."""
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state["opt_state"]))))

    def fill(x):
        key = next(keys)
        if x.ndim == 0 or not jnp.issubdtype(x.dtype, jnp.floating):  # step counts and the like stay
            return x
        return jax.jit(lambda k: jax.random.normal(k, x.shape, x.dtype) * 1e-3, out_shardings=x.sharding)(key)

    return {**state, "opt_state": jax.tree.map(fill, state["opt_state"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()
    cfg, state, abstract, size = benchmark_state([])
    params = sum(leaf.size for leaf in jax.tree.leaves(state["params"]))
    print(f"state: {params / 1e6:.0f}M parameters, {size / 2**30:.2f} GiB on {jax.device_count()} device(s)")
    times = {True: {"save": [], "restore": []}, False: {"save": [], "restore": []}}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as root:
        for repeat in range(args.repeats + 1):  # the first round warms up (compiles the checksum program)
            for checksums in (False, True):
                directory = Path(root) / f"{checksums}-{repeat}"
                checkpoints = Checkpoints(directory, dataclasses.replace(cfg.checkpoint, checksums=checksums))
                start = time.perf_counter()
                checkpoints.save(1, state, {"shards": {}})
                checkpoints.wait()
                saved = time.perf_counter()
                checkpoints.restore(1, abstract)
                restored = time.perf_counter()
                checkpoints.close()
                if repeat:
                    times[checksums]["save"].append(saved - start)
                    times[checksums]["restore"].append(restored - saved)
    print("| | without checksums | with checksums | ratio |")
    print("|---|---:|---:|---:|")
    for what in ("save", "restore"):
        off, on = statistics.median(times[False][what]), statistics.median(times[True][what])
        print(f"| {what} (median of {args.repeats}) | {off:.2f} s | {on:.2f} s | {on / off:.2f} |")


if __name__ == "__main__":
    main()
