"""The marketplace world the bidder lives in: shops, listings, buyers and the true click/purchase laws.

This is the simulator's ground truth, pure and seeded. It never talks to Kafka; ``streams/simulate.py``
drives it over the broker and ``onnx_models/`` drives it offline to log training traffic.

True laws (the models never see ``quality``/``appeal``; they must learn them from rolling stats):

    base_ctr  = sigmoid(-3.6 + 0.9 quality + 2.2 (relevance - 0.5) + 0.7 match + device[d] + 0.25 sin(2 pi hour/24))
    P(click)  = base_ctr * position_bias[slot],   position_bias[slot] = exp(-0.02 slot)
    P(buy | click) = sigmoid(-2.6 + 0.9 appeal - 0.6 (log price - 3.2) + 0.5 match)

``appeal`` is correlated with ``quality`` (rho = 0.6). A purchase follows its click after an
exponential delay (mean ``purchase_delay_mean_s``).

>>> w = World.generate(WorldConfig(n_shops=5, n_listings=200, n_users=50), seed=1)
>>> q = w.draw_query(np.random.default_rng(0), now=1_700_000_000.0, n_candidates=20)
>>> q.listing_ids.shape, bool(np.all(q.relevance <= 1.0))
((20,), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEVICES",
    "PAGES",
    "QueryDraw",
    "World",
    "WorldConfig",
    "position_bias",
    "sigmoid",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DEVICES: tuple[str, ...] = ("mobile", "desktop", "app")
PAGES: tuple[str, ...] = ("search", "category", "market")
_DEVICE_EFFECT = np.array([0.0, -0.15, 0.2])
_LOG_PRICE_CENTER = 3.2


def sigmoid(x: F64) -> F64:
    """Numerically safe logistic function."""
    out: F64 = 1.0 / (1.0 + np.exp(-np.clip(x, -40.0, 40.0)))
    return out


def position_bias(slots: I64 | range) -> F64:
    """Relative click propensity of each slot (slot 0 = top)."""
    out: F64 = np.exp(-0.02 * np.asarray(slots, dtype=np.float64))
    return out


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """Size and economics of a simulated marketplace."""

    n_shops: int = 300
    n_listings: int = 30_000
    n_users: int = 20_000
    n_categories: int = 24
    budget_median: float = 150.0
    """median daily budget of a shop, in currency units"""
    price_median: float = 25.0
    purchase_delay_mean_s: float = 60.0
    in_category_share: float = 0.7
    """share of a query's candidates retrieved from the query's own category"""


@dataclass(frozen=True, slots=True)
class QueryDraw:
    """One buyer search as retrieval hands it to the bidder, plus the truth behind it."""

    user_id: int
    category: int
    """category the buyer is searching in"""
    device: str
    page: str
    hour: int
    query_text: str
    listing_ids: I64
    """candidate listing ids, unique"""
    relevance: F64
    """retrieval relevance per candidate, in [0, 1]"""
    base_ctr: F64
    """true click probability at slot 0, per candidate"""
    cvr: F64
    """true purchase probability given a click, per candidate"""


@dataclass(frozen=True, slots=True)
class World:
    """A seeded marketplace. Arrays are columnar; row ``i`` of the listing arrays is one listing."""

    config: WorldConfig
    shop_ids: I64
    shop_budget: F64
    shop_target_share: F64
    listing_ids: I64
    listing_shop: I64
    """row into the shop arrays"""
    listing_price: F64
    listing_category: I64
    listing_quality: F64
    listing_appeal: F64
    user_category: I64
    _by_category: tuple[I64, ...]

    @classmethod
    def generate(cls, config: WorldConfig, *, seed: int) -> World:
        """Draw a world; the same seed gives the same world."""
        rng = np.random.default_rng(seed)
        c = config
        shop_ids = np.arange(1, c.n_shops + 1, dtype=np.int64) * 10 + 7
        budget = np.round(c.budget_median * rng.lognormal(0.0, 0.6, c.n_shops), 2)
        share = np.round(rng.uniform(0.02, 0.08, c.n_shops), 3)
        listing_ids = np.arange(1, c.n_listings + 1, dtype=np.int64) * 100 + 3
        listing_shop = rng.integers(0, c.n_shops, c.n_listings)
        price = np.round(c.price_median * rng.lognormal(0.0, 0.7, c.n_listings), 2).clip(1.0, 5000.0)
        category = rng.integers(0, c.n_categories, c.n_listings)
        quality = rng.normal(0.0, 1.0, c.n_listings)
        appeal = 0.6 * quality + 0.8 * rng.normal(0.0, 1.0, c.n_listings)
        user_category = rng.integers(0, c.n_categories, c.n_users)
        by_cat = tuple(np.flatnonzero(category == k) for k in range(c.n_categories))
        return cls(
            config=c,
            shop_ids=shop_ids,
            shop_budget=budget,
            shop_target_share=share,
            listing_ids=listing_ids,
            listing_shop=listing_shop.astype(np.int64),
            listing_price=price,
            listing_category=category.astype(np.int64),
            listing_quality=quality,
            listing_appeal=appeal,
            user_category=user_category.astype(np.int64),
            _by_category=by_cat,
        )

    def listing_rows(self, listing_ids: I64) -> I64:
        """Rows of the given listing ids (ids are ``row * 100 + 103``)."""
        rows: I64 = (np.asarray(listing_ids, dtype=np.int64) - 103) // 100
        return rows

    def draw_query(self, rng: np.random.Generator, *, now: float, n_candidates: int = 600) -> QueryDraw:
        """A search by a random buyer at time ``now`` (epoch seconds) with ``n_candidates`` candidates."""
        c = self.config
        user = int(rng.integers(0, c.n_users))
        # buyers mostly search their favourite category
        cat = int(self.user_category[user]) if rng.random() < 0.8 else int(rng.integers(0, c.n_categories))
        n = min(n_candidates, c.n_listings)
        pool = self._by_category[cat]
        n_in = min(len(pool), round(n * c.in_category_share))
        rows_in = rng.choice(pool, size=n_in, replace=False) if n_in else np.empty(0, np.int64)
        rows_out = rng.choice(c.n_listings, size=n + n_in, replace=False)
        rows_out = rows_out[~np.isin(rows_out, rows_in)][: n - n_in]
        rows = np.concatenate([rows_in, rows_out]).astype(np.int64)
        rng.shuffle(rows)
        match = (self.listing_category[rows] == cat).astype(np.float64)
        relevance = np.clip(0.35 + 0.35 * match + rng.normal(0.0, 0.15, len(rows)), 0.0, 1.0)
        device_idx = int(rng.choice(3, p=[0.55, 0.3, 0.15]))
        page = PAGES[int(rng.choice(3, p=[0.7, 0.2, 0.1]))]
        hour = int((now // 3600) % 24)
        base = sigmoid(
            -3.6
            + 0.9 * self.listing_quality[rows]
            + 2.2 * (relevance - 0.5)
            + 0.7 * match
            + _DEVICE_EFFECT[device_idx]
            + 0.25 * math.sin(2 * math.pi * hour / 24)
        )
        cvr = sigmoid(
            -2.6
            + 0.9 * self.listing_appeal[rows]
            - 0.6 * (np.log(self.listing_price[rows]) - _LOG_PRICE_CENTER)
            + 0.5 * match
        )
        return QueryDraw(
            user_id=user + 1,
            category=cat,
            device=DEVICES[device_idx],
            page=page,
            hour=hour,
            query_text=f"category-{cat} search",
            listing_ids=self.listing_ids[rows],
            relevance=np.round(relevance, 4),
            base_ctr=base,
            cvr=cvr,
        )
