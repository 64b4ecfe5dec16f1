"""Peak host memory of `meshtrain convert` on a ~1B-parameter model, against the model's size.

Writes a randomly initialized Hugging Face Llama of TinyLlama-1.1B's shape (d_model 2048, 22
layers, 32 query and 4 key/value heads, d_ff 5632, vocab 32000, untied) as safetensors, one
tensor at a time, then times and measures (peak RSS of the child process, from wait4) three
`meshtrain convert` runs in fresh processes:
  baseline   the same conversion of a 2-layer, d_model 64 model: what the interpreter, JAX and
             Orbax cost before any weights
  hf->mt     the 1.1B model into a meshtrain checkpoint
  mt->hf     that checkpoint back to Hugging Face safetensors
Streaming is working when peak RSS - baseline stays near the largest meshtrain parameter (a
stacked [layers, ...] matrix) rather than the whole model.

    python3 benchmarks/convert_memory.py [--dtype float32|bfloat16] [--layers 22] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

from meshtrain.trainer.convert.safetensors_writer import SafetensorsWriter


def llama_config(layers: int, hidden: int, ff: int, heads: int, kv_heads: int, vocab: int, dtype: str) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "dtype": dtype,
    }


def tensor_specs(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    e, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    d = e // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    specs = [("model.embed_tokens.weight", (v, e)), ("model.norm.weight", (e,)), ("lm_head.weight", (v, e))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (e,)),
            (p + "post_attention_layernorm.weight", (e,)),
            (p + "self_attn.q_proj.weight", (q, e)),
            (p + "self_attn.k_proj.weight", (kv, e)),
            (p + "self_attn.v_proj.weight", (kv, e)),
            (p + "self_attn.o_proj.weight", (e, q)),
            (p + "mlp.gate_proj.weight", (f, e)),
            (p + "mlp.up_proj.weight", (f, e)),
            (p + "mlp.down_proj.weight", (e, f)),
        ]
    return specs


def write_random_model(directory: Path, config: dict, dtype: np.dtype) -> int:
    """Writes the model tensor by tensor; returns its size in bytes."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    specs = tensor_specs(config)
    rng = np.random.default_rng(0)
    with SafetensorsWriter(directory, [(name, shape, dtype) for name, shape in specs]) as writer:
        for name, shape in specs:
            writer.write(name, (rng.standard_normal(shape, np.float32) * 0.02).astype(dtype))
    return sum(int(np.prod(shape)) for _, shape in specs) * dtype.itemsize


def measured_convert(*args: str) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of `python -m meshtrain.tools convert ARGS` in a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "meshtrain.tools", "convert", *args, "--no-progress"],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"meshtrain convert {' '.join(args)} failed")
    return time.perf_counter() - started, usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--workdir", help="where the models are written (default: a temporary directory)")
    args = parser.parse_args()
    dtype = np.dtype(ml_dtypes.bfloat16) if args.dtype == "bfloat16" else np.dtype(np.float32)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="convert_memory_"))
    try:
        small = llama_config(2, 64, 128, 4, 2, 256, args.dtype)
        big = llama_config(args.layers, 2048, 5632, 32, 4, 32000, args.dtype)
        write_random_model(work / "small", small, dtype)
        model_bytes = write_random_model(work / "hf", big, dtype)
        largest = args.layers * 2048 * 5632 * dtype.itemsize  # a stacked MLP kernel
        params = model_bytes // dtype.itemsize
        rows = [
            ("baseline (2 layers, d 64)", *measured_convert(str(work / "small"), str(work / "small_mt"))),
            ("hf -> meshtrain", *measured_convert(str(work / "hf"), str(work / "mt"))),
            ("meshtrain -> hf", *measured_convert(str(work / "mt"), str(work / "hf2"))),
        ]
        baseline = rows[0][2]
        print(
            f"model: {params / 1e9:.2f}B parameters, {model_bytes / 2**30:.2f} GiB in {args.dtype}; "
            f"largest meshtrain parameter {largest / 2**30:.2f} GiB"
        )
        print(f"{'conversion':<28}{'seconds':>9}{'peak RSS':>12}{'- baseline':>12}{'/ model size':>14}")
        for name, seconds, rss in rows:
            print(
                f"{name:<28}{seconds:>9.1f}{rss / 2**30:>10.2f} G{(rss - baseline) / 2**30:>10.2f} G"
                f"{(rss - baseline) / model_bytes:>14.2f}"
            )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
