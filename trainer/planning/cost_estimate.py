"""What a training run will cost before it is launched: FLOPs, time, chip-hours, dollars, memory.

    estimate_cost(cfg, hardware="tpu-v4", chips=6144, tokens_per_sec_per_chip=38.8)  # -> CostEstimate

One arithmetic (trainer/planning: FLOPs per token under a named convention, memory per chip) and
one hardware table (configs/hardware.yaml: peak FLOP/s, HBM, prices), so `meshtrain cost` and the
live tracker agree. The time model is simple and explicit:

    tokens/s   = MFU x peak FLOP/s per chip x chips / model FLOPs per token
    wall clock = tokens / tokens/s;   chip-hours = chips x wall clock;   $ = chip-hours x price

where MFU is given (mfu), implied by a measured throughput (tokens_per_sec_per_chip Y:
MFU = Y x model FLOPs per token / peak), or predicted for the experiment's layout by the
performance model (trainer/planning/performance.py, as `meshtrain plan` does). Model FLOPs
per token follow the chosen convention (palm: PaLM Appendix B, 6N + 12 L H Q T; causal: attention
halved; 6nd: 6N), so MFU, time and cost are all stated under it. When the run does not fit,
trainer/planning/fit_search.py says what would.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from meshtrain.model.dtypes import compute_dtype
from meshtrain.trainer.config.batch_schedule import tokens_through
from meshtrain.trainer.config.errors_fmt import did_you_mean
from meshtrain.trainer.config.hardware import (
    PRICE_TIERS,
    HardwareSpec,
    Price,
    chips_in_topology,
    hardware_kinds,
    hardware_spec,
    parse_topology,
)
from meshtrain.trainer.config.mesh_shape import mesh_sizes
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.planning.aot_compile import CompileReport
from meshtrain.trainer.planning.cost_result import AotFigures, CostEstimate
from meshtrain.trainer.planning.experiment_prediction import predict_experiment
from meshtrain.trainer.planning.fit_search import Suggestion, suggestions
from meshtrain.trainer.planning.flops import (
    FLOPS_CONVENTIONS,
    flops_breakdown,
    hardware_flops_per_token,
    model_flops_per_token,
)
from meshtrain.trainer.planning.memory import memory_on_chips
from meshtrain.trainer.planning.network import NoNetworkFigure
from meshtrain.trainer.planning.peaks import memory_limit, peak_flops, peak_source


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def resolve_chips(cfg: ExperimentConfig, spec: HardwareSpec, chips: int | None = None) -> int:
    """Chips in the run: `chips`, else hardware.chips, else (TPUs) hardware.topology x num_slices,
    else 1 on cpu (this machine); otherwise a UserError asking for the count."""
    if chips is not None:
        if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
            raise UserError(f"chips={chips}: expected a positive number of chips")
        return chips
    hw = cfg.hardware
    if hw.chips is not None:
        return hw.chips
    if spec.platform == "tpu" and hw.topology is not None:
        prefix = parse_topology(hw.topology)[0]
        if prefix is None or prefix in (spec.tpu_topology_prefix, spec.kind.removeprefix("tpu-")):
            return chips_in_topology(hw.topology) * hw.num_slices
    if spec.platform == "cpu":
        return 1
    raise UserError(
        f"how many {spec.kind} chips? hardware.chips is null"
        + (f" and hardware.topology={hw.topology} is not a {spec.kind} topology" if hw.topology else "")
        + ": set hardware.chips=N (on the meshtrain cost command line: pass --chips N)"
    )


def on_hardware(
    cfg: ExperimentConfig,
    hardware: str | None = None,
    hardware_overrides: Mapping[str, Any] | None = None,
    keep: frozenset[str] = frozenset(),
) -> tuple[ExperimentConfig, HardwareSpec]:
    """(cfg on hardware kind `hardware`, default hardware.kind; its HardwareSpec). On another kind the
    experiment's chip count is dropped, and its topology and slice count too unless both kinds are
    TPUs; fields named in `keep` (set on the command line for the new kind) stay."""
    kind = hardware if hardware is not None else cfg.hardware.kind
    if kind not in hardware_kinds():
        raise UserError(
            f"hardware={kind!r}: unknown hardware kind (known: {', '.join(hardware_kinds())})"
            f"{did_you_mean(kind, hardware_kinds())}"
        )
    spec = hardware_spec(kind, hardware_overrides)
    if kind != cfg.hardware.kind:  # the experiment's topology and chip count describe other hardware
        same_tpu = spec.platform == "tpu" and hardware_spec(cfg.hardware.kind).platform == "tpu"
        reset = {"chips": None} | ({} if same_tpu else {"topology": None, "num_slices": 1})
        reset = {field: value for field, value in reset.items() if field not in keep}
        cfg = dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, kind=kind, **reset))
    return cfg, spec


def _check_arguments(mfu, tokens_per_sec_per_chip, peak_tflops, price, tokens, convention) -> None:
    if convention not in FLOPS_CONVENTIONS:
        raise UserError(f"convention={convention!r}: expected one of {', '.join(FLOPS_CONVENTIONS)}")
    if mfu is not None and tokens_per_sec_per_chip is not None:
        raise UserError(
            "mfu and tokens_per_sec_per_chip both given: give one (MFU follows from a "
            "throughput, and a throughput from an MFU)"
        )
    if mfu is not None and not (_positive_number(mfu) and mfu <= 1):
        raise UserError(f"mfu={mfu}: expected a fraction in (0, 1], e.g. 0.4 for 40%")
    if tokens_per_sec_per_chip is not None and not _positive_number(tokens_per_sec_per_chip):
        raise UserError(f"tokens_per_sec_per_chip={tokens_per_sec_per_chip}: expected a positive number")
    if peak_tflops is not None and not _positive_number(peak_tflops):
        raise UserError(f"peak_tflops={peak_tflops}: expected a positive number of TFLOP/s per chip")
    if price is not None and not (_positive_number(price) or price == 0):
        raise UserError(f"price={price}: expected a number of USD per chip-hour >= 0")
    if tokens is not None and not _positive_number(tokens):
        raise UserError(f"tokens={tokens}: expected a positive number of training tokens")


def _throughput(
    cfg: ExperimentConfig,
    spec: HardwareSpec,
    chips: int,
    peak: float,
    model_fpt: float,
    convention: str,
    mfu: float | None,
    tokens_per_sec_per_chip: float | None,
) -> tuple[float, float, str]:
    """(tokens/s per chip, MFU, where the MFU came from): a measured throughput, a given MFU, or
    the performance model's prediction for this layout (trainer/planning/performance.py)."""
    if tokens_per_sec_per_chip is not None:
        per_chip = float(tokens_per_sec_per_chip)
        mfu = per_chip * model_fpt / peak
        if mfu > 1:
            raise UserError(
                f"{tokens_per_sec_per_chip:g} tokens/s per chip means MFU {mfu:.2f} > 1 at "
                f"{peak / 1e12:g} TFLOP/s per chip and {model_fpt:.4g} FLOPs per token "
                f"({convention}): faster than the chip's peak"
            )
        return per_chip, mfu, "--tokens-per-sec-per-chip"
    if mfu is not None:
        return mfu * peak / model_fpt, mfu, "--mfu"
    try:
        prediction = predict_experiment(cfg, spec, chips, peak=peak)
    except NoNetworkFigure as unpredictable:
        raise UserError(f"{unpredictable}: pass --mfu or --tokens-per-sec-per-chip") from unpredictable
    per_chip = prediction.tokens_per_s / chips
    return (
        per_chip,
        per_chip * model_fpt / peak,
        f"predicted by the performance model for this layout (meshtrain plan; {prediction.bottleneck})",
    )


def estimate_cost(
    cfg: ExperimentConfig,
    *,
    hardware: str | None = None,
    chips: int | None = None,
    mfu: float | None = None,
    tokens_per_sec_per_chip: float | None = None,
    peak_tflops: float | None = None,
    price: float | None = None,
    tokens: float | None = None,
    convention: str = "palm",
    hardware_overrides: Mapping[str, Any] | None = None,
    aot: CompileReport | None = None,
) -> CostEstimate:
    """The cost of training `cfg`.

    hardware: a kind of configs/hardware.yaml (default hardware.kind); chips: default from the
    experiment (resolve_chips); mfu or tokens_per_sec_per_chip (not both; neither: predicted
    by the performance model); peak_tflops: peak per chip instead of the table's; price: on-demand USD per
    chip-hour instead of the table's (the table's other tiers are then left out); tokens: instead of
    the experiment's (steps x batch schedule x seq_len); hardware_overrides: fields of the hardware
    entry to replace (config.hardware.with_overrides); aot: the AOT compile of this cfg's train step
    (aot_compile.compile_report), whose memory (XLA's peak per chip), fit and hardware FLOPs
    (matmuls counted in the compiled step) then replace the analytic ones; model FLOPs, MFU, time and
    cost stay analytic. Bad input is a UserError.
    """
    _check_arguments(mfu, tokens_per_sec_per_chip, peak_tflops, price, tokens, convention)
    cfg, spec = on_hardware(cfg, hardware, hardware_overrides)
    chips = resolve_chips(cfg, spec, chips)
    if cfg.hardware.chips != chips:
        cfg = dataclasses.replace(cfg, hardware=dataclasses.replace(cfg.hardware, chips=chips))
    model, seq_len = cfg.model, cfg.data.seq_len
    dtype = compute_dtype(model, spec.platform).name
    peak = peak_tflops * 1e12 if peak_tflops is not None else peak_flops(spec, dtype)
    counts = flops_breakdown(model, seq_len, convention=convention)
    model_fpt = model_flops_per_token(model, seq_len, convention)
    hardware_fpt = analytic_hardware_fpt = hardware_flops_per_token(model, seq_len, convention=convention)
    if aot is not None:
        if aot.num_chips != chips:
            raise UserError(
                f"the AOT compile is for {aot.num_chips} chips ({aot.topology} x {aot.num_slices} "
                f"slice(s)), not {chips}: make the chip counts agree"
            )
        hardware_fpt = aot.flops_per_token
    per_chip, mfu, mfu_source = _throughput(cfg, spec, chips, peak, model_fpt, convention, mfu, tokens_per_sec_per_chip)
    tokens_total = int(tokens) if tokens is not None else tokens_through(cfg.train, seq_len, cfg.train.steps)
    chip_hours = tokens_total / per_chip / 3600.0  # chips x wall clock, the chips cancelling

    prices = dict(spec.prices)
    if price is not None:  # the table's other tiers are deals for the table's price, not this one
        prices = {"on_demand": Price(float(price), None, "--price")}
    cost_by_tier = {tier: chip_hours * prices[tier].usd_per_chip_hour for tier in PRICE_TIERS if tier in prices}

    memory = memory_on_chips(cfg, chips)
    limit, memory_kind = memory_limit(spec)
    fits = analytic_fits = limit is None or memory.total <= limit
    memory_per_chip, mesh = memory.as_dict(), mesh_sizes(cfg, chips)
    if aot is not None:  # XLA's figures; its peak is not split into params, grads, optimizer, activations
        peak_bytes = aot.memory.peak_bytes_per_chip
        memory_per_chip = {**dict.fromkeys(memory_per_chip), "total": peak_bytes}
        fits = aot.error is None and peak_bytes is not None and (limit is None or peak_bytes <= limit)
        mesh = dict(aot.mesh)
    return CostEstimate(
        experiment=cfg.name,
        flops_convention=convention,
        params_total=counts.params_total,
        params_non_embedding=counts.params_non_embedding,
        seq_len=seq_len,
        model_flops_per_token=model_fpt,
        hardware_flops_per_token=hardware_fpt,
        remat=model.remat,
        tokens_total=tokens_total,
        train_flops_6nd=model_flops_per_token(model, seq_len, "6nd") * tokens_total,
        hardware=spec.kind,
        chips=chips,
        compute_dtype=dtype,
        peak_flops_per_chip=peak,
        peak_flops_source="--peak-tflops" if peak_tflops is not None else peak_source(spec, dtype),
        tokens_per_sec_per_chip=per_chip,
        mfu=mfu,
        mfu_source=mfu_source,
        cost_usd_by_tier=cost_by_tier,
        prices=prices,
        mesh=mesh,
        memory_per_chip_bytes=memory_per_chip,
        memory_source="analytic" if aot is None else "xla",
        hbm_bytes_per_chip=limit,
        memory_limit=memory_kind,
        fits=fits,
        suggestions=None if fits else _suggestions(cfg, spec, chips, limit, memory.total, analytic_fits, aot),
        aot=None if aot is None else AotFigures(analytic_hardware_fpt, hardware_fpt, memory.as_dict(), aot),
    )


def _suggestions(cfg, spec, chips, limit, analytic_total, analytic_fits, aot) -> list[Suggestion]:
    if analytic_fits:  # only XLA says it does not: the analytic search would suggest nothing real
        return [
            Suggestion(
                "more chips, model.remat=full or more train.microbatches",
                False,
                None,
                note=f"the analytic estimate ({analytic_total / 2**30:.2f} GiB per chip) fits but "
                f"XLA's compile does not: try each with meshtrain cost --aot",
            )
        ]
    found = suggestions(cfg, spec, chips, limit)
    if aot is None:
        return found
    # With --aot the figures beside each suggestion are still the analytic estimate's: say so.
    aside = {True: "analytic estimate; with --aot, a topology of that many chips", False: "analytic estimate"}
    return [dataclasses.replace(s, note="; ".join(filter(None, (s.note, aside[s.chips is not None])))) for s in found]
