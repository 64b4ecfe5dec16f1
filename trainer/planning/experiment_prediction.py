"""An experiment's step as the performance model sees it: its workload, its layout over a chip count,
and the prediction (trainer/planning/performance.py) on a kind of chip, with the dtype, attention
kernel, microbatching and remat policy the run would use there."""

from __future__ import annotations

import jax.numpy as jnp

from meshtrain.model.attention_kernels import attention_kernel
from meshtrain.model.dtypes import compute_dtype
from meshtrain.sharding.mesh import MESH_AXES, MeshError
from meshtrain.trainer.config.batch_schedule import batch_size_at, microbatches_at
from meshtrain.trainer.config.hardware import EfficiencyFamily, HardwareSpec, efficiency_family
from meshtrain.trainer.config.mesh_shape import mesh_shape
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.planning.peaks import memory_bandwidth, peak_flops
from meshtrain.trainer.planning.performance import Layout, StepPrediction, Workload, predict_step


def attention_kind(cfg: ExperimentConfig, platform: str) -> str:
    """flash or dense: what the experiment's model.attention runs as on `platform`."""
    kernel = attention_kernel(cfg.model.attention, platform, cfg.data.seq_len)
    return "dense" if kernel == "dot_product" else "flash"


def workload_of(cfg: ExperimentConfig, platform: str, batch: int | None = None) -> Workload:
    """The step `cfg` trains at its final batch size (or `batch` sequences), in the dtype it computes
    in on `platform`."""
    sequences = batch if batch is not None else batch_size_at(cfg.train, cfg.train.steps)
    return Workload(
        model=cfg.model,
        seq_len=cfg.data.seq_len,
        batch=sequences,
        compute_bytes=compute_dtype(cfg.model, platform).itemsize,
        gradient_bytes=compute_dtype(cfg.model, platform).itemsize,
        param_bytes=jnp.dtype(cfg.model.param_dtype).itemsize,
    )


def layout_of(cfg: ExperimentConfig, chips: int, platform: str, batch: int | None = None) -> Layout:
    """`cfg`'s mesh resolved over `chips` (ConfigError when it cannot be), its microbatching at the
    final batch size, remat policy and attention kernel."""
    try:
        ici, dcn = mesh_shape(cfg).resolved(num_devices=chips, num_slices=cfg.hardware.num_slices)
    except MeshError as error:
        raise ConfigError(f"{chips} chips in {cfg.hardware.num_slices} slice(s): {error}") from None
    sequences = batch if batch is not None else batch_size_at(cfg.train, cfg.train.steps)
    return Layout(
        ici=dict(zip(MESH_AXES, ici)),
        dcn=dict(zip(MESH_AXES, dcn)),
        microbatches=microbatches_at(cfg.train, sequences),
        remat=cfg.model.remat,
        attention=attention_kind(cfg, platform),
    )


def predict_experiment(
    cfg: ExperimentConfig, spec: HardwareSpec, chips: int, family: EfficiencyFamily | None = None
) -> StepPrediction:
    """predict_step for an experiment on `chips` chips of `spec` (its family's efficiencies unless
    `family` is given, e.g. a calibrated one)."""
    family = family or efficiency_family(spec)
    work = workload_of(cfg, spec.platform)
    peak = peak_flops(spec, compute_dtype(cfg.model, spec.platform).name)
    return predict_step(work, layout_of(cfg, chips, spec.platform), spec, family, peak, memory_bandwidth(spec))
