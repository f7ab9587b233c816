"""Auto-bidding: the per-click bid the bidder places on each seller's behalf.

For candidate listing ``i`` of shop ``s``::

    value_i = pCVR_i * price_i * target_share_s        # what a click is worth to the seller
    bid_i   = clip(value_i * pacing_s, min_bid, max_bid)   if remaining_budget_s > 0
    bid_i   = 0  (no bid)                                   otherwise

``pCVR`` is the predicted purchase probability given a click, ``price`` the listing's price,
``target_share`` the share of a sale the seller will spend on ads that lead to it, and ``pacing`` the
budget pacing multiplier in ``(0, inf)`` that shades bids so a daily budget lasts the whole day
(``bidder.query.pipeline.BudgetView.pacing``). A zero bid never enters the auction.

>>> bids(pcvr=np.array([0.1, 0.1]), price=np.array([20.0, 20.0]), target_share=np.array([0.1, 0.1]),
...      pacing=np.array([1.0, 1.0]), remaining_budget=np.array([5.0, 0.0]),
...      min_bid=0.02, max_bid=3.0).tolist()
[0.2, 0.0]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["bids"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def bids(
    *,
    pcvr: F32 | F64,
    price: F64,
    target_share: F64,
    pacing: F64,
    remaining_budget: F64,
    min_bid: float,
    max_bid: float,
) -> F64:
    """Per-click bids (0 = no bid) for aligned candidate arrays; see the module docstring."""
    if not 0.0 <= min_bid <= max_bid:
        raise ValueError(f"need 0 <= min_bid <= max_bid, got {min_bid}, {max_bid}")
    value = np.multiply(pcvr, price, dtype=np.float64)
    value *= target_share
    value *= pacing
    out: F64 = np.clip(value, min_bid, max_bid, out=value)
    out[~(remaining_budget > 0.0)] = 0.0
    return out
