"""Peak FLOP/s and prices: what `meshtrain cost` and the live tracker divide by and multiply with.

peak_flops(spec, "bfloat16") is the dense peak of one chip for matmuls in a dtype, from
configs/hardware.yaml; on CPU it is measured once by a matmul benchmark and cached in
~/.cache/meshtrain/cpu_peak.json. price_per_chip_hour(spec, "on_demand") is USD per chip-hour.
"""

from __future__ import annotations

import datetime
import json
import os
import platform as platform_module
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from meshtrain.trainer.config.errors_fmt import did_you_mean
from meshtrain.trainer.config.hardware import (
    HARDWARE_YAML,
    PRICE_TIERS,
    HardwareSpec,
    is_number,
)
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.storage.atomic import write_atomic

_DTYPE_FIELDS = {
    "bfloat16": "peak_bf16_flops",
    "bf16": "peak_bf16_flops",
    "float16": "peak_bf16_flops",
    "fp16": "peak_bf16_flops",
    "float32": "peak_f32_flops",
    "f32": "peak_f32_flops",
    "fp32": "peak_f32_flops",
}


def _canonical_dtype(dtype: object) -> str:
    name = str(getattr(dtype, "name", dtype)).lower()
    if name not in _DTYPE_FIELDS:
        raise ConfigError(f"dtype {name!r}: no peak FLOP/s for it; known: bfloat16, float16, float32")
    return "float32" if _DTYPE_FIELDS[name] == "peak_f32_flops" else "bfloat16"


def peak_field(dtype: object) -> str:
    """The hardware.yaml field holding the peak for `dtype`: peak_bf16_flops or peak_f32_flops."""
    return _DTYPE_FIELDS[_canonical_dtype(dtype)]


def peak_is_measured(spec: HardwareSpec, dtype: object) -> bool:
    """Whether peak_flops(spec, dtype) comes from the matmul benchmark (no figure in the table)."""
    return getattr(spec, peak_field(dtype)) is None and spec.platform == "cpu"


def peak_source(spec: HardwareSpec, dtype: object) -> str:
    """Where peak_flops(spec, dtype) comes from, as reports say it."""
    return (
        "measured on this machine by a matmul benchmark, cached"
        if peak_is_measured(spec, dtype)
        else "configs/hardware.yaml"
    )


def peak_flops(spec: HardwareSpec, dtype: object = "bfloat16") -> float:
    """Dense peak FLOP/s of one chip of `spec` for matmuls in `dtype` (bfloat16/float16 share the
    16-bit rate; float32 is the FP32 rate). On cpu the table has none: it is measured on this
    machine once (measured_cpu_peak_flops) and cached. Elsewhere a missing figure (float32 on TPUs,
    which Google does not publish) is a ConfigError saying how to give one."""
    field = peak_field(dtype)
    value = getattr(spec, field)
    if value is not None:
        return float(value)
    if spec.platform == "cpu":
        return measured_cpu_peak_flops(_canonical_dtype(dtype))
    raise ConfigError(
        f"{spec.kind} has no published {_canonical_dtype(dtype)} peak in {HARDWARE_YAML.name} "
        f"({field} is null): give one with --peak-tflops, or compute in bfloat16"
    )


def price_per_chip_hour(spec: HardwareSpec, tier: str = "on_demand") -> float | None:
    """USD per chip-hour of `tier` (on_demand, spot, committed_1y, committed_3y), None when unknown."""
    if tier not in PRICE_TIERS:
        raise ConfigError(
            f"price tier {tier!r}: expected one of {', '.join(PRICE_TIERS)}{did_you_mean(tier, PRICE_TIERS)}"
        )
    price = spec.prices.get(tier)
    return None if price is None else price.usd_per_chip_hour


# The share of a GPU's memory a meshtrain run lets JAX's allocator pool: train() sets
# XLA_CLIENT_MEM_FRACTION to it (trainer/run/memory_check.py, pool_gpu_memory) unless the
# environment sets either name jaxlib reads (its xla_client takes the deprecated
# XLA_PYTHON_CLIENT_MEM_FRACTION too, and refuses both at once). JAX's own default is 0.75
# (docs.jax.dev, "GPU memory allocation"); MaxText's GPU launcher uses 0.85
# (tools/orchestration/gpu_multi_process_run.sh). The rest holds the CUDA context, NCCL's buffers
# and the libraries' workspaces. `meshtrain cost` and `meshtrain plan` fit a GPU run into this pool.
GPU_MEMORY_FRACTION = 0.85
GPU_MEMORY_FRACTION_ENV = "XLA_CLIENT_MEM_FRACTION"
GPU_MEMORY_FRACTION_ENVS = (GPU_MEMORY_FRACTION_ENV, "XLA_PYTHON_CLIENT_MEM_FRACTION")


def memory_limit(spec: HardwareSpec) -> tuple[int | None, str]:
    """(bytes one chip of `spec` gives a run, what they are): "hbm" on a TPU, "gpu pool" on a GPU
    (GPU_MEMORY_FRACTION of its HBM), "host" on cpu (this machine's memory); None when unknown."""
    if spec.hbm_bytes is None:
        return host_memory_bytes(), "host"
    if spec.platform == "gpu":
        return int(spec.hbm_bytes * GPU_MEMORY_FRACTION), "gpu pool"
    return spec.hbm_bytes, "hbm"


def host_memory_bytes() -> int | None:
    """Physical memory of this machine (what a cpu 'chip' has instead of HBM), None if unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# The CPU's peak, measured: a matmul benchmark run once per CPU model and core count, then cached

CPU_PEAK_SECONDS = 1.5  # time spent measuring one dtype (split over a few matrix sizes)
_CPU_MATMUL_SIZES = (512, 768, 1024)


def cpu_peak_cache_path() -> Path:
    """Where measured CPU peaks are kept: $MESHTRAIN_CPU_PEAK_CACHE, else ~/.cache/meshtrain/cpu_peak.json."""
    return Path(os.environ.get("MESHTRAIN_CPU_PEAK_CACHE") or "~/.cache/meshtrain/cpu_peak.json").expanduser()


def cpu_identity() -> str:
    """The cache key: CPU model name and the cores this process may use ('AMD EPYC x 2 cores')."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    model = model or platform_module.processor() or platform_module.machine() or "unknown cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} x {cores} cores"


def measure_cpu_matmul_flops(dtype: str = "float32", seconds: float = CPU_PEAK_SECONDS) -> tuple[float, int]:
    """(best FLOP/s, matrix size) of square matmuls in `dtype` on JAX's CPU backend, all cores,
    each size run for seconds / len(sizes) after one compile-and-warm-up call."""
    device = jax.devices("cpu")[0]
    matmul = jax.jit(lambda a, b: a @ b)
    best, best_size = 0.0, 0
    for size in _CPU_MATMUL_SIZES:
        a = jax.device_put(jnp.ones((size, size), dtype), device)
        b = jax.device_put(jnp.full((size, size), 0.5, dtype), device)
        matmul(a, b).block_until_ready()
        deadline, runs = time.perf_counter() + seconds / len(_CPU_MATMUL_SIZES), 0
        while runs < 3 or time.perf_counter() < deadline:
            start = time.perf_counter()
            matmul(a, b).block_until_ready()
            flops = 2 * size**3 / (time.perf_counter() - start)
            if flops > best:
                best, best_size = flops, size
            runs += 1
    return best, best_size


def _cached(entry_name: str, value_key: str, measure, refresh: bool) -> float:
    """One measurement of this machine (CPU model and core count) kept in the cache file: read back
    when present, else measure() -> (value, details) is run and stored with the time and jax version."""
    path, key = cpu_peak_cache_path(), cpu_identity()
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key, {}).get(entry_name) if isinstance(cache.get(key), dict) else None
    if not refresh and isinstance(entry, dict) and is_number(entry.get(value_key)) and entry[value_key] > 0:
        return float(entry[value_key])
    start = time.perf_counter()
    value, details = measure()
    cache.setdefault(key, {})[entry_name] = {
        value_key: value,
        **details,
        "seconds": round(time.perf_counter() - start, 2),
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(cache, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass  # A read-only home still gets a (re-measured) figure, just not a cached one.
    return value


def measured_cpu_peak_flops(dtype: str = "float32", *, refresh: bool = False) -> float:
    """This machine's matmul FLOP/s in `dtype`: from the cache when this CPU (model and core count)
    was measured before, else measured now (measure_cpu_matmul_flops, ~CPU_PEAK_SECONDS) and cached.
    Delete the cache file (cpu_peak_cache_path) or pass refresh=True to measure again, e.g. after a
    measurement taken while the machine was busy."""
    dtype = _canonical_dtype(dtype)

    def measure():
        flops, size = measure_cpu_matmul_flops(dtype)
        return flops, {"matrix": size}

    return _cached(dtype, "flops", measure, refresh)


_COPY_ELEMENTS = 16 * 2**20  # 64 MiB of float32: far beyond any cache


def measure_cpu_memory_bandwidth(seconds: float = 0.5) -> float:
    """Bytes/s an elementwise op streams through host memory on JAX's CPU backend (read + write of
    a 64 MiB array, best of repeated runs)."""
    step = jax.jit(lambda x: x * 1.0001)
    x = jnp.ones((_COPY_ELEMENTS,), jnp.float32)
    step(x).block_until_ready()
    best, deadline, runs = 0.0, time.perf_counter() + seconds, 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        step(x).block_until_ready()
        best = max(best, 2 * 4 * _COPY_ELEMENTS / (time.perf_counter() - start))
        runs += 1
    return best


def memory_bandwidth(spec: HardwareSpec, *, refresh: bool = False) -> float:
    """Bytes/s of one chip's memory: hbm_bandwidth_bytes_per_s, or on cpu measured once and cached
    beside the peak (measure_cpu_memory_bandwidth)."""
    if spec.hbm_bandwidth_bytes_per_s is not None:
        return float(spec.hbm_bandwidth_bytes_per_s)
    if spec.platform == "cpu":
        return _cached("memory", "bytes_per_s", lambda: (measure_cpu_memory_bandwidth(), {}), refresh)
    raise ConfigError(f"{spec.kind} has no hbm_bandwidth_bytes_per_s in {HARDWARE_YAML.name}")
