"""Budget pacing: how hard a shop bids, given how much of its day's budget is gone.

A shop should have spent ``budget x f`` by the time a fraction ``f`` of its (UTC) day has passed.
Ahead of that line it bids less, behind it bids more:

    m = clip(exp(gain x (budget x f - spend) / budget), floor, ceiling)      (m = 0 when nothing is left)

so a shop that spent its budget by noon stops bidding until midnight is impossible, and a shop that
spends on schedule bids at ``m = 1``.

>>> float(pacing_multiplier(spend=np.array([50.0]), budget=np.array([100.0]), day_fraction=0.5)[0])
1.0
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["day_fraction", "pacing_multiplier"]

F64 = npt.NDArray[np.float64]


def day_fraction(ts: float) -> float:
    """Share of the UTC day elapsed at ``ts``."""
    return (ts % 86_400.0) / 86_400.0


def pacing_multiplier(
    *,
    spend: F64,
    budget: F64,
    day_fraction: float,
    gain: float = 2.0,
    floor: float = 0.25,
    ceiling: float = 1.5,
) -> F64:
    """Bid multiplier per shop; 0 where the budget is exhausted (or zero)."""
    safe = np.maximum(budget, 1e-9)
    m = np.clip(np.exp(gain * (budget * day_fraction - spend) / safe), floor, ceiling)
    out: F64 = np.where(spend < budget, m, 0.0)
    return out
