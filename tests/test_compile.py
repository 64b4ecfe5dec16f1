"""meshtrain compile: the real train step compiled by libtpu for a TPU topology on this CPU machine.

Needs libtpu (`pip install -e ".[tpu]"`); every compile here is of the tiny model on a 4- or 8-chip
v4 topology and takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from meshtrain.trainer.errors import UserError

V4_HBM = 32 * 2**30
FIELDS = (
    "topology",
    "num_devices",
    "peak_bytes_per_chip",
    "hbm_bytes_per_chip",
    "fits",
    "flops_per_step_per_chip",
    "compile_seconds",
    "argument_bytes_per_chip",
    "output_bytes_per_chip",
    "alias_bytes_per_chip",
    "temp_bytes_per_chip",
    "mesh",
    "error",
)


def meshtrain_compile(*args, cwd):
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "meshtrain.tools", "compile", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # libtpu compile in a subprocess
def test_tiny_model_fits_on_a_v4_2x2x1(small_model, tmp_path):
    result = meshtrain_compile(*small_model, "--topology", "v4:2x2x1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(FIELDS) <= set(report)
    assert report["topology"] == "v4:2x2x1" and report["num_devices"] == 4 and report["num_slices"] == 1
    assert report["hbm_bytes_per_chip"] == V4_HBM and report["fits"] is True and report["error"] is None
    assert report["mesh"] == {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 1}
    assert report["compute_dtype"] == "bfloat16"  # 'auto' resolves for the TPU, not for this CPU
    assert 0 < report["argument_bytes_per_chip"] <= report["peak_bytes_per_chip"] < V4_HBM
    assert report["alias_bytes_per_chip"] > 0  # the state is donated
    assert report["flops_per_step_per_chip"] > 0 and report["compile_seconds"] > 0
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # libtpu compile in a subprocess
def test_two_slices_table_output(small_model, tmp_path):
    result = meshtrain_compile(
        *small_model, "train.batch_size=8", "--topology", "v4:2x2x1", "--num-slices", "2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "v4:2x2x1 x 2 slices = 8 TPU v4 chips" in result.stdout
    assert "mesh data=2 x fsdp=4" in result.stdout
    assert "fits" in result.stdout and "NOT" not in result.stdout


@pytest.mark.slow  # libtpu compile in a subprocess
def test_a_model_too_big_for_the_chips_is_reported_not_raised(tmp_path):
    # PaLM 62B with AdamW on 4 chips: ~190 GB of state per chip against 32 GiB.
    result = meshtrain_compile(
        "model=palm-62b", "data.seq_len=128", "train.batch_size=4", "--topology", "v4:2x2x1", "--json", cwd=tmp_path
    )
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["fits"] is False and report["peak_bytes_per_chip"] is None
    assert "RESOURCE_EXHAUSTED" in report["error"] and "HBM" in report["error"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "topology,fragment",
    [
        ("v4-8", "--topology 'v4-8': expected a TPU topology name"),
        ("v4:2x2x1x2", "--topology 'v4:2x2x1x2'"),
        ("v9:2x2x1", "unknown TPU generation 'v9'"),
        ("2x2x1", "write it as e.g. v4:2x2x1"),
    ],
)
def test_malformed_topology_is_one_line_exit_2(topology, fragment, capsys):
    from meshtrain.tools.cli import main as meshtrain

    assert meshtrain(["compile", "--topology", topology]) == 2  # refused before libtpu is loaded
    err = capsys.readouterr().err.strip()
    assert err.startswith("meshtrain: error:") and "\n" not in err and fragment in err, err


@pytest.mark.slow  # libtpu compile in a subprocess
def test_topology_libtpu_rejects_is_one_line_exit_2(tmp_path):
    result = meshtrain_compile("--topology", "v4:3x3x3", cwd=tmp_path)  # not a multiple of 2x2x1 hosts
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "libtpu rejects it" in lines[0], result.stderr


def test_missing_libtpu_says_how_to_install(monkeypatch):
    from meshtrain.trainer.planning import aot_compile

    monkeypatch.setattr(aot_compile, "libtpu_available", lambda: False)
    with pytest.raises(UserError, match=r'pip install -e "\.\[tpu\]"'):
        aot_compile.topology_devices("v4:2x2x1", 1)


def test_flops_count_every_iteration_of_a_scan():
    """XLA's cost analysis counts a loop body once; the jaxpr count multiplies by the length."""
    from meshtrain.trainer.planning.program_flops import jaxpr_flops

    def layers(x, w):
        return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0]

    x, w = jnp.zeros((8, 16)), jnp.zeros((5, 16, 16))
    matmul = 2 * 8 * 16 * 16
    assert jaxpr_flops(jax.make_jaxpr(layers)(x, w).jaxpr) == 5 * matmul
    # Gradient of both: forward, then d/dx and d/dw for each of the 5 layers.
    grad = jax.grad(lambda x, w: layers(x, w).sum(), argnums=(0, 1))
    assert jaxpr_flops(jax.make_jaxpr(grad)(x, w).jaxpr) == 3 * 5 * matmul


def test_flops_counted_from_the_jaxpr_agree_with_xla_on_an_unscanned_step():
    """Where XLA's own count is right (no loop: layers unrolled), the jaxpr count of the real train
    step agrees with it; XLA also counts elementwise work, so the model is made matmul-heavy."""
    from meshtrain.trainer.config import load_experiment
    from meshtrain.trainer.planning.program_flops import jaxpr_flops
    from meshtrain.trainer.step import partition

    cfg = load_experiment(
        None,
        [
            "model.vocab_size=512",
            "model.d_model=256",
            "model.d_ff=1024",
            "model.num_layers=2",
            "model.num_heads=4",
            "model.head_dim=64",
            "data.seq_len=128",
            "train.batch_size=4",
            "model.scan_layers=false",
            "model.remat=none",
            "mesh.ici_fsdp=1",
        ],
    )
    traced = partition.trace_train_step(cfg, partition.make_mesh(cfg, jax.devices()[:1]))
    cost = traced.lower().compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    counted = jaxpr_flops(traced.jaxpr.jaxpr)
    assert counted == pytest.approx(xla, rel=0.05)


PALM_FEEDERS = """
import json
from meshtrain.tools.args import quiet_libraries
quiet_libraries()
from meshtrain.sharding.rules import named_sharding
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.planning.aot_compile import resolve_target, topology_devices
from meshtrain.trainer.step import partition
cfg = load_experiment("palm-540b-v4-6144", [])
topology, num_slices, spec = resolve_target(cfg, None, None)
mesh = partition.make_mesh(cfg, topology_devices(topology, num_slices, spec), num_slices)
ways = partition.batch_ways(cfg, mesh.shape)
probe = named_sharding("batch", (ways, cfg.data.seq_len), partition.BATCH_NAMES, mesh, cfg.mesh.rules)
feeders = [partition.batch_feeder(probe, ways, cfg.data.seq_len, p) for p in range(1536)]
print(json.dumps({"ways": ways, "feeders": [[f.index, f.count, f.leads] for f in feeders]}))
"""


@pytest.mark.slow  # 6144 compile-only devices in a subprocess
def test_every_palm_host_holds_one_block_of_rows_shared_along_the_tensor_axis():
    """On 2 x v4-3072 a host's 4 chips are 2 x 2 x 1: two positions of the 12-way tensor axis and two
    of fsdp's 16 x 16 plane. The mesh orders each axis so a host's positions are consecutive: every
    host holds one block of 2 of the batch's 512 row blocks (batch_feeder refuses any other), and
    the 6 hosts along the tensor axis hold the same block: 256 feeders, each led by its first host."""
    done = subprocess.run([sys.executable, "-c", PALM_FEEDERS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ways"] == 512
    feeders = result["feeders"]
    assert {count for _, count, _ in feeders} == {256}
    assert [index for index, _, _ in feeders[:13]] == [0] * 6 + [1] * 6 + [2]
    assert [leads for _, _, leads in feeders[:7]] == [True, False, False, False, False, False, True]
    assert sorted(index for index, _, leads in feeders if leads) == list(range(256))
