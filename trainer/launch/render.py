"""Launch recipes: the script or manifest that runs an experiment on its hardware, one
`meshtrain train` process per host, from the experiment's `hardware:` section and configs/hardware.yaml.
The templates (templates/*.tmpl) are package data, read through importlib.resources.

The processes find each other without further settings: on TPUs from the TPU metadata or GKE's
variables, elsewhere from the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID the
recipe sets (trainer/run/distributed.py reads them).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import string
import textwrap
from collections.abc import Sequence
from importlib import resources

from meshtrain.trainer.config.hardware import (
    HardwareSpec,
    chips_in_topology,
    hardware_spec,
    parse_topology,
)
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError, UserError

TEMPLATES = resources.files("meshtrain.trainer.launch") / "templates"
RECIPES = {
    "tpu-vm": ("tpu_vm.sh.tmpl", ("tpu",)),
    "jobset": ("jobset.yaml.tmpl", ("tpu", "gpu")),
    "slurm": ("slurm.sbatch.tmpl", ("gpu",)),
}
TPU_COORDINATOR_PORT = 8482  # jax's GceTpuCluster / GkeTpuCluster default
DEFAULT_PORT = 8482


class _Template(string.Template):
    """`@@name` placeholders, so the shell's own `$VAR` and `${VAR}` pass through untouched."""

    delimiter = "@@"


@dataclasses.dataclass(frozen=True)
class LaunchShape:
    """How many processes a run takes and how they sit on hosts and slices."""

    spec: HardwareSpec
    num_chips: int
    num_slices: int
    hosts_per_slice: int
    chips_per_host: int
    topology_dims: str | None  # TPU: '12x16x16' (the part GKE's gke-tpu-topology label takes)

    @property
    def num_processes(self) -> int:
        return self.num_slices * self.hosts_per_slice


def launch_shape(cfg: ExperimentConfig) -> LaunchShape:
    """Processes = chips / chips per host: chips from hardware.topology x num_slices on TPUs, from
    hardware.chips elsewhere; a ConfigError when they are not known or do not fill whole hosts."""
    hw = cfg.hardware
    spec = hardware_spec(hw.kind)
    if spec.platform == "tpu":
        if hw.topology is None:
            raise ConfigError(
                f"hardware.topology is null: a launch recipe for {hw.kind} needs the slice "
                f"shape, e.g. hardware.topology={spec.tpu_topology_prefix}:2x2x4"
            )
        dims = parse_topology(hw.topology)[1]
        per_slice, slices = chips_in_topology(hw.topology), hw.num_slices
        dims_text = "x".join(map(str, dims))
    else:
        if hw.chips is None:
            raise ConfigError(
                f"hardware.chips is null: a launch recipe for {hw.kind} needs the number of "
                f"{'GPUs' if spec.platform == 'gpu' else 'chips'} in the run, e.g. "
                f"hardware.chips={spec.chips_per_host * 2}"
            )
        per_slice, slices, dims_text = hw.chips, 1, None
    per_host = min(spec.chips_per_host, per_slice)
    if per_slice % per_host:
        what = f"hardware.topology={hw.topology} ({per_slice} chips)" if hw.topology else f"hardware.chips={per_slice}"
        raise ConfigError(
            f"{what} does not fill whole {hw.kind} hosts of {spec.chips_per_host} chips: "
            f"use a multiple of {spec.chips_per_host}"
        )
    return LaunchShape(spec, per_slice * slices, slices, per_slice // per_host, per_host, dims_text)


def _k8s_name(name: str) -> str:
    """A DNS-1035 label short enough that pod hostnames (<name>-<job>-<i>-<j>) stay under 63 chars."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    label = re.sub(r"^[^a-z]+", "", label)[:40].rstrip("-")
    return label or "meshtrain"


def train_argv(
    experiment: str | None, overrides: Sequence[str], gin_files: Sequence[str] = (), gin_params: Sequence[str] = ()
) -> list[str]:
    """The command every process runs."""
    argv = ["meshtrain", "train", *([experiment] if experiment else []), *overrides]
    for path in gin_files:
        argv += ["--gin_file", path]
    for param in gin_params:
        argv += ["--gin_param", param]
    return argv + ["--no-progress"]


def _indent(lines: Sequence[str], spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else "" for line in lines)


def render(
    cfg: ExperimentConfig,
    recipe: str,
    argv: Sequence[str],
    *,
    image: str = "IMAGE",
    port: int | None = None,
    render_command: str = "meshtrain launch",
) -> str:
    """The text of `recipe` for this experiment; `argv` is what each process runs (train_argv)."""
    if recipe not in RECIPES:
        raise UserError(f"--recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    template_name, platforms = RECIPES[recipe]
    spec = hardware_spec(cfg.hardware.kind)
    if spec.platform not in platforms:
        suggest = [name for name, (_, p) in RECIPES.items() if spec.platform in p]
        raise UserError(
            f"--recipe {recipe} is for {' and '.join(p.upper() for p in platforms)} hosts, but "
            f"hardware.kind={spec.kind} is a {spec.platform.upper()}"
            + (
                f": use --recipe {' or '.join(suggest)}"
                if suggest
                else ": no launch recipe runs CPU-only hosts (run `meshtrain train` on the machine)"
            )
        )
    shape = launch_shape(cfg)
    hw = cfg.hardware
    hardware_desc = (
        f"{spec.kind}, topology {hw.topology} x {shape.num_slices} slice(s) = {shape.num_chips} chips"
        if spec.platform == "tpu"
        else f"{spec.kind} x {shape.num_chips} GPUs"
    )
    experiment_desc = f"{cfg.name}: {shlex.join(argv)}"
    name = _k8s_name(cfg.name)
    values = dict(
        render_command=render_command,
        experiment_desc=experiment_desc,
        hardware_desc=hardware_desc,
        num_processes=shape.num_processes,
        num_slices=shape.num_slices,
        hosts_per_slice=shape.hosts_per_slice,
        chips_per_host=shape.chips_per_host,
        num_chips=shape.num_chips,
        job_name=name,
        tpu_name=name,
        train_command=shlex.join(argv),
        train_command_quoted=shlex.quote(shlex.join(argv)),
    )
    if recipe == "tpu-vm":
        values["create_command"] = _tpu_create_command(spec, shape, name)
    elif recipe == "slurm":
        values["coordinator_port"] = (
            str(port) if port is not None else "${JAX_COORDINATOR_PORT:-$((SLURM_JOB_ID % 4096 + 61440))}"
        )
    else:
        values.update(_jobset_values(spec, shape, name, argv, image, port or DEFAULT_PORT))
    text = _Template((TEMPLATES / template_name).read_text()).substitute(values)
    return re.sub(r"\n{3,}", "\n\n", text)


def _tpu_accelerator_type(spec: HardwareSpec, chips_per_slice: int) -> str:
    """'v4-6144' for 3072 v4 chips (v3, v4, v5p count TensorCores, 2 per chip); 'v5litepod-16'."""
    count = chips_per_slice * (2 if spec.tpu_type_counts == "cores" else 1)
    return f"{spec.tpu_accelerator_type}-{count}"


def _tpu_create_command(spec: HardwareSpec, shape: LaunchShape, name: str) -> str:
    accelerator = _tpu_accelerator_type(spec, shape.num_chips // shape.num_slices)
    shape_note = (
        f"\n#   (--type {spec.tpu_accelerator_type} --topology {shape.topology_dims} instead of "
        f"--accelerator-type pins the slice's shape)"
    )
    if shape.num_slices == 1:
        return (
            f'gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" '
            f"--accelerator-type {accelerator} --version {spec.tpu_runtime_version}" + shape_note
        )
    return (
        f'gcloud compute tpus queued-resources create "$TPU_NAME" --zone "$ZONE" '
        f'--node-count {shape.num_slices} --node-prefix "$TPU_NAME" '
        f"--accelerator-type {accelerator} --runtime-version {spec.tpu_runtime_version}" + shape_note
    )


def _jobset_values(
    spec: HardwareSpec, shape: LaunchShape, name: str, argv: Sequence[str], image: str, port: int
) -> dict[str, str]:
    command = "[" + ", ".join(json.dumps(a) for a in argv) + "]"
    env = ["env:", "- name: PYTHONUNBUFFERED", '  value: "1"']
    if spec.platform == "tpu":
        accelerator = _tpu_accelerator_type(spec, shape.num_chips // shape.num_slices)
        coordinator = (
            f"GKE gives every pod of a TPU slice TPU_WORKER_HOSTNAMES and TPU_WORKER_ID (and "
            f"MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID, MEGASCALE_COORDINATOR_ADDRESS when the "
            f"JobSet spans several slices); jax.distributed.initialize() reads them (meshtrain's "
            f'"tpu" source, jax\'s GkeTpuCluster) and uses worker 0 of slice 0, port '
            f"{TPU_COORDINATOR_PORT}, as coordinator."
        )
        extra = [
            "Or with xpk (https://github.com/AI-Hypercomputer/xpk), which writes a JobSet like this one:",
            f"  xpk workload create --cluster CLUSTER --workload {name} --tpu-type {accelerator} "
            f"--num-slices {shape.num_slices} \\",
            f"    --docker-image {image} --command {shlex.quote(shlex.join(argv))}",
        ]
        annotations = [
            "annotations:",
            "  alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool  # one slice per node pool",
        ]
        pod = [
            "hostNetwork: true",
            "dnsPolicy: ClusterFirstWithHostNet",
            "nodeSelector:",
            f"  cloud.google.com/gke-tpu-accelerator: {spec.gke_accelerator}",
            f"  cloud.google.com/gke-tpu-topology: {shape.topology_dims}",
        ]
        container = [
            "securityContext:",
            "  privileged: true  # TPU device access (needed before GKE 1.28)",
            "ports:",
            "- containerPort: 8471  # TPU runtime",
            "- containerPort: 8080  # multislice (DCN)",
            f"- containerPort: {TPU_COORDINATOR_PORT}  # jax.distributed coordinator",
            *env,
            "resources:",
            "  limits:",
            f"    google.com/tpu: {shape.chips_per_host}",
        ]
        replicated = "slice"
    else:
        replicated = "workers"
        address = f"{name}-{replicated}-0-0.{name}:{port}"
        coordinator = (
            f"pod 0, {address}, set as JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES="
            f"{shape.num_processes}; each pod's process id is its JOB_COMPLETION_INDEX, which "
            f'Kubernetes sets in an Indexed Job (meshtrain\'s "kubernetes" source).'
        )
        extra = [
            "GPU interconnect (GPUDirect-TCPX/TCPXO/RDMA on GKE A3/A4 machines) needs the node pool's",
            "NCCL plugin and its extra volumes and variables; see the GKE docs for the machine type.",
        ]
        annotations = []
        pod = ["nodeSelector:", f"  cloud.google.com/gke-accelerator: {spec.gke_accelerator}"]
        container = [
            "ports:",
            f"- containerPort: {port}  # jax.distributed coordinator",
            *env,
            "- name: JAX_COORDINATOR_ADDRESS",
            f'  value: "{address}"',
            "- name: JAX_NUM_PROCESSES",
            f'  value: "{shape.num_processes}"',
            "resources:",
            "  limits:",
            f"    nvidia.com/gpu: {shape.chips_per_host}",
        ]
    return dict(
        coordinator_desc=textwrap.fill(
            coordinator, 100, initial_indent=" " * 15, subsequent_indent="#" + " " * 14, break_on_hyphens=False
        ).lstrip(),
        replicated_job=replicated,
        image=image,
        train_command_yaml=command,
        extra_comment="".join(f"# {line}\n" for line in extra),
        annotations="\n" + _indent(annotations, 2) if annotations else "",
        pod_spec_extra=_indent(pod, 12),
        container_extra=_indent(container, 14),
    )
