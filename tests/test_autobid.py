"""Auto-bid formula: value x pacing, clipped, no budget -> no bid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bidder.query.autobid import bids


def _bids(pcvr: float, price: float, share: float, pacing: float, budget: float) -> float:
    return float(
        bids(
            pcvr=np.array([pcvr], np.float32), price=np.array([price]), target_share=np.array([share]),
            pacing=np.array([pacing]), remaining_budget=np.array([budget]), min_bid=0.02, max_bid=3.0,
        )[0]
    )


def test_formula() -> None:
    assert _bids(0.1, 20.0, 0.1, 1.0, 5.0) == pytest.approx(0.2)
    assert _bids(0.1, 20.0, 0.1, 0.5, 5.0) == pytest.approx(0.1)  # pacing shades
    assert _bids(0.0001, 20.0, 0.1, 1.0, 5.0) == 0.02  # clipped up to min_bid
    assert _bids(0.9, 500.0, 0.2, 1.0, 5.0) == 3.0  # clipped down to max_bid


def test_no_budget_no_bid() -> None:
    assert _bids(0.1, 20.0, 0.1, 1.0, 0.0) == 0.0
    assert _bids(0.1, 20.0, 0.1, 1.0, -1.0) == 0.0


def test_bad_limits_refused() -> None:
    with pytest.raises(ValueError, match="min_bid"):
        bids(pcvr=np.ones(1), price=np.ones(1), target_share=np.ones(1), pacing=np.ones(1),
             remaining_budget=np.ones(1), min_bid=2.0, max_bid=1.0)


@given(
    arrays(np.float64, 20, elements=st.floats(0, 1)),
    arrays(np.float64, 20, elements=st.floats(0.5, 5000)),
    arrays(np.float64, 20, elements=st.floats(-5, 50)),
)
def test_bids_in_range_and_zero_without_budget(
    pcvr: np.ndarray, price: np.ndarray, budget: np.ndarray
) -> None:
    b = bids(pcvr=pcvr, price=price, target_share=np.full(20, 0.1), pacing=np.full(20, 0.8),
             remaining_budget=budget, min_bid=0.02, max_bid=3.0)
    has = budget > 0
    assert np.all(b[~has] == 0.0)
    assert np.all((b[has] >= 0.02) & (b[has] <= 3.0))
    # monotone in value
    value = pcvr * price * 0.1 * 0.8
    order = np.argsort(value[has], kind="stable")
    assert np.all(np.diff(b[has][order]) >= 0)
