"""trainer.distributed: which launcher a process takes its coordinator, count and id from, and a real
two-process run on localhost (4 virtual CPU devices each) whose collectives span all 8 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from meshtrain.trainer.config.schema import DistributedConfig
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.run.distributed import plan


def _cfg(coordinator_address=None, num_processes=None, process_id=None, timeout=300):
    return DistributedConfig(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout_s=timeout,
        heartbeat_timeout_s=20,
    )


SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "16",
    "SLURM_STEP_NODELIST": "gpu[001-002]",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "3",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_GPUS_ON_NODE": "8",
}


def test_nothing_found_is_a_single_process():
    assert plan(_cfg(), {}, on_tpu_vm=False).kwargs is None
    assert plan(_cfg(), {"HOME": "/root"}, on_tpu_vm=False).source == "none"
    assert plan(_cfg(num_processes=1), {}, on_tpu_vm=False).kwargs is None
    assert plan(_cfg(), {"JAX_NUM_PROCESSES": "1"}, on_tpu_vm=False).kwargs is None


def test_config_wins_and_is_all_or_nothing():
    p = plan(_cfg("10.0.0.1:1234", 4, 2, timeout=60), {**SLURM_STEP, "JAX_NUM_PROCESSES": "9"}, on_tpu_vm=True)
    assert p.source == "config"
    assert p.kwargs == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 2,
        "cluster_detection_method": "deactivate",
    }
    with pytest.raises(
        ConfigError,
        match=r"distributed.num_processes=4 is set but "
        r"distributed.coordinator_address, distributed.process_id",
    ):
        plan(_cfg(num_processes=4), {}, on_tpu_vm=False)
    with pytest.raises(ConfigError, match=r"distributed.process_id\b.*set all three"):
        plan(_cfg("h:1", 2), {}, on_tpu_vm=False)


def test_generic_env_and_kubernetes_index():
    env = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "5"}
    p = plan(_cfg(), {**env, **SLURM_STEP}, on_tpu_vm=False)
    assert (p.source, p.kwargs["coordinator_address"], p.kwargs["num_processes"], p.kwargs["process_id"]) == (
        "env",
        "h0:1234",
        8,
        5,
    )
    # An indexed Job (JobSet): the pod's index is its process id.
    k8s = {
        "JAX_COORDINATOR_ADDRESS": "run-workers-0-0.run:1234",
        "JAX_NUM_PROCESSES": "4",
        "JOB_COMPLETION_INDEX": "3",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    }
    p = plan(_cfg(), k8s, on_tpu_vm=False)
    assert (p.source, p.kwargs["process_id"], p.kwargs["num_processes"]) == ("kubernetes", 3, 4)
    with pytest.raises(ConfigError, match=r"JAX_NUM_PROCESSES=4 but not JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID"):
        plan(_cfg(), {"JAX_NUM_PROCESSES": "4"}, on_tpu_vm=False)
    with pytest.raises(ConfigError, match=r"JAX_NUM_PROCESSES='four'.*integer"):
        plan(_cfg(), {**env, "JAX_NUM_PROCESSES": "four"}, on_tpu_vm=False)
    with pytest.raises(ConfigError, match=r"JAX_PROCESS_ID=8 is outside 0..7"):
        plan(_cfg(), {**env, "JAX_PROCESS_ID": "8"}, on_tpu_vm=False)


def test_slurm():
    p = plan(_cfg(timeout=77), SLURM_STEP, on_tpu_vm=False)
    # 16 tasks on 2 nodes: one per GPU, so jax's own SLURM_LOCALID -> one GPU rule applies.
    assert p.source == "slurm" and p.kwargs == {"initialization_timeout": 77, "cluster_detection_method": "slurm"}
    # One task per node: every GPU of the node stays visible to it.
    p = plan(_cfg(), {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, on_tpu_vm=False)
    assert p.kwargs["local_device_ids"] == list(range(8)) and "one process per node" in p.detail
    # A salloc/sbatch shell that did not srun: one process, with a warning.
    batch_shell = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}
    assert plan(_cfg(), batch_shell, on_tpu_vm=False).kwargs is None
    assert plan(_cfg(), {**SLURM_STEP, "SLURM_NTASKS": "1"}, on_tpu_vm=False).kwargs is None


def test_openmpi_tpu_and_kubernetes_api():
    ompi = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "4"}
    assert plan(_cfg(), ompi, on_tpu_vm=False).kwargs["cluster_detection_method"] == "ompi"
    p = plan(_cfg(timeout=9), {}, on_tpu_vm=True)
    assert (p.source, p.kwargs, p.detail) == ("tpu", {"initialization_timeout": 9}, "TPU VM metadata")
    gke = {
        "TPU_WORKER_HOSTNAMES": "a,b",
        "TPU_WORKER_ID": "1",
        "MEGASCALE_NUM_SLICES": "2",
        "JOB_COMPLETION_INDEX": "1",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    }
    assert plan(_cfg(), gke, on_tpu_vm=True).detail == "GKE, 2 slices"
    # TPU variables on a machine without TPUs are not a TPU slice.
    assert plan(_cfg(), {"TPU_WORKER_HOSTNAMES": "a,b"}, on_tpu_vm=False).kwargs is None
    p = plan(_cfg(), {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"}, on_tpu_vm=False)
    assert p.source == "kubernetes" and "coordinator_address" not in p.kwargs


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from meshtrain.trainer.config.schema import DistributedConfig
    from meshtrain.trainer.run.distributed import initialize

    variant, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if variant == "config":
        cfg = DistributedConfig(f"127.0.0.1:{port}", 2, pid, 30, 20)
    else:  # the launcher's environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
        cfg = DistributedConfig(None, None, None, 30, 20)
    initialize(cfg)
    initialize(cfg)  # a second call is a no-op

    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    # Global array [1, 2, ..., 8]: each process supplies the rows of its own 4 devices.
    local = np.arange(1, 9, dtype=np.float32)[4 * jax.process_index():4 * jax.process_index() + 4]
    x = jax.make_array_from_process_local_data(sharding, local, (8,))
    psum = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "x"), mesh=mesh, in_specs=P("x"),
                                 out_specs=P()))(x)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    print(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                      "device_count": jax.device_count(), "local": jax.local_device_count(),
                      "psum": float(psum.addressable_data(0)[0]), "sum": float(total.addressable_data(0)),
                      "collectives": jax.config.jax_cpu_collectives_implementation}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes on localhost
@pytest.mark.parametrize("variant", ["config", "env"])
def test_two_processes_on_localhost(variant):
    port = _free_port()
    launcher_vars = (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "SLURM_JOB_ID",
        "OMPI_MCA_orte_hnp_uri",
        "JOB_COMPLETION_INDEX",
        "KUBERNETES_SERVICE_HOST",
    )
    base = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    base.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = []
    for pid in range(2):
        env = dict(base)
        if variant == "env":
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, variant, str(port), str(pid)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=50)
            assert proc.returncode == 0, err[-3000:]
            assert f"meshtrain: distributed via {variant} " in err, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert sorted(r["process_index"] for r in results) == [0, 1]
    for r in results:
        assert (r["process_count"], r["device_count"], r["local"]) == (2, 8, 4)
        assert r["psum"] == r["sum"] == 36.0
        assert r["collectives"] == "gloo"
