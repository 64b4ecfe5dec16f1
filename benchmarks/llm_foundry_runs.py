"""MosaicML llm-foundry's published MPT training benchmarks as a `meshtrain plan --validate --runs` file.

    python3 benchmarks/llm_foundry_runs.py LLM_FOUNDRY/scripts/train/benchmarking/README.md \
        > benchmarks/runs/llm_foundry_mpt.yaml
    meshtrain plan --validate --runs benchmarks/runs/llm_foundry_mpt.yaml

The README's tables (H100 80GB, A100 80GB and A100 40GB, bf16; the FP8 table is left out) give, per
run, the MPT size, sequence length, GPU count, microbatch size, gradient accumulation, global batch,
tokens/s per GPU and whether activations were checkpointed. Every run is PyTorch FSDP FULL_SHARD over
all its GPUs (FSDP over the 8 GPUs of a server, and across servers beyond 8), so the layout is known
without guessing. The MPT shapes are llm-foundry's scripts/train/yamls/pretrain/mpt-*.yaml: GPT-style
blocks, d_ff = 4 d_model, a 50368-token vocabulary. Runs whose global batch does not split evenly
over their GPUs and microbatches (llm-foundry's microbatching allows a ragged last one) are left out.
None of these runs is in configs/published_runs.yaml or the family fit: they are a check on data the
performance model never saw (BENCHMARKS.md, "Out of sample: llm-foundry's MPT tables").
"""

from __future__ import annotations

import sys

import yaml

SOURCE = (
    "mosaicml/llm-foundry, scripts/train/benchmarking/README.md at commit 8c8dd48 (tables last revised January 2024): "
    "MPT models with PyTorch FSDP FULL_SHARD, bf16, tokens/s per GPU as published; the sweep script's "
    "default attention kernel is attn_impl=triton (submit_benchmarks.py)"
)
# d_model, heads, layers of llm-foundry's scripts/train/yamls/pretrain/mpt-<size>.yaml
MPT_SHAPES = {
    "125m": (768, 12, 12),
    "350m": (1024, 16, 24),
    "760m": (1536, 12, 24),
    "1b": (2048, 16, 24),
    "3b": (2560, 20, 32),
    "7b": (4096, 32, 32),
    "13b": (5120, 40, 40),
    "30b": (7168, 56, 48),
    "70b": (8192, 64, 80),
}
GPU_KINDS = {"h100_80gb": "h100", "a100_80gb": "a100-80gb", "a100_40gb": "a100-40gb"}
GPUS_PER_SERVER = 8


def table_rows(readme: str):
    """(header -> cell) dicts of every bf16 table row of the README."""
    header, fp8 = None, False
    for line in readme.splitlines():
        if line.startswith("## "):
            header, fp8 = None, "FP8" in line
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "Model":
            header = cells
        elif header and not fp8 and cells[0] in MPT_SHAPES and len(cells) == len(header):
            yield dict(zip(header, cells))


def run_of(row: dict) -> tuple[str, dict, dict] | None:
    """(model key, model entry, run) for one table row, or None when its batch is ragged."""
    size, seq, gpus = row["Model"], int(row["SeqLen (T)"]), int(row["# GPUs"])
    micro, accumulate, batch = int(row["MicroBatchSize"]), int(row["GradAccum"]), int(row["GlobalBatchSize"])
    if batch != micro * accumulate * gpus:
        return None
    d_model, heads, layers = MPT_SHAPES[size]
    model_key = f"mpt_{size}_{seq}"
    model = {
        "preset": "gpt3-175b",
        "vocab_size": 50368,
        "d_model": d_model,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": d_model // heads,
        "d_ff": 4 * d_model,
        "num_layers": layers,
        "max_seq_len": seq,
    }
    mesh = {"ici_fsdp": min(gpus, GPUS_PER_SERVER)}
    if gpus > GPUS_PER_SERVER:
        mesh["dcn_fsdp"] = gpus // GPUS_PER_SERVER
    checkpointed = row["Activation Checkpointing"] == "True"
    kind = GPU_KINDS[row["GPU"]]
    run = {
        "name": f"MPT {size}, sequence {seq}, {gpus} {kind}, microbatch {micro} x {accumulate}"
        + (", checkpointed" if checkpointed else ""),
        "source": "llm_foundry",
        "hardware": kind,
        "model": model_key,
        "seq_len": seq,
        "batch": batch,
        "mesh": mesh,
        "microbatches": accumulate,
        "remat": "full" if checkpointed else "none",
        "attention": "flash",
        "published": {"tokens_per_s_per_chip": float(row["Throughput (T/s/GPU)"]), "convention": "palm"},
    }
    return model_key, model, run


def main(readme_path: str) -> None:
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    models, runs, names = {}, [], set()
    for row in table_rows(readme):
        converted = run_of(row)
        if converted is None or converted[2]["name"] in names:  # ragged batch, or a repeated row
            continue
        model_key, model, run = converted
        models[model_key] = model
        names.add(run["name"])
        runs.append(run)
    yaml.safe_dump(
        {"sources": {"llm_foundry": SOURCE}, "models": models, "runs": runs},
        sys.stdout,
        sort_keys=False,
        width=120,
        default_flow_style=None,
    )
    print(f"{len(runs)} runs", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
