"""How numbers are shown to people: the one set of formatters every table, report and progress bar uses.

None shows as "n/a" everywhere, so a figure the run could not know (no price, no peak) reads the
same in `meshtrain cost`, `meshtrain compile`, the progress bar and report.md.
"""

from __future__ import annotations

from collections.abc import Mapping

MISSING = "n/a"
_SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_BINARY = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
_COUNT = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def format_si(value: float | None, unit: str) -> str:
    """1.234e12, 'FLOP' -> '1.234 TFLOP'; 8.797e10, 'FLOP/s' -> '87.97 GFLOP/s'."""
    if value is None:
        return f"{MISSING} {unit}"
    scale, prefix = next(((s, p) for s, p in _SI if abs(value) >= s), (1.0, ""))
    return f"{value / scale:.4g} {prefix}{unit}"


def format_bytes(n: float | None) -> str:
    """Bytes in binary units: 21.67 GiB, 12.40 MiB, 512 B."""
    if n is None:
        return MISSING
    for unit, scale in _BINARY:
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def format_count(value: float | None) -> str:
    """540356474880 -> '540.36 B' (parameters, tokens)."""
    if value is None:
        return MISSING
    for scale, suffix in _COUNT:
        if abs(value) >= scale:
            return f"{value / scale:,.2f} {suffix}"
    return f"{value:,.0f}"


def format_amount(value: float | None) -> str:
    """1234567.8 -> '1,234,568'; small values keep 3 significant digits (0.0492)."""
    if value is None:
        return MISSING
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_number(value: float | None, digits: int = 4) -> str:
    """A figure to `digits` significant digits: 3.5408."""
    return MISSING if value is None else f"{value:.{digits}g}"


def format_percent(fraction: float | None) -> str:
    """0.312 -> '31.2%'; tiny utilizations keep two significant digits (1.1e-07%) instead of 0.0%."""
    if fraction is None:
        return MISSING
    return f"{fraction:.1%}" if fraction >= 0.001 or fraction == 0 else f"{fraction * 100:.2g}%"


def format_dollars(usd: float | None) -> str:
    """1234.5 -> '$1,234'; 0.5 -> '$0.50'; 0.0123 -> '$0.0123' (a small run's cents stay visible)."""
    if usd is None:
        return MISSING
    return f"${usd:,.0f}" if usd >= 100 else f"${usd:.2f}" if usd >= 0.1 else f"${usd:.3g}"


def format_mesh(sizes: Mapping[str, int]) -> str:
    """{"data": 2, "fsdp": 256, "tensor": 12, "sequence": 1} -> 'data=2 x fsdp=256 x tensor=12'."""
    return " x ".join(f"{axis}={n}" for axis, n in sizes.items() if n > 1) or "1 device"


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 83 -> '1m23s', 4.2 -> '4s', 200000 -> '2d07h'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
