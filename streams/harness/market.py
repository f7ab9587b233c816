"""The marketplace world the bidder lives in: shops, listings, buyers and the true click/purchase laws.

This is the simulator's ground truth, pure and seeded. It never talks to Kafka; ``streams/harness/simulate.py``
drives it over the broker and ``onnx_models/`` drives it offline to log training traffic.

True laws (the models never see ``quality``/``appeal``; they must learn them from rolling stats):

    base_ctr  = sigmoid(-6.5 + 0.9 quality + 2.2 (relevance - 0.5) + 0.7 match + device[d] + 0.25 sin(2 pi hour/24))
    P(click)  = base_ctr * position_bias[slot],   position_bias[slot] = exp(-0.02 slot)
    P(buy | click) = sigmoid(-3.3 + 0.9 appeal - 0.6 (log price - 3.2) + 0.5 match)

(intercepts: ``CTR_INTERCEPT``, ``CVR_INTERCEPT``). ``appeal`` is correlated with ``quality`` (rho = 0.6).
Searches arrive at ``query_rate_qps`` (event time), online and offline alike. A purchase follows its click after an
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

from bidder.query.features import DEVICES, PAGES

__all__ = [
    "BuyerResponse",
    "QueryDraw",
    "World",
    "WorldConfig",
    "position_bias",
    "sigmoid",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_DEVICE_EFFECT = np.array([0.0, -0.15, 0.2])
_LOG_PRICE_CENTER = 3.2
CTR_INTERCEPT = -6.5
"""sets the click rate: 1.7 % of impressions clicked under the served MLP in the demo (`bidder demo --json`,
``ctr``: 0.01678 over 60 s), ~2 % in the training log (CTR log loss 0.083), against ~11 % at -3.6 and 2.8 % at
-6.0; sponsored listings in real marketplaces see roughly 0.3-2 % (issue 16), so this world is inside
that range"""
CVR_INTERCEPT = -3.3
"""sets click-to-purchase: ~19 % of the demo's clicks convert (the served models bid for likely buyers)"""


def sigmoid(x: F64) -> F64:
    """Numerically safe logistic function."""
    out: F64 = 1.0 / (1.0 + np.exp(-np.clip(x, -40.0, 40.0)))
    return out


def _sample_excluding(rng: np.random.Generator, n_total: int, k: int, exclude: I64) -> I64:
    """``k`` distinct random rows of ``range(n_total)`` not in ``exclude``, in random order.

    Draws with replacement and drops repeats (a full permutation of a large catalog per query would
    dominate the offline simulation); falls back to a permutation when the catalog is small."""
    if 3 * (k + len(exclude)) > n_total:
        pool = rng.permutation(n_total)
        out: I64 = pool[~np.isin(pool, exclude)][:k].astype(np.int64)
        return out
    taken = np.zeros(n_total, dtype=bool)
    taken[exclude] = True
    picked: list[I64] = []
    need = k
    while need > 0:
        draw = rng.integers(0, n_total, size=need + need // 4 + 8)
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)]
        draw = draw[~taken[draw]][:need]
        taken[draw] = True
        picked.append(draw)
        need -= len(draw)
    return np.concatenate(picked).astype(np.int64)


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
    purchase_delay_mean_s: float = 5.0
    query_rate_qps: float = 50.0
    """searches per second of event time: the live demo's rate and the offline log's, so rolling counts and
    recencies (which depend on how often a listing is shown) mean the same online and offline"""
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
class BuyerResponse:
    """A buyer's answer to the ads of one outcome, per ad."""

    p_click: F64
    """true click probability (base CTR x position bias)"""
    clicked: npt.NDArray[np.bool_]
    bought: npt.NDArray[np.bool_]
    purchase_delay_s: F64
    """seconds from the click to the purchase (meaningful where ``bought``)"""


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

    def respond(self, rng: np.random.Generator, *, base_ctr: F64, cvr: F64, slots: I64) -> BuyerResponse:
        """How a buyer answers ads shown at ``slots`` (true ``base_ctr`` and ``cvr`` per ad): clicks, purchases
        and each purchase's delay after its click. The one place both the live simulator and the offline log
        draw them."""
        p_click = np.asarray(base_ctr, np.float64) * position_bias(slots)
        clicked = rng.random(len(p_click)) < p_click
        bought = clicked & (rng.random(len(p_click)) < cvr)
        delay = rng.exponential(self.config.purchase_delay_mean_s, len(p_click))
        return BuyerResponse(p_click=p_click, clicked=clicked, bought=bought, purchase_delay_s=delay)

    def listing_rows(self, listing_ids: I64) -> I64:
        """Rows of the given listing ids (ids are ``row * 100 + 103``)."""
        rows: I64 = (np.asarray(listing_ids, dtype=np.int64) - 103) // 100
        return rows

    def draw_query(self, rng: np.random.Generator, *, now: float, n_candidates: int = 600,
                   hour: int | None = None) -> QueryDraw:
        """A search by a random buyer at time ``now`` (epoch seconds) with ``n_candidates`` candidates.

        ``hour`` overrides the hour of day of ``now`` (the offline log compresses a day of hours)."""
        c = self.config
        user = int(rng.integers(0, c.n_users))
        # buyers mostly search their favourite category
        cat = int(self.user_category[user]) if rng.random() < 0.8 else int(rng.integers(0, c.n_categories))
        n = min(n_candidates, c.n_listings)
        pool = self._by_category[cat]
        n_in = min(len(pool), round(n * c.in_category_share))
        rows_in = rng.choice(pool, size=n_in, replace=False) if n_in else np.empty(0, np.int64)
        rows_out = _sample_excluding(rng, c.n_listings, n - n_in, rows_in)
        rows = np.concatenate([rows_in, rows_out]).astype(np.int64)
        rng.shuffle(rows)
        match = (self.listing_category[rows] == cat).astype(np.float64)
        relevance = np.clip(0.35 + 0.35 * match + rng.normal(0.0, 0.15, len(rows)), 0.0, 1.0)
        device_idx = int(rng.choice(3, p=[0.55, 0.3, 0.15]))
        page = PAGES[int(rng.choice(3, p=[0.7, 0.2, 0.1]))]
        hour = int((now // 3600) % 24) if hour is None else hour
        base = sigmoid(
            CTR_INTERCEPT
            + 0.9 * self.listing_quality[rows]
            + 2.2 * (relevance - 0.5)
            + 0.7 * match
            + _DEVICE_EFFECT[device_idx]
            + 0.25 * math.sin(2 * math.pi * hour / 24)
        )
        cvr = sigmoid(
            CVR_INTERCEPT
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
