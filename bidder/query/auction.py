"""Generalised second-price (GSP) auction over eCPM, as a pure function over arrays.

Rules, for one query with candidates ``i`` (bid ``b_i`` per click, predicted CTR ``p_i``):

* A candidate enters only if ``b_i >= reserve`` and ``b_i > 0`` and ``p_i > 0`` (a zero bid means
  "does not bid": no budget, or the auto-bidder declined).
* Entrants are ranked by ``ecpm_i = b_i * p_i``; ties are broken uniformly at random by the injected
  generator (a random permutation followed by a stable sort).
* The top ``slots`` entrants win, in slot order. With fewer entrants than slots, fewer slots fill.
* Winner ``k`` pays per click the least bid that keeps its slot:
  ``price_k = max(reserve, ecpm_{k+1} / p_k)``, where ``ecpm_{k+1}`` is the next entrant's eCPM (0 if
  none), and never more than its own bid: ``reserve <= price_k <= b_k``.

>>> r = run_auction(bids=np.array([1.0, 2.0, 0.5]), pctr=np.array([0.1, 0.1, 0.1]),
...                 reserve_price=0.1, slots=2, rng=np.random.default_rng(0))
>>> r.winners.tolist(), [round(p, 6) for p in r.prices.tolist()]
([1, 0], [1.0, 0.5])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AuctionResult", "run_auction"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class AuctionResult:
    """Winners of one auction, in slot order (slot 0 first)."""

    winners: I64
    """indices into the auction's input arrays"""
    prices: F64
    """price per click of each winner (GSP)"""
    ecpm: F64
    """eCPM (bid x pCTR) of each winner"""
    n_entrants: int
    """candidates that cleared the reserve and bid"""


def run_auction(
    *,
    bids: F64 | F32,
    pctr: F64 | F32,
    reserve_price: float,
    slots: int,
    rng: np.random.Generator,
) -> AuctionResult:
    """Run one GSP auction; see the module docstring for the rules."""
    b = np.asarray(bids, np.float64)
    p = np.asarray(pctr, np.float64)
    if b.shape != p.shape or b.ndim != 1:
        raise ValueError(f"bids {b.shape} and pctr {p.shape} must be equal 1-d shapes")
    if slots < 0 or reserve_price < 0:
        raise ValueError("slots and reserve_price must be non-negative")
    ecpm_b = b * p
    entrants: I64 = np.flatnonzero((b >= reserve_price) & (b > 0.0) & (p > 0.0) & np.isfinite(ecpm_b))
    e = ecpm_b[entrants]
    n = len(e)
    k = min(slots, n)
    # Only the top k + 1 matter (k winners and the runner-up that prices the last slot). Keep every
    # entrant whose eCPM reaches the (k+1)-th largest, so ties at that boundary all stay in the draw.
    m = min(k + 1, n)
    if m < n:
        threshold = np.partition(e, n - m)[n - m]
        pool: I64 = np.flatnonzero(e >= threshold)
    else:
        pool = np.arange(n)
    # random permutation + stable sort = ties in a uniformly random order
    pool = pool[rng.permutation(len(pool))]
    order = pool[np.argsort(-e[pool], kind="stable")]
    top = order[:k]
    winners: I64 = entrants[top]
    ecpm: F64 = e[top]
    next_ecpm = np.zeros(k, np.float64)
    n_next = min(k, len(order) - 1)
    next_ecpm[:n_next] = e[order[1 : n_next + 1]]
    prices: F64 = np.minimum(np.maximum(reserve_price, next_ecpm / p[winners]), b[winners])
    return AuctionResult(winners=winners, prices=prices, ecpm=ecpm, n_entrants=n)
