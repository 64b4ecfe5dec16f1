"""Do checkpoints keep up with the disk, and how long does an asynchronous save block training?

Builds the train state of a ~125M-parameter model (float32 parameters and AdamW moments: ~1.4 GiB,
the moments random as after training, so nothing compresses away) on this machine's devices
(checkpoint_checksums.benchmark_state), then alternates (A B A B ...) over
--repeats rounds, in a directory under the current one (the same disk for all):

- Orbax, through trainer/run/checkpoint.py with the default checkpoint settings (async, checksums):
  `save` returns once the state is copied off the devices (the time the training loop is blocked),
  `wait` once the files are written; `sync` then flushes them to the device. Restore reads it back.
- dd of the same number of bytes: `dd if=/dev/zero of=FILE bs=64M count=N conv=fdatasync` (written
  and flushed), then `dd if=FILE of=/dev/null bs=64M` (read, from the page cache as Orbax's is).

Prints medians and throughput, Orbax's as a share of dd's, and the blocked share of the save.

    python3 benchmarks/checkpoint_throughput.py [--repeats 5] [key=value ...]   # e.g. checkpoint.checksums=false
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
from checkpoint_checksums import benchmark_state

from meshtrain.tools.args import quiet_libraries
from meshtrain.trainer.run.checkpoint import Checkpoints

DD_BLOCK = 64 * 2**20


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def orbax_round(directory: Path, cfg, state, abstract) -> dict[str, float]:
    checkpoints = Checkpoints(directory, cfg.checkpoint)
    blocked = timed(lambda: checkpoints.save(1, state, {"shards": {}}))
    written = blocked + timed(checkpoints.wait)
    synced = written + timed(os.sync)
    restore = timed(lambda: checkpoints.restore(1, abstract))
    checkpoints.close()
    on_disk = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    return {"blocked": blocked, "save": written, "save+sync": synced, "restore": restore, "on_disk": on_disk}


def dd_round(path: Path, size: int) -> dict[str, float]:
    count = math.ceil(size / DD_BLOCK)
    dd = lambda *args: subprocess.run(["dd", *args], check=True, capture_output=True)
    write = timed(lambda: dd("if=/dev/zero", f"of={path}", f"bs={DD_BLOCK}", f"count={count}", "conv=fdatasync"))
    read = timed(lambda: dd(f"if={path}", "of=/dev/null", f"bs={DD_BLOCK}"))
    path.unlink()
    return {"save+sync": write, "restore": read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. checkpoint.checksums=false")
    args = parser.parse_args()
    quiet_libraries()
    cfg, state, abstract, size = benchmark_state(args.overrides)
    print(
        f"state: {size / 2**30:.2f} GiB on {jax.device_count()} device(s); checkpoint async_save="
        f"{cfg.checkpoint.async_save}, checksums={cfg.checkpoint.checksums}; {args.repeats} rounds after one warm-up"
    )
    orbax, dd = [], []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as root:
        for repeat in range(args.repeats + 1):  # round 0 warms up (compiles the checksum program)
            o = orbax_round(Path(root) / f"orbax-{repeat}", cfg, state, abstract)
            d = dd_round(Path(root) / f"dd-{repeat}", size)
            if repeat:
                orbax.append(o)
                dd.append(d)
    median = lambda rounds, key: statistics.median(r[key] for r in rounds)
    gib_s = lambda seconds: size / 2**30 / seconds
    print("| | Orbax s | Orbax GiB/s | dd s | dd GiB/s | Orbax / dd throughput |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in ("save+sync", "restore"):
        o, d = median(orbax, key), median(dd, key)
        print(f"| {key} | {o:.2f} | {gib_s(o):.2f} | {d:.2f} | {gib_s(d):.2f} | {d / o:.0%} |")
    print(f"\nOrbax wrote {median(orbax, 'on_disk') / 2**30:.2f} GiB on disk for the {size / 2**30:.2f} GiB state")
    blocked, save = median(orbax, "blocked"), median(orbax, "save")
    print(f"\nasync save: the loop is blocked {blocked:.3f} s of a {save:.2f} s save ({blocked / save:.1%})")


if __name__ == "__main__":
    main()
