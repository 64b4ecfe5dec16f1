"""Compiling an experiment's real train step for a TPU topology on any machine, and what XLA says of it.

The step is the real one (trainer/step/partition.py: sharded state and batch, donated state, the
largest batch of the ramp), lowered against abstract arrays and compiled by libtpu for compile-only
devices of the topology (`jax.experimental.topologies`): no TPU, no allocation. The CompileReport
holds, per chip, XLA's argument, output, aliased (donated), temporary and peak bytes against the
chip's HBM (configs/hardware.yaml), the step's FLOPs counted from its jaxpr, and the compile time.
Out of memory on the target is a report with `fits=False` and XLA's message, not an exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import time
from typing import Any

import jax
from jax.experimental import topologies

from meshtrain.model.dtypes import compute_dtype
from meshtrain.trainer.config.batch_schedule import batch_sizes, microbatches_at
from meshtrain.trainer.config.hardware import (
    HardwareSpec,
    chips_in_topology,
    hardware_kinds,
    hardware_spec,
    parse_topology,
)
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError, UserError
from meshtrain.trainer.planning.program_flops import jaxpr_flops
from meshtrain.trainer.step import partition

# Environment for libtpu when it only compiles (set only where unset, only in this command). Without
# these, loading libtpu on a machine with no TPU prints a screenful of metadata-server warnings
# (TPU_ACCELERATOR_TYPE, set from the topology, and TPU_WORKER_HOSTNAMES quiet them; neither changes
# the devices of an explicitly named topology), and takes /tmp/libtpu_lockfile, so a second process
# using libtpu at the same time (another compile, a test) fails with "Internal error when accessing
# libtpu multi-process lockfile".
_COMPILE_ONLY_ENV = {
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
}

# libtpu names: the chip_config_name that makes one JAX device per chip as Cloud TPU VMs run these
# generations (megacore: both TensorCores of a v4/v5p chip as one device). Without it a v4:2x2x1
# topology has 8 devices, one per TensorCore, which is not how a v4 slice trains.
_MEGACORE_PREFIXES = ("v4", "v5")


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """XLA's memory analysis of one chip's program, in bytes.

    peak is XLA's own `peak_memory_in_bytes` (the most bytes live at once: arguments, outputs and
    temporaries together, donated arguments counted once). argument + output - alias + temp is only
    a fallback where XLA gives no peak: on TPU the temp figure is not the live peak (a chain of
    matmuls reports temp 0 with a peak of four arrays; a train step reports temp above its peak).
    """

    argument_bytes_per_chip: int | None = None
    output_bytes_per_chip: int | None = None
    alias_bytes_per_chip: int | None = None
    temp_bytes_per_chip: int | None = None
    generated_code_bytes_per_chip: int | None = None
    peak_bytes_per_chip: int | None = None
    peak_source: str | None = None


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What `meshtrain compile` prints (as a table, or `as_dict()` with --json)."""

    experiment: str
    topology: str  # with its generation prefix: v4:2x2x1
    num_slices: int
    hardware_kind: str
    device_kind: str
    num_devices: int
    num_chips: int
    devices_per_chip: int
    mesh: dict[str, int]
    batch_size: int  # the largest of the ramp: the one compiled
    seq_len: int
    microbatches: int
    compute_dtype: str
    hbm_bytes_per_chip: int | None
    lower_seconds: float
    compile_seconds: float
    fits: bool
    error: str | None  # XLA's message when it ran out of memory
    flops_per_step_per_chip: float  # matmuls counted from the jaxpr, every layer and microbatch
    xla_flops_per_chip: float | None  # XLA's cost analysis (counts a loop body once)
    memory: CompiledMemory

    def as_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "memory"}
        return {**fields, **dataclasses.asdict(self.memory)}

    @property
    def flops_per_token(self) -> float:
        """Hardware FLOPs per token: the compiled step's matmul FLOPs (all chips) over its tokens."""
        return self.flops_per_step_per_chip * self.num_chips / (self.batch_size * self.seq_len)


def resolve_target(
    cfg: ExperimentConfig, topology: str | None, num_slices: int | None
) -> tuple[str, int, HardwareSpec]:
    """(topology name with its generation prefix, number of slices, HardwareSpec of its chips).

    The chip kind comes from the topology's prefix ('v4' -> tpu-v4 in configs/hardware.yaml); a
    bare '2x2x1' takes the prefix of hardware.kind. A hardware.kind naming another TPU is refused.
    `topology` and `num_slices` replace hardware.topology and hardware.num_slices; errors about
    them name the `topology=` / `num_slices=` value given.
    """
    given = topology is not None
    topology = topology if given else cfg.hardware.topology
    num_slices = num_slices if num_slices is not None else cfg.hardware.num_slices
    if topology is None:
        raise UserError("no TPU topology to compile for: give a topology (e.g. v4:2x2x1) or set hardware.topology")
    if not isinstance(num_slices, int) or num_slices < 1:
        raise UserError(f"num_slices={num_slices}: expected a positive number of slices")
    try:
        prefix, dims = parse_topology(topology)
    except ConfigError as error:
        if given:  # say what was given, not the config key that was not used
            raise UserError(str(error).replace("hardware.topology=", "topology ", 1)) from None
        raise
    configured = hardware_spec(cfg.hardware.kind)
    tpus = {spec.tpu_topology_prefix: spec for spec in map(hardware_spec, hardware_kinds()) if spec.platform == "tpu"}
    if prefix is None:
        if configured.platform != "tpu":
            raise UserError(
                f"topology {topology!r} has no TPU generation and hardware.kind="
                f"{cfg.hardware.kind!r} is not a TPU: write it as e.g. v4:{topology}"
            )
        prefix = configured.tpu_topology_prefix
    if prefix not in tpus:
        raise UserError(
            f"topology {topology!r}: unknown TPU generation {prefix!r}; configs/hardware.yaml "
            f"knows {', '.join(sorted(tpus))}"
        )
    spec = tpus[prefix]
    if configured.platform == "tpu" and configured.kind != spec.kind:
        raise UserError(
            f"topology {topology!r} is {spec.kind} but the experiment says hardware.kind="
            f"{cfg.hardware.kind!r}: make them agree"
        )
    return f"{prefix}:{'x'.join(map(str, dims))}", num_slices, spec


def libtpu_available() -> bool:
    """Whether libtpu (the TPU compiler, `pip install -e ".[tpu]"`) can be loaded."""
    path = os.environ.get("TPU_LIBRARY_PATH")
    return bool(path and os.path.isfile(path)) or importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str, num_slices: int, spec: HardwareSpec | None = None) -> list:
    """Compile-only jax devices of `num_slices` slices of `topology` (slice_index set when > 1)."""
    if not libtpu_available():
        raise UserError(
            'meshtrain compile needs libtpu, the TPU compiler, which is not installed: pip install -e ".[tpu]"'
        )
    for name, value in _COMPILE_ONLY_ENV.items():
        os.environ.setdefault(name, value)
    if spec is not None and spec.tpu_accelerator_type:  # e.g. v4:12x16x16 -> v4-6144 (counted in cores)
        cores_or_chips = chips_in_topology(topology) * (2 if spec.tpu_type_counts == "cores" else 1)
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{spec.tpu_accelerator_type}-{cores_or_chips}")
    if not os.environ.get("JAX_PLATFORMS"):
        # Nothing runs here: keep jax off any local accelerator (and off libtpu as a backend).
        jax.config.update("jax_platforms", "cpu")
    kwargs: dict[str, Any] = {"num_slices": num_slices}
    if topology.split(":")[0] in _MEGACORE_PREFIXES:
        kwargs["chip_config_name"] = "megacore"
    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices)
    except Exception as error:  # libtpu's INVALID_ARGUMENT for names it rejects (e.g. v4:3x3x3)
        if "INVALID_ARGUMENT" not in str(error):
            raise
        raise UserError(f"topology {topology!r}: libtpu rejects it: {_first_line(error)}") from None


def compile_stages(
    cfg: ExperimentConfig, topology: str | None = None, num_slices: int | None = None
) -> list[CompileReport]:
    """compile_report for every distinct batch size of the schedule (each is its own program: a
    batch ramp recompiles at each stage), smallest first."""
    return [compile_report(cfg, topology, num_slices, size) for size in sorted(set(batch_sizes(cfg.train)))]


def compile_report(
    cfg: ExperimentConfig, topology: str | None = None, num_slices: int | None = None, batch_size: int | None = None
) -> CompileReport:
    """Compiles cfg's train step for the topology (default hardware.topology x hardware.num_slices)
    at a batch of `batch_size` sequences (default: the largest of the schedule).

    Never through JAX's persistent compilation cache: the compile-only TPU client cannot load an
    executable back ("PjRtCompiler must be constructed with a Client to call
    DeserializeLoadedExecutable", jaxlib 0.10), so an entry would only cost disk and a warning at
    every later compile."""
    with _without_compilation_cache():
        return _compile_report(cfg, topology, num_slices, batch_size or max(batch_sizes(cfg.train)))


@contextlib.contextmanager
def _without_compilation_cache():
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


def _compile_report(
    cfg: ExperimentConfig, topology: str | None, num_slices: int | None, batch_size: int
) -> CompileReport:
    topology, num_slices, spec = resolve_target(cfg, topology, num_slices)
    dtype = compute_dtype(cfg.model, spec.platform).name  # 'auto' as the TPU would run it, not this CPU
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))
    devices = topology_devices(topology, num_slices, spec)
    chips = chips_in_topology(topology) * num_slices
    # One device per chip, except where a chip's TensorCores are separate devices with their own HBM
    # (v3: 2 x 16 GiB): there the chip holds that many copies of the per-device program.
    per_chip = len(devices) // chips
    mesh = partition.make_mesh(cfg, devices, num_slices)
    start = time.perf_counter()
    traced = partition.trace_train_step(cfg, mesh, batch_size)
    lowered = traced.lower()
    lower_seconds = round(time.perf_counter() - start, 2)
    flops = jaxpr_flops(traced.jaxpr.jaxpr) / chips
    report = dict(
        experiment=cfg.name,
        topology=topology,
        num_slices=num_slices,
        hardware_kind=spec.kind,
        device_kind=devices[0].device_kind,
        num_devices=len(devices),
        num_chips=chips,
        devices_per_chip=per_chip,
        mesh=dict(mesh.shape),
        batch_size=batch_size,
        seq_len=cfg.data.seq_len,
        microbatches=microbatches_at(cfg.train, batch_size),
        compute_dtype=dtype,
        hbm_bytes_per_chip=spec.hbm_bytes,
        lower_seconds=lower_seconds,
        flops_per_step_per_chip=flops,
    )
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as error:
        if not _is_out_of_memory(error):
            raise
        return CompileReport(
            **report,
            compile_seconds=round(time.perf_counter() - start, 2),
            fits=False,
            error=_xla_message(error),
            xla_flops_per_chip=None,
            memory=CompiledMemory(),
        )
    compile_seconds = round(time.perf_counter() - start, 2)
    memory = compiled_memory(compiled, per_chip)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in older jax
    xla_flops = (cost or {}).get("flops")
    return CompileReport(
        **report,
        compile_seconds=compile_seconds,
        fits=spec.hbm_bytes is None or memory.peak_bytes_per_chip <= spec.hbm_bytes,
        error=None,
        xla_flops_per_chip=None if xla_flops is None else xla_flops * per_chip,
        memory=memory,
    )


def compiled_memory(compiled, devices_per_chip: int = 1) -> CompiledMemory:
    """XLA's memory analysis of a compiled program, per chip (see CompiledMemory)."""
    stats = compiled.memory_analysis()
    peak = getattr(stats, "peak_memory_in_bytes", 0) or 0
    source = "xla peak_memory_in_bytes"
    if peak <= 0:
        peak = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes
        )
        source = "argument + output - alias + temp"
    n = devices_per_chip
    return CompiledMemory(
        argument_bytes_per_chip=stats.argument_size_in_bytes * n,
        output_bytes_per_chip=stats.output_size_in_bytes * n,
        alias_bytes_per_chip=stats.alias_size_in_bytes * n,
        temp_bytes_per_chip=stats.temp_size_in_bytes * n,
        generated_code_bytes_per_chip=stats.generated_code_size_in_bytes * n,
        peak_bytes_per_chip=peak * n,
        peak_source=source,
    )


def _is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _xla_message(error: Exception) -> str:
    """XLA's message without the Python frames jax appends to it."""
    lines = []
    for line in str(error).strip().splitlines():
        if line.startswith("---") or line.startswith("For simplicity, JAX"):
            break
        lines.append(line.rstrip())
    return "\n".join(lines).strip()
