"""What the live tracker multiplies and divides by for one run: FLOPs per token under the palm
convention, the peak FLOP/s and price of the run's hardware, and the chips it really has."""

from __future__ import annotations

import dataclasses

import jax

from meshtrain.model.dtypes import compute_dtype
from meshtrain.trainer.config.hardware import hardware_spec
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.planning.flops import flops_breakdown
from meshtrain.trainer.planning.peaks import (
    peak_flops,
    peak_source,
    price_per_chip_hour,
)

FLOPS_CONVENTION = "palm"
CONVENTION_TEXT = "palm: PaLM Appendix B, 6N + 12LHQT, attention not halved"


@dataclasses.dataclass(frozen=True)
class RunArithmetic:
    """What the tracker multiplies and divides by for one run."""

    hardware: str
    platform: str
    chips: int
    compute_dtype: str
    peak_flops_per_chip: float | None  # None: the table has none for this dtype (no MFU, HFU)
    peak_source: str
    price_per_chip_hour: float | None
    model_flops_per_token: float
    hardware_flops_per_token: float
    params_total: int
    remat: str
    device_platform: str


def chips_of_this_run(platform: str) -> int:
    """Chips the peak is multiplied by: every device, or on cpu one per process (the measured peak is
    the machine's: xla_force_host_platform_device_count splits one CPU, it adds none)."""
    return jax.process_count() if platform == "cpu" else jax.device_count()


def run_arithmetic(cfg: ExperimentConfig) -> RunArithmetic:
    """Peak, price and FLOPs per token of `cfg` on the hardware it names (measures the CPU peak on
    the first run on this machine: ~2 s, before any step, so it competes with none)."""
    spec = hardware_spec(cfg.hardware.kind)
    dtype = compute_dtype(cfg.model, spec.platform).name
    flops = flops_breakdown(cfg.model, cfg.data.seq_len, convention=FLOPS_CONVENTION)
    try:
        peak, source = peak_flops(spec, dtype), peak_source(spec, dtype)
    except ConfigError as error:  # e.g. float32 on a TPU, whose f32 peak Google does not publish
        peak, source = None, f"unknown: {error}"
    return RunArithmetic(
        hardware=spec.kind,
        platform=spec.platform,
        chips=chips_of_this_run(spec.platform),
        compute_dtype=dtype,
        peak_flops_per_chip=peak,
        peak_source=source,
        price_per_chip_hour=price_per_chip_hour(spec, "on_demand"),
        model_flops_per_token=flops.model,
        hardware_flops_per_token=flops.hardware,
        params_total=flops.params_total,
        remat=flops.remat,
        device_platform=jax.default_backend(),
    )
