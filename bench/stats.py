"""Percentiles for small samples, by nearest rank (no interpolation)."""

from __future__ import annotations

import math
import statistics
from typing import Any


def percentile(values: list[float], pct: float) -> float:
    """The smallest value with at least ``pct`` percent of the sample at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(values: list[float], unit: str) -> dict[str, Any]:
    """p50, p90, p99, max and mean of ``values``, keys suffixed with ``unit``."""
    if not values:
        return {}
    return {
        f"p50_{unit}": round(percentile(values, 50), 3),
        f"p90_{unit}": round(percentile(values, 90), 3),
        f"p99_{unit}": round(percentile(values, 99), 3),
        f"max_{unit}": round(max(values), 3),
        f"mean_{unit}": round(statistics.fmean(values), 3),
    }
