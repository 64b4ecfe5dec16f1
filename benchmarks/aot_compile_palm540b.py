"""Does PaLM 540B, laid out as the paper trained it, compile and fit in a TPU v4 chip's 32 GiB?

Compiles the real train step of configs/experiment/palm-540b-v4-6144.yaml with libtpu for compile-only
TPU v4 devices on this CPU machine (what `meshtrain compile` does), at the end of the batch ramp
(2048 sequences x 2048 tokens), for one 3072-chip pod (v4:12x16x16, half the batch, so each chip
holds what it holds in the full run) and for the paper's two pods (6144 chips, data=2 over DCN).
Inside a pod the mesh is fsdp=256 x tensor=12; remat is full.

    python3 benchmarks/aot_compile_palm540b.py [--slices 1 2] [--microbatches 2] [OVERRIDE ...]

Each row is `meshtrain compile palm-540b-v4-6144 train.batch_size=... 'train.batch_ramp=[]'
train.microbatches=... [OVERRIDE ...] --topology v4:12x16x16 --num-slices K`. Needs libtpu
(`pip install -e ".[tpu]"`); one compile takes about 1 to 3 minutes and 2.7 GB of memory on 2 cores.
"""

from __future__ import annotations

import argparse

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.formatting import format_mesh
from meshtrain.trainer.planning.aot_compile import compile_report

EXPERIMENT = "palm-540b-v4-6144"
GLOBAL_BATCH = 2048  # the end of the paper's ramp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--microbatches", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more key=value overrides of the experiment")
    args = parser.parse_args()

    print(
        "| pods | chips | mesh | batch (seqs) | microbatches | compile s | arguments GiB | peak GiB "
        "| of 32 GiB | fits | matmul TFLOP/step/chip |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for slices in args.slices:
        batch = GLOBAL_BATCH * slices // 2  # one pod: its half of the 2048
        overrides = [
            f"train.batch_size={batch}",
            "train.batch_ramp=[]",
            f"train.microbatches={args.microbatches}",
            f"mesh.dcn_data={slices}",
            *args.overrides,
        ]
        cfg = load_experiment(EXPERIMENT, overrides)
        r = compile_report(cfg, topology="v4:12x16x16", num_slices=slices).as_dict()
        mesh = format_mesh(r["mesh"])
        peak = r["peak_bytes_per_chip"]
        print(
            f"| {slices} | {r['num_chips']} | {mesh} | {batch} | {args.microbatches} | "
            f"{r['compile_seconds']:.0f} | "
            + (
                "- | - | - | no | "
                if peak is None
                else f"{r['argument_bytes_per_chip'] / 2**30:.2f} | {peak / 2**30:.2f} | "
                f"{peak / r['hbm_bytes_per_chip']:.0%} | {'yes' if r['fits'] else 'no'} | "
            )
            + f"{r['flops_per_step_per_chip'] / 1e12:.0f} |",
            flush=True,
        )
        if r["error"]:
            print(f"    XLA: {r['error'].splitlines()[0]}")


if __name__ == "__main__":
    main()
