"""What meshtrain knows about each kind of machine (configs/hardware.yaml), and TPU topology names.

hardware_spec("tpu-v4") -> HardwareSpec(platform="tpu", chips_per_host=4, hbm_bytes=..., ...);
chips_in_topology("v4:12x16x16") -> 3072. An unknown kind or a malformed topology is a ConfigError
that says what would be valid.

spec.prices holds every price tier with its date and source. Any field can be overridden:
hardware_spec("h100", {"prices.on_demand": 2.5, "peak_bf16_flops": 8e14}). What a peak is for a
dtype, and the CPU's measured one, are trainer/planning/peaks.py's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

from meshtrain.trainer.config.errors_fmt import did_you_mean
from meshtrain.trainer.config.paths import CONFIG_DIR
from meshtrain.trainer.config.yamlio import read_yaml_mapping
from meshtrain.trainer.errors import ConfigError

HARDWARE_YAML = CONFIG_DIR / "hardware.yaml"
PLATFORMS = ("tpu", "gpu", "cpu")


PRICE_TIERS = ("on_demand", "spot", "committed_1y", "committed_3y")


@dataclasses.dataclass(frozen=True)
class Price:
    """A list price per chip-hour, with when it was read and where (prices change: keep both)."""

    usd_per_chip_hour: float
    date: str | None = None
    source: str | None = None


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
    """One entry of configs/hardware.yaml (see the field notes at the top of that file)."""

    kind: str
    platform: str
    chips_per_host: int
    hbm_bytes: int | None
    tpu_topology_prefix: str | None
    source: str
    tpu_accelerator_type: str | None = None
    tpu_type_counts: str | None = None
    tpu_runtime_version: str | None = None
    gke_accelerator: str | None = None
    peak_bf16_flops: float | None = None  # dense, per chip; None on cpu = measured (peak_flops)
    peak_f32_flops: float | None = None
    hbm_bandwidth_bytes_per_s: float | None = None
    interconnect: str | None = None
    default_mfu: float | None = None  # what `meshtrain cost` assumes without --mfu
    default_mfu_reason: str | None = None
    prices: Mapping[str, Price] = dataclasses.field(default_factory=dict)  # tier -> Price
    # The performance model's figures (trainer/planning/performance.py); None where not known.
    efficiency_family: str | None = None  # an entry of efficiency_families (EfficiencyFamily)
    ici_link_bandwidth_bytes_per_s: float | None = None
    ici_torus_dims: int | None = None  # None: a switch (NVSwitch), every chip one hop from every other
    ici_chips_max: int | None = None
    dcn_bandwidth_bytes_per_s: float | None = None
    matmul_tile: int | None = None
    matmul_ceiling: float | None = None  # best bf16 matmul / peak; None: not known, see matmul_ceiling()
    matmul_ceiling_fitted: bool = False  # the ceiling was fitted to the kind's published runs, not measured


@dataclasses.dataclass(frozen=True)
class EfficiencyFamily:
    """How well one family's software stack uses its chips' datasheet rates (the fields are documented
    above `efficiency_families` in configs/hardware.yaml). All are fractions in [0, 1] except
    op_overhead_s, seconds per launched op."""

    name: str
    matmul_efficiency: float
    attention_efficiency: float
    hbm_efficiency: float
    ici_efficiency: float
    dcn_efficiency: float
    fsdp_overlap: float
    tensor_overlap: float
    data_overlap: float
    op_overhead_s: float
    straggler_spread: float  # std / mean of one slice's (server's) step: a synchronous step waits for the slowest
    dropout_forward_efficiency: float  # share of a fused attention kernel's rate it keeps drawing dropout inside it
    dropout_backward_efficiency: float  # ... in its backward kernel, which draws the same mask again
    source: str


FAMILIES_KEY = "efficiency_families"
# A rate efficiency above 1 says the chip beat the figure it is taken against: on a CPU, a small
# model's activations stay in cache, faster than the measured streaming bandwidth. Calibration may
# find that; hardware.yaml's datasheet-based families stay below 1.
MAX_RATE_EFFICIENCY = 4.0  # the one top-level entry of hardware.yaml that is not a kind


_REQUIRED = ("platform", "chips_per_host", "hbm_bytes", "tpu_topology_prefix", "source")
_FIELDS = {f.name for f in dataclasses.fields(HardwareSpec)} - {"kind"}
_POSITIVE_NUMBERS = (
    "peak_bf16_flops",
    "peak_f32_flops",
    "hbm_bandwidth_bytes_per_s",
    "ici_link_bandwidth_bytes_per_s",
    "dcn_bandwidth_bytes_per_s",
)
_POSITIVE_INTEGERS = ("ici_torus_dims", "ici_chips_max", "matmul_tile")
_TEXT = (
    "source",
    "tpu_accelerator_type",
    "tpu_type_counts",
    "tpu_runtime_version",
    "gke_accelerator",
    "interconnect",
    "default_mfu_reason",
    "tpu_topology_prefix",
    "efficiency_family",
)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_price(value: object, where: str) -> Price:
    """A price entry: {usd_per_chip_hour, date, source}, or a bare number (an override's shorthand)."""
    if is_number(value):
        value = {"usd_per_chip_hour": value}
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}={value!r}: expected a number of USD per chip-hour or a mapping "
            f"{{usd_per_chip_hour, date, source}}"
        )
    unknown = sorted(set(value) - {"usd_per_chip_hour", "date", "source"})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (fields: usd_per_chip_hour, date, source)")
    usd = value.get("usd_per_chip_hour")
    if not is_number(usd) or usd < 0:
        raise ConfigError(f"{where}.usd_per_chip_hour={usd!r}: expected a non-negative number of USD")
    return Price(
        float(usd),
        None if value.get("date") is None else str(value["date"]),
        None if value.get("source") is None else str(value["source"]),
    )


def _build(kind: str, fields: Mapping[str, Any], where: str) -> HardwareSpec:
    """A validated HardwareSpec from one entry's fields; a bad field is a ConfigError naming it."""
    fields = {k: v for k, v in fields.items() if k in _FIELDS}
    raw_prices = fields.pop("prices", None) or {}
    if not isinstance(raw_prices, Mapping):
        raise ConfigError(f"{where}: prices={raw_prices!r}, expected a mapping tier -> price")
    prices = {}
    for tier, value in raw_prices.items():
        if tier not in PRICE_TIERS:
            raise ConfigError(
                f"{where}: prices.{tier}: unknown price tier (tiers: {', '.join(PRICE_TIERS)})"
                f"{did_you_mean(tier, PRICE_TIERS)}"
            )
        prices[tier] = value if isinstance(value, Price) else _parse_price(value, f"{where}: prices.{tier}")
    spec = HardwareSpec(kind=str(kind), prices=prices, **fields)
    if spec.platform not in PLATFORMS:
        raise ConfigError(f"{where}: platform={spec.platform!r}, expected one of {', '.join(PLATFORMS)}")
    if not isinstance(spec.chips_per_host, int) or isinstance(spec.chips_per_host, bool) or spec.chips_per_host < 1:
        raise ConfigError(f"{where}: chips_per_host={spec.chips_per_host!r}, expected a positive integer")
    if spec.hbm_bytes is not None and (not isinstance(spec.hbm_bytes, int) or spec.hbm_bytes < 1):
        raise ConfigError(f"{where}: hbm_bytes={spec.hbm_bytes!r}, expected a positive integer or null")
    if (spec.platform == "tpu") != (spec.tpu_topology_prefix is not None):
        raise ConfigError(f"{where}: tpu_topology_prefix is set exactly when platform is tpu")
    for name in _POSITIVE_NUMBERS:
        value = getattr(spec, name)
        if value is not None and (not is_number(value) or value <= 0):
            raise ConfigError(
                f"{where}: {name}={value!r}, expected a positive number (FLOP/s or bytes/s, e.g. 2.75e14) or null"
            )
    for name in _POSITIVE_INTEGERS:
        value = getattr(spec, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{where}: {name}={value!r}, expected a positive integer or null")
    ceiling = spec.matmul_ceiling
    if ceiling is not None and (not is_number(ceiling) or not 0 < ceiling <= 1):
        raise ConfigError(
            f"{where}: matmul_ceiling={ceiling!r}, expected a fraction of the peak in (0, 1], e.g. 0.8, or null"
        )
    if not isinstance(spec.matmul_ceiling_fitted, bool):
        raise ConfigError(f"{where}: matmul_ceiling_fitted={spec.matmul_ceiling_fitted!r}, expected true or false")
    if spec.matmul_ceiling_fitted and ceiling is None:
        raise ConfigError(f"{where}: matmul_ceiling_fitted is true but there is no matmul_ceiling to have fitted")
    mfu = spec.default_mfu
    if mfu is not None and (not is_number(mfu) or not 0 < mfu <= 1):
        raise ConfigError(f"{where}: default_mfu={mfu!r}, expected a fraction in (0, 1], e.g. 0.4")
    for name in _TEXT:
        value = getattr(spec, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: {name}={value!r}, expected text or null")
    return spec


@functools.cache
def _table() -> dict[str, HardwareSpec]:
    """Every entry of hardware.yaml as a HardwareSpec; a malformed entry is a ConfigError naming it.

    Fields this module does not know are ignored, so the file can grow before the dataclass does."""
    raw = read_yaml_mapping(HARDWARE_YAML)
    table = {}
    for kind, fields in raw.items():
        if kind == FAMILIES_KEY:
            continue
        where = f"{HARDWARE_YAML}: {kind}"
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {type(fields).__name__}")
        missing = [name for name in _REQUIRED if name not in fields]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        table[str(kind)] = _build(str(kind), fields, where)
    return table


@functools.cache
def _families() -> dict[str, EfficiencyFamily]:
    """hardware.yaml's efficiency_families, validated; a bad entry is a ConfigError naming it."""
    raw = read_yaml_mapping(HARDWARE_YAML).get(FAMILIES_KEY) or {}
    numbers = [f.name for f in dataclasses.fields(EfficiencyFamily) if f.name not in ("name", "source")]
    families = {}
    for name, fields in raw.items():
        where = f"{HARDWARE_YAML}: {FAMILIES_KEY}.{name}"
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}: expected a mapping of fields")
        missing = [key for key in (*numbers, "source") if key not in fields]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        families[str(name)] = efficiency_with(
            EfficiencyFamily(name=str(name), **{key: fields[key] for key in (*numbers, "source")}), {}, where
        )
    return families


def efficiency_with(family: EfficiencyFamily, changes: Mapping[str, Any], where: str = "") -> EfficiencyFamily:
    """`family` with fields replaced (a calibration's fitted values), each checked: overlaps are
    fractions in [0, 1]; rate efficiencies (*_efficiency) are in (0, MAX_RATE_EFFICIENCY]; op_overhead_s >= 0."""
    where = where or f"efficiency family {family.name}"
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(EfficiencyFamily)})
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}")
    family = dataclasses.replace(family, **changes)
    for f in dataclasses.fields(EfficiencyFamily):
        value = getattr(family, f.name)
        if f.name in ("name", "source"):
            continue
        if f.name == "op_overhead_s":
            ok = is_number(value) and value >= 0
        else:
            rate = f.name.endswith("_efficiency")
            ok = is_number(value) and (0 < value <= MAX_RATE_EFFICIENCY if rate else 0 <= value <= 1)
        if not ok:
            want = (
                "a number of seconds >= 0"
                if f.name == "op_overhead_s"
                else f"a number in (0, {MAX_RATE_EFFICIENCY:g}]"
                if rate
                else "a fraction in [0, 1]"
            )
            raise ConfigError(f"{where}: {f.name}={value!r}, expected {want}")
    return family


def efficiency_family(spec: HardwareSpec) -> EfficiencyFamily:
    """The efficiency family `spec` names; a missing or unknown one is a ConfigError."""
    families = _families()
    if spec.efficiency_family not in families:
        raise ConfigError(
            f"{HARDWARE_YAML}: {spec.kind}: efficiency_family={spec.efficiency_family!r}, expected one of "
            f"{', '.join(families) or '(none defined)'}"
        )
    return families[spec.efficiency_family]


def matmul_ceiling(spec: HardwareSpec) -> float:
    """The share of its peak the kind's best matmul reaches: measured or fitted (hardware.yaml), or, for a
    kind with neither (no shape search and no published run with a layout), the lowest of its efficiency
    family's kinds, so that a plan on a chip nobody measured promises no more than its least capable
    measured sibling; 1.0 in a family with none."""
    if spec.matmul_ceiling is not None:
        return spec.matmul_ceiling
    siblings = [
        other.matmul_ceiling
        for other in _table().values()
        if other.efficiency_family == spec.efficiency_family and other.matmul_ceiling is not None
    ]
    return min(siblings, default=1.0)


def hardware_kinds() -> tuple[str, ...]:
    """The kinds hardware.kind may name, in the order configs/hardware.yaml lists them."""
    return tuple(_table())


def hardware_spec(kind: str, overrides: Mapping[str, Any] | None = None) -> HardwareSpec:
    """The entry for `kind`, with `overrides` applied (see with_overrides); an unknown kind is a
    ConfigError listing the known ones."""
    table = _table()
    if kind not in table:
        raise ConfigError(
            f"hardware.kind={kind!r}: unknown hardware kind (known: {', '.join(table)}){did_you_mean(kind, table)}"
        )
    return with_overrides(table[kind], overrides)


def with_overrides(spec: HardwareSpec, overrides: Mapping[str, Any] | None) -> HardwareSpec:
    """`spec` with fields replaced: {"peak_bf16_flops": 8e14, "hbm_bytes": 96 * 2**30,
    "prices.on_demand": 2.5, "prices": {"spot": {"usd_per_chip_hour": 1.1, "date": ..., "source": ...}}}.

    A price tier given (dotted, or inside `prices`) replaces that tier and keeps the others; a bare
    number is USD per chip-hour. Values are checked as the YAML's are; an unknown field is a
    ConfigError naming the fields there are."""
    if not overrides:
        return spec
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "kind"}
    prices = dict(spec.prices)
    where = f"hardware override for {spec.kind}"
    for key, value in overrides.items():
        key = str(key)
        if key.startswith("prices."):
            prices[key.split(".", 1)[1]] = value
        elif key == "prices":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: prices={value!r}, expected a mapping tier -> price")
            prices.update(value)
        elif key in fields:
            fields[key] = value
        else:
            known = sorted([*fields, *(f"prices.{tier}" for tier in PRICE_TIERS)])
            raise ConfigError(f"{where}: unknown field {key!r} (fields: {', '.join(known)}){did_you_mean(key, known)}")
    if "matmul_ceiling" in overrides and "matmul_ceiling_fitted" not in overrides:
        fields["matmul_ceiling_fitted"] = False  # a ceiling given by hand is a measurement, not the fit's
    fields["prices"] = prices
    return _build(spec.kind, fields, where)


TOPOLOGY_WANT = (
    "a TPU topology name such as 'v4:12x16x16', 'v5e:16x16' or 'v5:2x2x1' (generation, "
    "a colon, 1 to 3 positive chip counts joined by 'x')"
)
_TOPOLOGY = re.compile(r"^(?:(?P<prefix>[a-z][a-z0-9]*):)?(?P<dims>[0-9]+(?:x[0-9]+)*)$")


def parse_topology(topology: str) -> tuple[str | None, tuple[int, ...]]:
    """'v4:12x16x16' -> ('v4', (12, 16, 16)); '2x2x1' -> (None, (2, 2, 1)); else ConfigError."""
    match = _TOPOLOGY.match(topology.strip()) if isinstance(topology, str) else None
    dims = tuple(int(d) for d in match["dims"].split("x")) if match else ()
    if not match or any(d < 1 for d in dims) or len(dims) > 3:
        raise ConfigError(f"hardware.topology={topology!r}: expected {TOPOLOGY_WANT}")
    return match["prefix"], dims


def chips_in_topology(topology: str) -> int:
    """Chips in a TPU topology name: the product of its dimensions ('v4:12x16x16' -> 3072)."""
    return math.prod(parse_topology(topology)[1])
