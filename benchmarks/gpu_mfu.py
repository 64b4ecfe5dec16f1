"""MFU of a ~1B-parameter Llama-shaped model on one accelerator: dense attention against the fused kernel.

For the device check of issue 14 (one H200, 15 minutes of device time in all): trains the step as a
run builds it (step_setup.build_step: sharded, the state donated)
on a fixed synthetic batch, for each attention kernel in turn, and prints per kernel the median
step time after the warm-up steps, tokens/s, MFU and HFU (PaLM's convention: trainer/planning/
flops.py, over the chip's dense bf16 peak from configs/hardware.yaml) and the device's peak memory.
One process, both kernels: the compile of each is paid once, and the step times are the figures.

The model: llama2-7b's shape shrunk to d_model 2048, 16 layers of 16 heads x 128, d_ff 5632,
vocabulary 32000 (0.95B parameters), bf16 compute, float32 parameters and AdamW moments, seq 2048,
batch 8 (16,384 tokens a step), remat none; any key=value changes it.

On the device machine only jax, flax, optax, orbax and etils are there of what this imports;
gin-config travels as a wheel (see the device tool's notes on carrying wheels):

    python3 benchmarks/gpu_mfu.py [--steps 30] [--warmup 5] [--kernels dot_product,flash_gpu] \\
        [--hardware h200] [--json PATH] [key=value ...]

On a CPU it runs too (slowly; the fused kernel in Pallas interpret mode), e.g. as a smoke test:
    python3 benchmarks/gpu_mfu.py --hardware cpu --steps 3 --warmup 1 model.d_model=128 \\
        model.num_layers=2 model.num_heads=4 model.num_kv_heads=4 model.head_dim=32 model.d_ff=256 \\
        model.vocab_size=512 data.seq_len=128 train.batch_size=2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# JAX takes 75% of a GPU's memory by default; the dense-attention step of the 1B model needs more
# (the analytic estimate: 108 GB of an H200's 141).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax
import numpy as np
from step_setup import build_step

from meshtrain.trainer.config.hardware import hardware_spec
from meshtrain.trainer.planning.aot_compile import compiled_memory
from meshtrain.trainer.planning.flops import flops_breakdown, utilization
from meshtrain.trainer.planning.peaks import peak_flops

MODEL_1B = [
    "model=llama2-7b",
    "model.d_model=2048",
    "model.num_layers=16",
    "model.num_heads=16",
    "model.num_kv_heads=16",
    "model.head_dim=128",
    "model.d_ff=5632",
    "model.vocab_size=32000",
    "model.dtype=bfloat16",
    "model.remat=none",
    "data.seq_len=2048",
    "train.batch_size=8",
]


def synthetic_batch(rows: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    """Random tokens, one document per row: the step's cost does not depend on the text."""
    rng = np.random.default_rng(0)
    return {
        "inputs": rng.integers(0, vocab, (rows, length), dtype=np.int32),
        "targets": rng.integers(0, vocab, (rows, length), dtype=np.int32),
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
        "weights": np.ones((rows, length), np.float32),
    }


def device_peak_bytes() -> int | None:
    """The first device's peak bytes in use so far, over every kernel measured in this process
    (None where the backend keeps no statistics: CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(overrides: list[str], args) -> dict:
    """Compiles and times the train step of one configuration; returns its figures."""
    built = build_step(overrides)
    cfg, state = built.cfg, built.state
    rows, length = cfg.train.batch_size, cfg.data.seq_len
    batch = built.place(synthetic_batch(rows, length, cfg.model.vocab_size))
    start = time.perf_counter()
    compiled = built.step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    times = []
    for index in range(args.warmup + args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens_per_sec = rows * length / seconds
    flops = flops_breakdown(cfg.model, length)
    peak = peak_flops(hardware_spec(args.hardware), "bfloat16")
    chips = jax.device_count()
    return {
        "attention": cfg.model.attention,
        "params": flops.params_total,
        "tokens_per_step": rows * length,
        "compile_s": compile_seconds,
        "step_s": seconds,
        "tokens_per_sec": tokens_per_sec,
        "mfu": utilization(flops.model, tokens_per_sec, chips, peak),
        "hfu": utilization(flops.hardware, tokens_per_sec, chips, peak),
        "xla_peak_bytes": compiled_memory(compiled).peak_bytes_per_chip,
        "device_peak_bytes": device_peak_bytes(),
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per kernel")
    parser.add_argument("--warmup", type=int, default=5, help="steps run and not timed, after the compiling one")
    parser.add_argument("--kernels", default="dot_product,flash_gpu", help="model.attention values, in order")
    default_kind = "h200" if jax.default_backend() == "gpu" else "cpu"
    parser.add_argument("--hardware", default=default_kind, help="configs/hardware.yaml kind for the peak FLOP/s")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="key=value on top of the 1B model")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {jax.device_count()} x {device.device_kind}; peak from hardware kind {args.hardware}"
    )
    results = []
    for kernel in args.kernels.split(","):
        figures = measure([*MODEL_1B, *args.overrides, f"model.attention={kernel}"], args)
        results.append(figures)
        device_peak = figures["device_peak_bytes"]
        print(
            f"{kernel:<12} {figures['params'] / 1e6:,.1f}M params: {figures['step_s'] * 1e3:8.1f} ms/step "
            f"(compiled in {figures['compile_s']:.1f} s), {figures['tokens_per_sec']:,.0f} tokens/s, "
            f"MFU {figures['mfu']:.1%}, HFU {figures['hfu']:.1%}, XLA peak {figures['xla_peak_bytes'] / 2**30:.2f} GiB"
            + ("" if device_peak is None else f", device peak so far {device_peak / 2**30:.2f} GiB")
            + f", loss {figures['loss']:.3f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": device.device_kind, "jax": jax.__version__, "runs": results}, out, indent=1)


if __name__ == "__main__":
    main()
