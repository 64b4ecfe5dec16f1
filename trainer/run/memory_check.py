"""Out of memory, said up front in one line instead of a minute later in a stack trace.

Before anything is allocated, the analytic estimate of a training step's memory per device
(trainer/planning/memory.py, the one `meshtrain cost` prints) is held against what the devices have:
an accelerator's own limit where the runtime reports it (memory_stats()["bytes_limit"]), or, on
CPU, half the machine's memory shared by this process's devices. A run that cannot fit stops there with
the breakdown. What the estimate lets through and XLA still cannot allocate comes back as XLA's
RESOURCE_EXHAUSTED, which `out_of_memory` turns into the same kind of line. On a GPU the limit is
the pool `pool_gpu_memory` has JAX allocate, the same share `meshtrain cost` and `plan` fit runs into.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import jax
from jax.sharding import Mesh

from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.formatting import format_bytes
from meshtrain.trainer.planning.memory import memory_per_chip
from meshtrain.trainer.planning.peaks import (
    GPU_MEMORY_FRACTION,
    GPU_MEMORY_FRACTION_ENV,
    GPU_MEMORY_FRACTION_ENVS,
    host_memory_bytes,
)

_ADVICE = (
    "use more devices, a smaller model, model.remat=full or more train.microbatches "
    "(`meshtrain cost` with the same arguments suggests what fits)"
)


# On CPU the devices' buffers share the machine with the process itself, XLA's temporaries and
# whatever else runs there; an estimate near the whole memory ends in the kernel's OOM killer (a
# SIGKILL, no message), so only half of it is counted as the devices'.
_CPU_SHARE = 0.5


class OutOfMemory(UserError):
    """The run needs more memory than its devices have."""


def _device_limit() -> tuple[int, str] | None:
    """(bytes one device can use, what that figure is), None when unknown."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"a {device.device_kind} has"
    host = host_memory_bytes()
    if device.platform == "cpu" and host:
        devices = jax.local_device_count()
        usable = int(host * _CPU_SHARE) // devices
        return usable, f"half this machine's {format_bytes(host)} over {devices} devices leaves each"
    return None


def check_fits(cfg: ExperimentConfig, mesh: Mesh) -> None:
    """Raises OutOfMemory when the estimate of a step exceeds a device's memory."""
    limit = _device_limit()
    if limit is None:
        return
    estimate = memory_per_chip(cfg, dict(mesh.shape))
    available, what = limit
    if estimate.total <= available:
        return
    raise OutOfMemory(
        f"this run needs about {format_bytes(estimate.total)} per device (parameters "
        f"{format_bytes(estimate.params)}, gradients {format_bytes(estimate.grads)}, optimizer "
        f"{format_bytes(estimate.optimizer)}, activations {format_bytes(estimate.activations)}) but {what} "
        f"{format_bytes(available)}: {_ADVICE}"
    )


def out_of_memory(error: Exception) -> OutOfMemory | None:
    """XLA's allocation failure as one line (None for any other error)."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    first = next((line for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), text)
    return OutOfMemory(f"out of device memory: {first.strip()[:300]}: {_ADVICE}")


def device_memory() -> dict[str, int]:
    """Peak and current bytes in use on this process's devices (the largest of them), for the
    metrics of a log step; {} on backends that keep no statistics (the CPU)."""
    stats = [device.memory_stats() or {} for device in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
    in_use = [s["bytes_in_use"] for s in stats if "bytes_in_use" in s]
    return {
        **({"device_peak_bytes": int(max(peaks))} if peaks else {}),
        **({"device_bytes_in_use": int(max(in_use))} if in_use else {}),
    }


def pool_gpu_memory(environ: MutableMapping[str, str]) -> None:
    """On a GPU, has JAX pool the share of memory `meshtrain cost` and `plan` fit the run into (read
    when its GPU backend starts: call it before). Left alone where the environment sets either name
    jaxlib reads: it refuses both at once."""
    if not any(environ.get(name) for name in GPU_MEMORY_FRACTION_ENVS):
        environ[GPU_MEMORY_FRACTION_ENV] = f"{GPU_MEMORY_FRACTION:g}"
