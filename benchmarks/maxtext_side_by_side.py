"""meshtrain against MaxText on this CPU: the same Llama-shaped model, trained in interleaved pairs.

Each pair trains the model once with `meshtrain train` (this interpreter: run the script with the
Python that has meshtrain installed) and once with MaxText from PyPI through the shared recipe
(../shared/bench/maxtext-cpu.sh: its own Python 3.12 venv, synthetic data, attention=dot_product),
alternating which goes first, so that the shared machine's drift hits both alike. A run's figure
is its median step time over the steps after the first three (meshtrain: step_time_s of every
logged step; MaxText: the "seconds:" of its per-step lines); a pair's ratio is MaxText's time over
meshtrain's (above 1: meshtrain is faster), and the script prints the median ratio per case.

Both train the same architecture with the same settings: untied embeddings, SwiGLU, RMSNorm,
rotary positions, multi-head attention, full rematerialization, scanned layers, float32 weights,
one device; `--dtypes` sets the compute dtype of both. Shapes (`--shapes`):
  issue  d_model 512, 8 heads x 64, d_ff 2048, 8 layers, vocab 8192, seq 512, batch 2
  deep   12 layers of d_model 640, 10 heads x 64, d_ff 2560 (2.3x the issue shape's work per token)

    PYENV_VERSION=3.12.1 python3.12 -m venv /tmp/v312 && /tmp/v312/bin/pip install -e .
    /tmp/v312/bin/python benchmarks/maxtext_side_by_side.py [--pairs 5] [--steps 15] \\
        [--shapes issue,deep] [--dtypes float32,bfloat16] [--recipe ../shared/bench/maxtext-cpu.sh]
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
from pathlib import Path

SHAPES = {  # name: (d_model, heads, d_ff, layers); head_dim 64, vocab 8192, seq 512, batch 2
    "issue": (512, 8, 2048, 8),
    "deep": (640, 10, 2560, 12),
}
HEAD_DIM, VOCAB, SEQ, BATCH = 64, 8192, 512, 2
SKIPPED_STEPS = 3  # the first steps include compilation and warm-up


def meshtrain_overrides(shape: str, dtype: str) -> list[str]:
    d_model, heads, d_ff, layers = SHAPES[shape]
    return [
        "model=llama2-7b",  # untied, SwiGLU, RMSNorm, rope, multi-head, remat=full
        f"model.num_layers={layers}",
        f"model.d_model={d_model}",
        f"model.num_heads={heads}",
        f"model.num_kv_heads={heads}",
        f"model.head_dim={HEAD_DIM}",
        f"model.d_ff={d_ff}",
        f"model.vocab_size={VOCAB}",
        f"data.seq_len={SEQ}",
        f"train.batch_size={BATCH}",
        "model.remat=full",
        f"model.dtype={dtype}",
    ]


def maxtext_overrides(shape: str, dtype: str, steps: int) -> list[str]:
    d_model, heads, d_ff, layers = SHAPES[shape]
    return [
        f"base_emb_dim={d_model}",
        f"base_num_query_heads={heads}",
        f"base_num_kv_heads={heads}",
        f"head_dim={HEAD_DIM}",
        f"base_mlp_dim={d_ff}",
        f"base_num_decoder_layers={layers}",
        f"vocab_size={VOCAB}",
        f"max_target_length={SEQ}",
        f"per_device_batch_size={BATCH}",
        f"steps={steps}",
        f"dtype={dtype}",
        "remat_policy=full",
        "scan_layers=true",
    ]


def cpu_env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def meshtrain_seconds(shape: str, dtype: str, steps: int, root: Path) -> float:
    run_dir = root / f"meshtrain-{shape}-{dtype}"
    command = [sys.executable, "-m", "meshtrain.tools", "train", *meshtrain_overrides(shape, dtype)]
    command += [f"run_dir={run_dir}", f"train.steps={steps}", "train.log_every=1", "train.eval_every=0"]
    done = subprocess.run(command, env=cpu_env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"meshtrain train failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records if "step_time_s" in r and r["step"] > SKIPPED_STEPS]
    shutil.rmtree(run_dir)
    return statistics.median(times)


def maxtext_seconds(recipe: Path, shape: str, dtype: str, steps: int, root: Path) -> float:
    """The recipe prints "median_step_s tflops_per_s tokens_per_s" (median over its steps 4..)."""
    script = f'source "{recipe}" && mt_venv && MT_OUT="{root}/maxtext" mt_train {shape}-{dtype} "$@"'
    done = subprocess.run(
        ["bash", "-c", script, "maxtext", *maxtext_overrides(shape, dtype, steps)], capture_output=True, text=True
    )
    fields = done.stdout.split()
    if done.returncode or len(fields) != 3:
        raise SystemExit(f"MaxText run failed ({done.returncode}): {done.stdout.strip()} {done.stderr.strip()[-300:]}")
    return float(fields[0])


def measure_case(shape: str, dtype: str, args, root: Path) -> tuple[float, float, list[float]]:
    """(meshtrain's median s/step, MaxText's, the pairs' ratios) of `args.pairs` interleaved pairs,
    alternating which of the two runs first."""
    ours, theirs, ratios = [], [], []
    for pair in range(args.pairs):
        order = ("meshtrain", "maxtext") if pair % 2 == 0 else ("maxtext", "meshtrain")
        seconds = {}
        for name in order:
            if name == "meshtrain":
                seconds[name] = meshtrain_seconds(shape, dtype, args.steps, root)
            else:
                seconds[name] = maxtext_seconds(args.recipe, shape, dtype, args.steps, root)
        ours.append(seconds["meshtrain"])
        theirs.append(seconds["maxtext"])
        ratios.append(seconds["maxtext"] / seconds["meshtrain"])
        print(
            f"  {shape} {dtype} pair {pair + 1} ({' then '.join(order)}): meshtrain {ours[-1]:.3f} s, "
            f"MaxText {theirs[-1]:.3f} s, ratio {ratios[-1]:.2f}",
            flush=True,
        )
    return statistics.median(ours), statistics.median(theirs), ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="interleaved meshtrain/MaxText pairs per case")
    parser.add_argument("--steps", type=int, default=15, help="train steps per run")
    parser.add_argument("--shapes", default="issue,deep", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes, comma-separated")
    default_recipe = Path(__file__).resolve().parents[2] / "shared" / "bench" / "maxtext-cpu.sh"
    parser.add_argument("--recipe", type=Path, default=default_recipe, help="the MaxText-on-CPU recipe")
    args = parser.parse_args()
    shapes, dtypes = args.shapes.split(","), args.dtypes.split(",")
    for name in shapes:
        if name not in SHAPES:
            parser.error(f"--shapes: unknown shape {name!r}; valid: {', '.join(SHAPES)}")
    if not args.recipe.is_file():
        parser.error(f"--recipe: {args.recipe} does not exist (the MaxText recipe, ../shared/bench/maxtext-cpu.sh)")
    print(
        f"{args.pairs} interleaved pairs per case, {args.steps} steps per run, median step time of steps "
        f"{SKIPPED_STEPS + 1}..{args.steps}; ratio = MaxText s/step / meshtrain s/step",
        flush=True,
    )
    summary = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        for shape in shapes:
            for dtype in dtypes:
                summary.append((shape, dtype, *measure_case(shape, dtype, args, Path(tmp))))
    tokens = BATCH * SEQ
    print(f"\n{'case':<16} | {'meshtrain s':>11} | {'MaxText s':>9} | {'tokens/s':>15} | {'median ratio':>12} | ratios")
    print(f"{'-' * 16}-|-{'-' * 11}-|-{'-' * 9}-|-{'-' * 15}-|-{'-' * 12}-|-------")
    for shape, dtype, mine, maxtext, ratios in summary:
        throughput = f"{tokens / mine:>6.0f} vs {tokens / maxtext:>5.0f}"
        print(
            f"{shape + ' ' + dtype:<16} | {mine:>11.3f} | {maxtext:>9.3f} | {throughput} "
            f"| {statistics.median(ratios):>11.2f}x | {' '.join(f'{r:.2f}' for r in ratios)}"
        )


if __name__ == "__main__":
    main()
