"""What the persistent compilation cache saves a restart: time to the first step, with and without.

Trains a run to a checkpoint once, then restarts copies of it for two more steps, alternating
(A B A B ...) a restart without the cache (`train.compilation_cache=null`) and one with a cache
that an earlier process filled. Each restart is a fresh `meshtrain train` process, as after a
preemption; its goodput.json gives the startup and compilation seconds of the new segment and
the cache hits. Prints medians and the ratio. Run from the repository root:
`python3 benchmarks/compilation_cache_restart.py` (add model overrides to change the shape).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = ["train.eval_every=0", "train.log_every=1", "checkpoint.every=4", "--no-progress"]


def train(run_dir: Path, steps: int, cache: str | None, overrides: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    cache_setting = f"train.compilation_cache={cache}" if cache else "train.compilation_cache=null"
    argv = [sys.executable, "-m", "meshtrain.tools", "train", *BASE, *overrides, cache_setting]
    start = time.perf_counter()
    done = subprocess.run(
        [*argv, f"run_dir={run_dir}", f"train.steps={steps}"], env=env, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"meshtrain train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def restart(base: Path, work: Path, cache: str | None, overrides: list[str]) -> dict:
    run_dir = work / f"restart-{time.monotonic_ns()}"
    shutil.copytree(base, run_dir)
    before = json.loads((run_dir / "goodput.json").read_text())["parts_s"]
    wall = train(run_dir, 6, cache, overrides)
    record = json.loads((run_dir / "goodput.json").read_text())
    segment = record["segments"][-1]
    shutil.rmtree(run_dir)
    to_first_step = sum(record["parts_s"][p] - before[p] for p in ("startup", "compilation", "checkpointing"))
    return {
        "process_s": wall,
        "to_first_step_s": to_first_step,
        "hits": segment["compile_cache_hits"],
        "saved_s": segment["compile_time_saved_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", default=["model.num_layers=8", "model.d_model=256", "model.d_ff=1024"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meshtrain-cache-bench-"))
    cache = str(work / "cache")
    base = work / "base"
    train(base, 4, None, args.overrides)  # the checkpoint every restart resumes from
    train(work / "fill", 1, cache, args.overrides)  # an earlier process fills the cache
    shutil.rmtree(work / "fill")
    results = {"without": [], "with": []}
    for _ in range(args.repeats):
        results["without"].append(restart(base, work, None, args.overrides))
        results["with"].append(restart(base, work, cache, args.overrides))
    for name, runs in results.items():
        median = lambda key, runs=runs: statistics.median(r[key] for r in runs)
        print(
            f"{name:8s} cache: process {median('process_s'):6.2f} s, start + restore + compile {median('to_first_step_s'):6.2f} s, "
            f"hits {median('hits'):.0f}, compile saved {median('saved_s'):5.2f} s"
        )
    ratio = statistics.median(r["process_s"] for r in results["with"]) / statistics.median(
        r["process_s"] for r in results["without"]
    )
    print(f"restart with / without: {ratio:.2f} x  (overrides: {' '.join(args.overrides)})")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
