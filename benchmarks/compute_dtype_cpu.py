"""Which compute dtype should `model.dtype: auto` pick on a CPU? The default experiment, both ways.

Trains the default experiment (`meshtrain train`, this interpreter) with `model.dtype=float32` and
`model.dtype=bfloat16` in interleaved pairs, alternating which goes first, and compares:
- speed: each run's median `step_time_s` over its logged steps after the first (which compiles);
  a pair's ratio is float32's time over bfloat16's (above 1: bfloat16 is faster);
- the loss curve: bfloat16's logged training loss against float32's at every logged step (the runs
  are deterministic, so the first pair's curves stand for all), and the final eval loss.

bfloat16 qualifies when its final eval loss is within --tolerance (relative) of float32's and its
training loss, smoothed over --window logged steps, never strays further than that either; auto
should pick it on CPU only if it also is faster. The script prints the figures and the verdict;
model/dtypes.py holds the decision, and BENCHMARKS.md ("The compute dtype on CPU") the figures.

    python3 benchmarks/compute_dtype_cpu.py [--pairs 2] [--tolerance 0.02] [--window 5] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DTYPES = ("float32", "bfloat16")


def train(dtype: str, run_dir: Path, overrides: list[str]) -> list[dict]:
    """The metrics.jsonl records of one `meshtrain train` run of the default experiment."""
    command = [sys.executable, "-m", "meshtrain.tools", "train", *overrides]
    command += [f"model.dtype={dtype}", f"run_dir={run_dir}", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"meshtrain train ({dtype}) failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir)
    return records


def step_seconds(records: list[dict]) -> float:
    times = [r["step_time_s"] for r in records if "step_time_s" in r]
    return statistics.median(times[1:])


def curve(records: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in records if r.get(key) is not None}


def smoothed(values: list[float], window: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="interleaved float32/bfloat16 pairs")
    parser.add_argument("--tolerance", type=float, default=0.02, help="relative loss difference allowed")
    parser.add_argument("--window", type=int, default=5, help="logged steps the training loss is averaged over")
    parser.add_argument("overrides", nargs="*", help="key=value for both runs")
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {d: [] for d in DTYPES}
    first: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as root:
        for pair in range(args.pairs):
            order = DTYPES if pair % 2 == 0 else DTYPES[::-1]
            for dtype in order:
                records = train(dtype, Path(root) / f"{dtype}-{pair}", args.overrides)
                seconds[dtype].append(step_seconds(records))
                first.setdefault(dtype, records)
            print(
                f"pair {pair + 1} ({' then '.join(order)}): float32 {seconds['float32'][-1] * 1e3:.1f} ms/step, "
                f"bfloat16 {seconds['bfloat16'][-1] * 1e3:.1f} ms/step, "
                f"ratio {seconds['float32'][-1] / seconds['bfloat16'][-1]:.2f}",
                flush=True,
            )
    ratios = [f / b for f, b in zip(seconds["float32"], seconds["bfloat16"])]
    f32, bf16 = curve(first["float32"], "loss"), curve(first["bfloat16"], "loss")
    steps = sorted(f32.keys() & bf16.keys())
    smooth32 = smoothed([f32[s] for s in steps], args.window)
    smooth16 = smoothed([bf16[s] for s in steps], args.window)
    gaps = [abs(b - f) / f for f, b in zip(smooth32, smooth16)]
    worst = max(range(len(steps)), key=gaps.__getitem__)
    eval32, eval16 = curve(first["float32"], "eval_loss"), curve(first["bfloat16"], "eval_loss")
    last = max(eval32.keys() & eval16.keys())
    eval_gap = abs(eval16[last] - eval32[last]) / eval32[last]
    print(
        f"\nspeed: float32 {statistics.median(seconds['float32']) * 1e3:.1f} ms/step, bfloat16 "
        f"{statistics.median(seconds['bfloat16']) * 1e3:.1f} ms/step; median ratio {statistics.median(ratios):.2f} "
        f"({' '.join(f'{r:.2f}' for r in ratios)}; above 1: bfloat16 faster)"
    )
    print(
        f"training loss (mean of {args.window} logged steps): largest gap {gaps[worst]:.2%} at step {steps[worst]} "
        f"(float32 {smooth32[worst]:.4f}, bfloat16 {smooth16[worst]:.4f}); final {smooth32[-1]:.4f} vs {smooth16[-1]:.4f}"
    )
    print(f"eval loss at step {last}: float32 {eval32[last]:.4f}, bfloat16 {eval16[last]:.4f} ({eval_gap:.2%})")
    close = gaps[worst] <= args.tolerance and eval_gap <= args.tolerance
    faster = statistics.median(ratios) > 1
    verdict = "bfloat16" if close and faster else "float32"
    print(f"verdict for auto on CPU: {verdict} (within {args.tolerance:.0%}: {close}; bfloat16 faster: {faster})")


if __name__ == "__main__":
    main()
