"""The rates one chip offers the performance model (trainer/planning/performance.py): matmuls at the
kind's peak times its matmul ceiling and its family's matmul efficiency, shaped by the matrix unit's
tile, HBM at the family's share of its bandwidth, and each matmul at the slower of the two (the
roofline).

    chip = ChipRates(spec, family, peak_flops, hbm_bytes_per_s)
    chip.matmul_s(m, k, n, bytes_per)  # seconds of one (m, k) x (k, n) matmul
"""

from __future__ import annotations

import math

from meshtrain.trainer.config.hardware import EfficiencyFamily, HardwareSpec, matmul_ceiling


class ChipRates:
    """The rates one chip offers, after its family's efficiencies."""

    def __init__(self, spec: HardwareSpec, family: EfficiencyFamily, peak_flops: float, hbm_bytes_per_s: float):
        self.family = family
        # The kind's matmul ceiling (its silicon and power limit, measured or fitted), then the family's software.
        self.matmul_flops = peak_flops * matmul_ceiling(spec) * family.matmul_efficiency
        self.hbm = hbm_bytes_per_s * family.hbm_efficiency
        self.tile = spec.matmul_tile or 1

    def padded_share(self, *dims: float) -> float:
        """Useful share of the matrix unit: each dimension over itself padded up to the tile."""
        share = 1.0
        for d in dims:
            d = max(float(d), 1.0)
            share *= d / (math.ceil(d / self.tile) * self.tile)
        return share

    def matmul_s(self, m: float, k: float, n: float, bytes_per: int) -> float:
        """One (m, k) x (k, n) matmul: the slower of its FLOPs at the shaped rate and its bytes over HBM."""
        flops = 2.0 * m * k * n
        return max(
            flops / (self.matmul_flops * self.padded_share(m, k, n)), bytes_per * (m * k + k * n + m * n) / self.hbm
        )

    def trained_matmul_s(self, m: float, k: float, n: float, bytes_per: int) -> tuple[float, float]:
        """(forward, backward) seconds of a trained matmul: backward = dX (m, n, k) + dW (k, m, n)."""
        return self.matmul_s(m, k, n, bytes_per), self.matmul_s(m, n, k, bytes_per) + self.matmul_s(k, m, n, bytes_per)
