"""The streaming bidder's view of sellers' money: budgets from the catalog, spend from the ledger.

Implements :class:`bidder.query.pipeline.BudgetView`. Remaining budget is today's (UTC) budget minus the
spend today (a worker's :class:`bidder.clicks.shop_spend.ShopSpend`: its own ledger and what the other
partitions' owners publish); the pacing multiplier follows :mod:`bidder.query.pacing`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from bidder.clicks.billing import Ledger, day_of
from bidder.clicks.shop_spend import SpendSource
from bidder.query.catalog import Catalog
from bidder.query.pacing import day_fraction, pacing_multiplier

__all__ = ["LedgerBudget"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


class LedgerBudget:
    """Remaining budget and pacing per shop row, read live from the ledger fold.

    >>> cat = Catalog(); cat.upsert_shop(7, daily_budget=10.0, target_share=0.1)
    >>> LedgerBudget(catalog=cat, ledger=Ledger(), clock=lambda: 0.0).remaining(np.array([0])).tolist()
    [10.0]
    """

    def __init__(self, *, catalog: Catalog, ledger: Ledger | SpendSource, clock: Callable[[], float],
                 gain: float = 2.0, floor: float = 0.25, ceiling: float = 1.5) -> None:
        self.gain = gain
        self.floor = floor
        self.ceiling = ceiling
        self._catalog = catalog
        self._ledger = ledger
        self._clock = clock
        self._key: tuple[int, int, int] = (-1, -1, -1)
        self._spend: F64 = np.zeros(0)

    def _spend_by_row(self, now: float) -> F64:
        """Today's spend of every shop row, rebuilt only when the ledger, the day or the shops changed."""
        key = (self._ledger.version, day_of(now), self._catalog.n_shops)
        if key != self._key:
            day = key[1]
            ids = self._catalog.shop_ids[: self._catalog.n_shops].tolist()
            self._spend = np.fromiter((self._ledger.spend(i, day) for i in ids), np.float64, len(ids))
            self._key = key
        return self._spend

    def spend(self, shop_rows: I64, now: float) -> F64:
        out: F64 = self._spend_by_row(now)[shop_rows]
        return out

    def remaining(self, shop_rows: I64) -> F64:
        out: F64 = self._catalog.daily_budget[shop_rows] - self.spend(shop_rows, self._clock())
        return out

    def pacing(self, shop_rows: I64, now: float) -> F64:
        return pacing_multiplier(spend=self.spend(shop_rows, now), budget=self._catalog.daily_budget[shop_rows],
                                 day_fraction=day_fraction(now), gain=self.gain, floor=self.floor,
                                 ceiling=self.ceiling)
