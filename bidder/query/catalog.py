"""Listings and shops as columnar arrays, fed by the compacted ``listings`` and ``shops`` topics.

A listing id maps to a stable row; every per-listing array (price, category, shop row, rolling stats)
is indexed by that row, so a query's 600 candidates gather with one fancy-index per column.

>>> cat = Catalog()
>>> cat.upsert_shop(7, daily_budget=50.0, target_share=0.1)
>>> cat.upsert_listing(103, shop_id=7, price=20.0, category=3)
>>> rows, known = cat.rows(np.array([103, 999]))
>>> known.tolist(), float(cat.price[rows[0]])
([True, False], 20.0)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Catalog"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _grow(a: npt.NDArray[np.generic], size: int, fill: float) -> npt.NDArray[np.generic]:
    out = np.full(size, fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


class Catalog:
    """Current listings and shops. Unknown ids resolve to row ``-1`` and ``known == False``."""

    def __init__(self, capacity: int = 1024) -> None:
        self._listing_row: dict[int, int] = {}
        self._shop_row: dict[int, int] = {}
        self.listing_ids: I64 = np.zeros(capacity, np.int64)
        self.price: F64 = np.zeros(capacity, np.float64)
        self.category: I64 = np.full(capacity, -1, np.int64)
        self.shop_row: I64 = np.full(capacity, -1, np.int64)
        self.active: npt.NDArray[np.bool_] = np.zeros(capacity, np.bool_)
        self.shop_ids: I64 = np.zeros(64, np.int64)
        self.daily_budget: F64 = np.zeros(64, np.float64)
        self.target_share: F64 = np.zeros(64, np.float64)

    @property
    def n_listings(self) -> int:
        return len(self._listing_row)

    @property
    def n_shops(self) -> int:
        return len(self._shop_row)

    def _new_listing_row(self, listing_id: int) -> int:
        row = len(self._listing_row)
        if row >= len(self.price):
            size = 2 * len(self.price)
            self.listing_ids = _grow(self.listing_ids, size, 0)  # type: ignore[assignment]
            self.price = _grow(self.price, size, 0.0)  # type: ignore[assignment]
            self.category = _grow(self.category, size, -1)  # type: ignore[assignment]
            self.shop_row = _grow(self.shop_row, size, -1)  # type: ignore[assignment]
            self.active = _grow(self.active, size, 0)  # type: ignore[assignment]
        self._listing_row[listing_id] = row
        self.listing_ids[row] = listing_id
        return row

    def shop_row_of(self, shop_id: int) -> int:
        """Row of a shop, creating an empty (zero-budget) one if it is not known yet."""
        row = self._shop_row.get(shop_id)
        if row is None:
            row = len(self._shop_row)
            if row >= len(self.shop_ids):
                size = 2 * len(self.shop_ids)
                self.shop_ids = _grow(self.shop_ids, size, 0)  # type: ignore[assignment]
                self.daily_budget = _grow(self.daily_budget, size, 0.0)  # type: ignore[assignment]
                self.target_share = _grow(self.target_share, size, 0.0)  # type: ignore[assignment]
            self._shop_row[shop_id] = row
            self.shop_ids[row] = shop_id
        return row

    def upsert_shop(self, shop_id: int, *, daily_budget: float, target_share: float) -> None:
        row = self.shop_row_of(shop_id)
        self.daily_budget[row] = daily_budget
        self.target_share[row] = target_share

    def upsert_listing(self, listing_id: int, *, shop_id: int, price: float, category: int) -> None:
        row = self._listing_row.get(listing_id)
        if row is None:
            row = self._new_listing_row(listing_id)
        self.price[row] = price
        self.category[row] = category
        self.shop_row[row] = self.shop_row_of(shop_id)
        self.active[row] = True

    def remove_listing(self, listing_id: int) -> None:
        """A tombstone: the row stays (its stats are kept) but the listing no longer bids."""
        row = self._listing_row.get(listing_id)
        if row is not None:
            self.active[row] = False

    def rows(self, listing_ids: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
        """Rows of ``listing_ids`` and a mask of which are known and active."""
        get = self._listing_row.get
        rows = np.fromiter((get(i, -1) for i in listing_ids.tolist()), np.int64, len(listing_ids))
        known = rows >= 0
        known[known] = self.active[rows[known]]
        return rows, known

    def listing_row(self, listing_id: int) -> int | None:
        return self._listing_row.get(listing_id)

    def shop_row_of_listing(self, listing_id: int) -> int | None:
        row = self._listing_row.get(listing_id)
        return None if row is None else int(self.shop_row[row])
