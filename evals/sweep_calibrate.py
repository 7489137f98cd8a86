"""Target sparsity: find the value of one parameter (``scale`` for dash, ``topk`` for top-k methods) at
which the measured prefill sparsity on held-apart calibration samples is a target.

The search is a bisection on a monotone curve whose direction is read off its two ends (sparsity rises
with dash's ``scale`` and falls with ``topk``), so no method needs special handling. Real-valued
parameters bisect in log space (scale spans orders of magnitude); integers bisect to adjacent values and
keep the closer one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_REAL_RANGE = (0.01, 100.0)


@dataclass
class Calibration:
    parameter: str
    target: float
    value: float | int
    sparsity: float
    reached: bool  # |sparsity - target| <= tolerance (or, for integers, the closest value there is)
    steps: list[tuple[float | int, float]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "parameter": self.parameter,
            "target": self.target,
            "value": self.value,
            "sparsity": self.sparsity,
            "reached": self.reached,
            "steps": [list(s) for s in self.steps],
        }


def bisect_sparsity(
    measure: Callable[[float | int], float],
    target: float,
    *,
    parameter: str,
    low: float,
    high: float,
    integer: bool,
    tolerance: float = 0.01,
    max_steps: int = 14,
) -> Calibration:
    """Search ``[low, high]`` for the value whose ``measure`` (a sparsity) is closest to ``target``,
    stopping within ``tolerance`` or after ``max_steps`` measurements."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"target_sparsity={target!r}: accepted: a number strictly between 0 and 1")
    if not (0 <= low if integer else 0 < low) or not low < high:
        accepted = "0 <= low < high" if integer else "0 < low < high (real values bisect in log space)"
        raise ValueError(f"calibrate_range=[{low}, {high}]: accepted: {accepted}")
    if integer:
        low, high = math.ceil(low), math.floor(high)
        if high <= low:
            raise ValueError(f"calibrate_range for integer {parameter}: no two integers in [{low}, {high}]")
    cache: dict[float | int, float] = {}
    steps: list[tuple[float | int, float]] = []

    def m(x: float | int) -> float:
        if x not in cache:
            cache[x] = float(measure(x))
            steps.append((x, cache[x]))
        return cache[x]

    def best() -> Calibration:
        x, s = min(steps, key=lambda p: (abs(p[1] - target), p[0]))
        return Calibration(parameter, target, x, s, abs(s - target) <= tolerance, list(steps))

    s_lo, s_hi = m(low), m(high)
    rising = s_hi >= s_lo
    lo, hi = low, high
    if not min(s_lo, s_hi) - tolerance <= target <= max(s_lo, s_hi) + tolerance:
        return best()  # out of reach in the range: the closer end, reported as not reached
    while len(steps) < max_steps:
        if abs(m(lo) - target) <= tolerance or abs(m(hi) - target) <= tolerance:
            break
        if integer:
            if hi - lo <= 1:
                break
            mid: float | int = (lo + hi) // 2
        else:
            mid = math.sqrt(lo * hi)
        s_mid = m(mid)
        if abs(s_mid - target) <= tolerance:
            break
        if (s_mid < target) == rising:
            lo = mid
        else:
            hi = mid
    result = best()
    if integer and not result.reached:
        # the closest integer is as good as the parameter allows
        result.reached = abs(hi - lo) <= 1 and result.value in (lo, hi)
    return result
