"""The typed result of `meshtrain cost`: a CostEstimate, with the derived figures (FLOPs totals,
tokens/s, HFU, wall clock, chip-hours, dollars) as properties, and `as_dict()` as its --json."""

from __future__ import annotations

import dataclasses
from typing import Any

from meshtrain.trainer.config.hardware import Price
from meshtrain.trainer.planning.aot_compile import CompileReport
from meshtrain.trainer.planning.fit_search import Suggestion

CONVENTION_DESCRIPTIONS = {
    "palm": "PaLM Appendix B: 6N + 12·L·H·Q·T (attention counted in full)",
    "causal": "6N + 6·L·H·Q·T (attention halved for the causal mask)",
    "6nd": "6N: Kaplan et al., GPT-3, Chinchilla (no attention term)",
}
SECONDS_PER_DAY = 86400.0
_AOT_FIELDS = (
    "topology",
    "num_slices",
    "device_kind",
    "batch_size",
    "microbatches",
    "compute_dtype",
    "argument_bytes_per_chip",
    "output_bytes_per_chip",
    "alias_bytes_per_chip",
    "temp_bytes_per_chip",
    "peak_bytes_per_chip",
    "peak_source",
    "flops_per_step_per_chip",
    "xla_flops_per_chip",
    "lower_seconds",
    "compile_seconds",
    "error",
)


@dataclasses.dataclass(frozen=True)
class AotFigures:
    """What an AOT compile replaced in the estimate, beside the analytic figures it replaced."""

    hardware_flops_per_token_analytic: float
    hardware_flops_per_token_aot: float
    memory_per_chip_bytes_analytic: dict[str, int]
    compile: CompileReport

    @property
    def hardware_flops_aot_over_analytic(self) -> float:
        return self.hardware_flops_per_token_aot / self.hardware_flops_per_token_analytic


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    """The cost report of training one experiment (`meshtrain cost`; `as_dict()` is its --json)."""

    experiment: str
    flops_convention: str
    params_total: int
    params_non_embedding: int
    seq_len: int
    model_flops_per_token: float
    hardware_flops_per_token: float
    remat: str
    tokens_total: int
    train_flops_6nd: float
    hardware: str
    chips: int
    compute_dtype: str
    peak_flops_per_chip: float
    peak_flops_source: str
    tokens_per_sec_per_chip: float
    mfu: float
    mfu_source: str
    cost_usd_by_tier: dict[str, float]
    prices: dict[str, Price]
    mesh: dict[str, int]
    memory_per_chip_bytes: dict[str, int | None]  # params, grads, optimizer, activations, total
    memory_source: str  # analytic | xla
    hbm_bytes_per_chip: int | None  # the limit: HBM, JAX's pool of it on a GPU, or host memory on cpu
    memory_limit: str  # hbm | gpu pool | host (peaks.memory_limit)
    fits: bool
    suggestions: list[Suggestion] | None  # what would make it fit; None when it fits
    aot: AotFigures | None = None

    @property
    def flops_convention_description(self) -> str:
        return CONVENTION_DESCRIPTIONS[self.flops_convention]

    @property
    def train_flops_total(self) -> float:
        return self.model_flops_per_token * self.tokens_total

    @property
    def hardware_flops_total(self) -> float:
        return self.hardware_flops_per_token * self.tokens_total

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens_per_sec_per_chip * self.chips

    @property
    def hfu(self) -> float:
        return self.mfu * self.hardware_flops_per_token / self.model_flops_per_token

    @property
    def wall_clock_days(self) -> float:
        return self.tokens_total / self.tokens_per_sec / SECONDS_PER_DAY

    @property
    def chip_hours(self) -> float:
        return self.chips * self.wall_clock_days * 24.0

    @property
    def cost_usd(self) -> float | None:
        return self.cost_usd_by_tier.get("on_demand")

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of `meshtrain cost --json`: every field and derived figure."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("suggestions", "aot")}
        for name in (
            "flops_convention_description",
            "train_flops_total",
            "hardware_flops_total",
            "tokens_per_sec",
            "hfu",
            "wall_clock_days",
            "chip_hours",
            "cost_usd",
        ):
            out[name] = getattr(self, name)
        out["prices"] = {tier: dataclasses.asdict(p) for tier, p in self.prices.items()}
        out["hardware_flops_per_token_source"] = "analytic" if self.aot is None else "aot"
        if self.suggestions is not None:
            out["suggestions"] = [s.as_dict() for s in self.suggestions]
        if self.aot is not None:
            compiled = self.aot.compile.as_dict()
            out.update(
                hardware_flops_per_token_analytic=self.aot.hardware_flops_per_token_analytic,
                hardware_flops_per_token_aot=self.aot.hardware_flops_per_token_aot,
                hardware_flops_aot_over_analytic=self.aot.hardware_flops_aot_over_analytic,
                memory_per_chip_bytes_analytic=self.aot.memory_per_chip_bytes_analytic,
                aot={key: compiled[key] for key in _AOT_FIELDS},
            )
        return out
