"""An experiment's step as the performance model sees it: its workload, its layout over a chip count,
the rates of the chip it runs on, and the prediction (trainer/planning/performance.py) with the
dtype, attention kernel, microbatching and remat policy the run would use there."""

from __future__ import annotations

import jax.numpy as jnp

from meshtrain.model.attention_kernels import attention_kernel
from meshtrain.model.dtypes import compute_dtype
from meshtrain.trainer.config.batch_schedule import batch_size_at, microbatches_at
from meshtrain.trainer.config.hardware import EfficiencyFamily, HardwareSpec, efficiency_family
from meshtrain.trainer.config.mesh_shape import mesh_split
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.planning.calibrate import Observation
from meshtrain.trainer.planning.peaks import memory_bandwidth, peak_flops
from meshtrain.trainer.planning.performance import Layout, StepPrediction, Workload, predict_step


def attention_kind(cfg: ExperimentConfig, platform: str) -> str:
    """flash or dense: what the experiment's model.attention runs as on `platform`."""
    kernel = attention_kernel(cfg.model.attention, platform, cfg.data.seq_len)
    return "dense" if kernel == "dot_product" else "flash"


def chip_rates(cfg: ExperimentConfig, spec: HardwareSpec) -> tuple[float, float]:
    """(peak FLOP/s in the dtype `cfg` computes in on `spec`, memory bytes/s) of one chip."""
    return peak_flops(spec, compute_dtype(cfg.model, spec.platform).name), memory_bandwidth(spec)


def workload_of(cfg: ExperimentConfig, platform: str, batch: int | None = None) -> Workload:
    """The step `cfg` trains at its final batch size (or `batch` sequences), in the dtype it computes
    in on `platform`."""
    sequences = batch if batch is not None else batch_size_at(cfg.train, cfg.train.steps)
    compute_bytes = compute_dtype(cfg.model, platform).itemsize
    return Workload(
        model=cfg.model,
        seq_len=cfg.data.seq_len,
        batch=sequences,
        compute_bytes=compute_bytes,
        gradient_bytes=compute_bytes,
        param_bytes=jnp.dtype(cfg.model.param_dtype).itemsize,
    )


def layout_of(cfg: ExperimentConfig, chips: int, platform: str) -> Layout:
    """`cfg`'s mesh resolved over `chips` (ConfigError when it cannot be), its microbatching at the
    final batch size, remat policy and attention kernel."""
    ici, dcn = mesh_split(cfg, chips)
    return Layout(
        ici=ici,
        dcn=dcn,
        microbatches=microbatches_at(cfg.train, batch_size_at(cfg.train, cfg.train.steps)),
        remat=cfg.model.remat,
        attention=attention_kind(cfg, platform),
    )


def predict_experiment(
    cfg: ExperimentConfig,
    spec: HardwareSpec,
    chips: int,
    family: EfficiencyFamily | None = None,
    peak: float | None = None,
) -> StepPrediction:
    """predict_step for an experiment on `chips` chips of `spec`: its family's efficiencies unless
    `family` is given (e.g. a calibrated one), the table's peak unless `peak` is (--peak-tflops)."""
    table_peak, bandwidth = chip_rates(cfg, spec)
    return predict_step(
        workload_of(cfg, spec.platform),
        layout_of(cfg, chips, spec.platform),
        spec,
        family or efficiency_family(spec),
        peak or table_peak,
        bandwidth,
    )


def observed_step(cfg: ExperimentConfig, spec: HardwareSpec, chips: int, step_s: float, label: str) -> Observation:
    """A measured step of `cfg` on `chips` chips of `spec`, for calibrate.fit_family."""
    peak, bandwidth = chip_rates(cfg, spec)
    return Observation(
        work=workload_of(cfg, spec.platform),
        layout=layout_of(cfg, chips, spec.platform),
        spec=spec,
        peak_flops=peak,
        memory_bytes_per_s=bandwidth,
        step_s=step_s,
        label=label,
    )
