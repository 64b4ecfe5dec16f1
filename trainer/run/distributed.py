"""Joining a multi-process run: JAX's multi-controller runtime (`jax.distributed`), started once per
process before any other JAX call.

Where the coordinator, process count and process id come from, first match wins:

1. config      distributed.coordinator_address + num_processes + process_id (all three, or none)
2. env         JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID; in an indexed Kubernetes
               Job (JobSet) JOB_COMPLETION_INDEX stands in for JAX_PROCESS_ID
3. slurm       SLURM_JOB_ID with SLURM_NTASKS > 1, inside an `srun` step (jax's SlurmCluster reads
               SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID)
4. openmpi     `mpirun`: OMPI_MCA_orte_hnp_uri with OMPI_COMM_WORLD_SIZE > 1 (jax's OmpiCluster)
5. tpu         a Cloud TPU VM: jax's GceTpuCluster (TPU VM metadata) or GkeTpuCluster (GKE:
               TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES, TPU_WORKER_ID; multislice adds
               MEGASCALE_COORDINATOR_ADDRESS, MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID)
6. kubernetes  KUBERNETES_SERVICE_HOST + JOB_COMPLETION_INDEX without JAX_* variables: jax's
               K8sCluster, which asks the Kubernetes API (needs the `kubernetes` package: jax[k8s])

Nothing found: one process, and jax.distributed is not started. A half-given source (config with a
coordinator but no process id, JAX_NUM_PROCESSES without JAX_COORDINATOR_ADDRESS) is a ConfigError
naming what is missing, since guessing would start N independent runs writing one directory.

On CPU, cross-process collectives use gloo (jax_cpu_collectives_implementation, jax's default), so
a multi-process run works on plain hosts, as tests/test_distributed.py shows on localhost.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import resource
import sys
from collections.abc import Mapping
from typing import Any

import jax

from meshtrain.trainer.config.schema import DistributedConfig
from meshtrain.trainer.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

# The generic variables (JAX itself reads JAX_COORDINATOR_ADDRESS; the other two are meshtrain's,
# following the same naming) and Kubernetes' index of a pod in an indexed Job.
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
ENV_K8S_INDEX = "JOB_COMPLETION_INDEX"
_SLURM_STEP = ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
_CONFIG_KEYS = ("coordinator_address", "num_processes", "process_id")


@dataclasses.dataclass(frozen=True)
class JoinPlan:
    """How this process joins the run: `source` names where the settings came from; `kwargs` go
    to jax.distributed.initialize (None: run as a single process, initialize is not called)."""

    source: str
    kwargs: dict[str, Any] | None
    detail: str = ""


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"environment variable {name}={value!r}: expected an integer") from None


def _from_config(cfg: DistributedConfig) -> JoinPlan | None:
    given = {key: getattr(cfg, key) for key in _CONFIG_KEYS}
    if all(v is None for v in given.values()):
        return None
    missing = [f"distributed.{k}" for k, v in given.items() if v is None]
    if missing and not (given["num_processes"] == 1 and given["coordinator_address"] is None):
        have = ", ".join(f"distributed.{k}={v!r}" for k, v in given.items() if v is not None)
        raise ConfigError(
            f"{have} is set but {', '.join(missing)} is not: set all three of "
            f"distributed.coordinator_address, num_processes and process_id, or none "
            f"(to take them from the launcher's environment)"
        )
    if given["num_processes"] == 1:
        return JoinPlan("config", None, "distributed.num_processes=1")
    return JoinPlan(
        "config", dict(given, cluster_detection_method="deactivate"), f"coordinator {given['coordinator_address']}"
    )


def _from_env(env: Mapping[str, str]) -> JoinPlan | None:
    address, count = env.get(ENV_COORDINATOR), env.get(ENV_NUM_PROCESSES)
    pid_name = ENV_PROCESS_ID if ENV_PROCESS_ID in env or ENV_K8S_INDEX not in env else ENV_K8S_INDEX
    pid = env.get(pid_name)
    if count is None and env.get(ENV_PROCESS_ID) is None:
        return None  # JAX_COORDINATOR_ADDRESS alone may pair with a cluster's own count and id.
    if count is not None and _int(count, ENV_NUM_PROCESSES) == 1:
        return JoinPlan("env", None, f"{ENV_NUM_PROCESSES}=1")
    missing = [
        name
        for name, value in ((ENV_COORDINATOR, address), (ENV_NUM_PROCESSES, count), (ENV_PROCESS_ID, pid))
        if value is None
    ]
    if missing:
        have = ", ".join(f"{n}={env[n]}" for n in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if n in env)
        raise ConfigError(
            f"environment has {have} but not {', '.join(missing)}: a multi-process run "
            f"needs {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} (or "
            f"{ENV_K8S_INDEX} in an indexed Kubernetes Job) in every process"
        )
    source = "kubernetes" if pid_name == ENV_K8S_INDEX else "env"
    kwargs = dict(
        coordinator_address=address,
        num_processes=_int(count, ENV_NUM_PROCESSES),
        process_id=_int(pid, pid_name),
        cluster_detection_method="deactivate",
    )
    if not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
        raise ConfigError(f"{pid_name}={pid} is outside 0..{kwargs['num_processes'] - 1} ({ENV_NUM_PROCESSES}={count})")
    return JoinPlan(source, kwargs, f"coordinator {address}, process id from {pid_name}")


def _slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
    """One process per node: every GPU of the node. (Left to itself, jax assumes one process per
    GPU under SLURM and shows each process only GPU SLURM_LOCALID, i.e. GPU 0 of each node.)"""
    if "JAX_LOCAL_DEVICE_IDS" in env:
        return None  # jax reads it itself
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES")
    gpus = env.get("SLURM_GPUS_ON_NODE")
    if (
        nodes is None
        or gpus is None
        or _int(env["SLURM_NTASKS"], "SLURM_NTASKS") != _int(nodes, "SLURM_STEP_NUM_NODES")
    ):
        return None
    return list(range(_int(gpus, "SLURM_GPUS_ON_NODE"))) or None


def plan(cfg: DistributedConfig, env: Mapping[str, str] | None = None, *, on_tpu_vm: bool | None = None) -> JoinPlan:
    """Where this process's coordinator, process count and id come from (see the module doc).

    Pure: reads `env` (default os.environ) and whether this is a Cloud TPU VM (default: what jax
    found at import), calls nothing."""
    env = os.environ if env is None else env
    found = _from_config(cfg) or _from_env(env)
    if found:
        return found
    timeout = {"initialization_timeout": cfg.initialization_timeout_s}
    if "SLURM_JOB_ID" in env and _int(env.get("SLURM_NTASKS", "1"), "SLURM_NTASKS") > 1:
        if not all(name in env for name in _SLURM_STEP):
            logger.warning(
                "SLURM job %s has SLURM_NTASKS=%s but this process was not started by srun "
                "(no %s): running as a single process",
                env["SLURM_JOB_ID"],
                env["SLURM_NTASKS"],
                "/".join(n for n in _SLURM_STEP if n not in env),
            )
            return JoinPlan("none", None, "SLURM allocation without an srun step")
        local = _slurm_local_device_ids(env)
        kwargs = dict(timeout, cluster_detection_method="slurm", **({"local_device_ids": local} if local else {}))
        return JoinPlan(
            "slurm",
            kwargs,
            f"job {env['SLURM_JOB_ID']}, {env['SLURM_NTASKS']} tasks on "
            f"{env.get('SLURM_STEP_NODELIST')}" + (", one process per node" if local else ""),
        )
    if "OMPI_MCA_orte_hnp_uri" in env and _int(env.get("OMPI_COMM_WORLD_SIZE", "1"), "OMPI_COMM_WORLD_SIZE") > 1:
        return JoinPlan(
            "openmpi", dict(timeout, cluster_detection_method="ompi"), f"{env['OMPI_COMM_WORLD_SIZE']} ranks"
        )
    if on_tpu_vm is None:
        on_tpu_vm = _running_on_cloud_tpu_vm()
    if on_tpu_vm:
        gke = "TPU_WORKER_HOSTNAMES" in env or "TPU_PROCESS_ADDRESSES" in env
        slices = env.get("MEGASCALE_NUM_SLICES")
        return JoinPlan(
            "tpu", dict(timeout), ("GKE" if gke else "TPU VM metadata") + (f", {slices} slices" if slices else "")
        )
    if "KUBERNETES_SERVICE_HOST" in env and ENV_K8S_INDEX in env:
        return JoinPlan("kubernetes", dict(timeout), "jax K8sCluster (Kubernetes API)")
    return JoinPlan("none", None, "no launcher found")


def _running_on_cloud_tpu_vm() -> bool:
    """What jax found when it was imported (libtpu and TPU chips on this host)."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(cfg: DistributedConfig) -> None:
    """Joins the run this process belongs to, or does nothing for a single process. Call it once,
    before any other JAX call; later calls (a second run in one process) are no-ops."""

    if jax.distributed.is_initialized():
        return
    how = plan(cfg)
    if how.kwargs is None:
        logger.info("distributed: single process (%s)", how.detail or how.source)
        return
    if how.source == "kubernetes" and how.kwargs.get("coordinator_address") is None:
        if importlib.util.find_spec("kubernetes") is None:  # jax's K8sCluster needs it
            raise ConfigError(
                f"this is an indexed Kubernetes Job ({ENV_K8S_INDEX} is set) but neither "
                f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES} nor the `kubernetes` package is there to find "
                f"the other pods: set {ENV_COORDINATOR} (pod 0's host:port) and {ENV_NUM_PROCESSES} "
                f"({ENV_NUM_PROCESSES}=1 for a single pod), or `pip install jax[k8s]`"
            )
    # jax's own heartbeat ends a process whose peer fell silent with an abort; it is set well past
    # meshtrain's (trainer/run/watchdog.py), which ends the job first, in one line. An abort the
    # runtime still makes (it loses the coordinator within a second) leaves no core file.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    jax_heartbeat = 3 * cfg.heartbeat_timeout_s + 10
    try:
        jax.distributed.initialize(**how.kwargs, heartbeat_timeout_seconds=jax_heartbeat)
    except ValueError as error:  # jax's auto-detection found no coordinator, count or id
        raise UserError(f"distributed: could not start from {how.source} ({how.detail}): {error}") from None
    state = _jax_distributed_state()
    print(
        f"meshtrain: distributed via {how.source} ({how.detail}): process "
        f"{getattr(state, 'process_id', '?')} of {getattr(state, 'num_processes', '?')}, "
        f"coordinator {getattr(state, 'coordinator_address', '?')}",
        file=sys.stderr,
        flush=True,
    )


def _jax_distributed_state():
    """jax's own record of the settings it used (read for the one log line only)."""
    try:
        from jax._src.distributed import global_state
    except ImportError:
        return None
    return global_state
