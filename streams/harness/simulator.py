"""The marketplace simulator's behaviour: what it sends and how buyers answer auction outcomes.

Pure and seeded: ``streams/harness/simulate.py`` moves these events over Kafka. The simulator keeps the
truth behind everything it sent (true click and purchase probabilities of each shown ad), so models
can be scored against the oracle and every charge can be checked.

Buyers answer an outcome slot by slot: a click with probability ``base_ctr x position_bias[slot]``;
``duplicate_click_rate`` of clicks are sent twice with the same ``click_id`` (client retries, which
must not be charged twice); a clicked ad is bought with the true conversion probability after an
exponential delay.

>>> sim = Simulator(World.generate(WorldConfig(n_shops=3, n_listings=100, n_users=10), seed=1),
...                 rng=np.random.default_rng(2), n_candidates=10)
>>> q = sim.next_query(now=1_700_000_000.0)
>>> len(q.listing_ids), sim.sent["queries"]
(10, 1)
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bidder.events import Click, Listing, Purchase, Query, Shop
from bidder.query.features import QueryContext
from streams.harness.market import World, WorldConfig

__all__ = ["Impression", "Simulator", "World", "WorldConfig"]


@dataclass(frozen=True, slots=True)
class Impression:
    """Truth about one shown ad."""

    query_id: str
    listing_id: int
    slot: int
    p_click: float
    p_buy: float
    clicked: bool
    bought: bool


@dataclass
class _Truth:
    listing_ids: dict[int, int]
    base_ctr: np.ndarray[Any, np.dtype[np.float64]]
    cvr: np.ndarray[Any, np.dtype[np.float64]]
    user_id: int


@dataclass
class Simulator:
    """Drives a :class:`World`: catalog, queries, clicks and purchases, with the truth kept."""

    world: World
    rng: np.random.Generator
    n_candidates: int = 600
    duplicate_click_rate: float = 0.02
    purchase_delay_mean_s: float | None = None
    """defaults to the world's"""
    max_pending_queries: int = 50_000
    sent: Counter[str] = field(default_factory=Counter)
    impressions: list[Impression] = field(default_factory=list)
    _pending: OrderedDict[str, _Truth] = field(default_factory=OrderedDict)
    _purchases: list[tuple[float, Purchase]] = field(default_factory=list)
    _seq: int = 0

    def catalog(self, *, now: float) -> tuple[list[Shop], list[Listing]]:
        """Every shop and listing of the world as catalog events."""
        w = self.world
        shops = [
            Shop(shop_id=int(sid), daily_budget=float(b), target_share=float(s), ts=now)
            for sid, b, s in zip(w.shop_ids, w.shop_budget, w.shop_target_share, strict=True)
        ]
        listings = [
            Listing(listing_id=int(lid), shop_id=int(w.shop_ids[sr]), price=float(p), category=int(c), ts=now)
            for lid, sr, p, c in zip(w.listing_ids, w.listing_shop, w.listing_price, w.listing_category,
                                     strict=True)
        ]
        self.sent["shops"] += len(shops)
        self.sent["listings"] += len(listings)
        return shops, listings

    def next_query(self, *, now: float) -> Query:
        """Draw a search and remember its truth until its outcome arrives."""
        d = self.world.draw_query(self.rng, now=now, n_candidates=self.n_candidates)
        self._seq += 1
        qid = f"q-{self._seq:09d}-{int(self.rng.integers(1 << 30)):08x}"
        self._pending[qid] = _Truth(
            listing_ids={int(x): i for i, x in enumerate(d.listing_ids)},
            base_ctr=d.base_ctr,
            cvr=d.cvr,
            user_id=d.user_id,
        )
        while len(self._pending) > self.max_pending_queries:
            self._pending.popitem(last=False)
            self.sent["queries_expired"] += 1
        self.sent["queries"] += 1
        return Query(
            query_id=qid,
            ts=now,
            user_id=d.user_id,
            context=QueryContext(device=d.device, page=d.page, hour=d.hour, category=d.category),
            text=d.query_text,
            listing_ids=d.listing_ids,
            relevance=d.relevance,
        )

    def answer(self, outcome: dict[str, Any], *, now: float) -> list[Click]:
        """Buyer reactions to an auction outcome (decoded ``auctions`` JSON): clicks now, purchases later."""
        truth = self._pending.pop(str(outcome.get("query_id")), None)
        if truth is None:
            self.sent["outcomes_unknown"] += 1
            return []
        self.sent["outcomes"] += 1
        winners = outcome.get("winners", [])
        clicks: list[Click] = []
        shown = [(int(w["listing_id"]), int(w["slot"]), w) for w in winners]
        known = [(lid, slot, w, truth.listing_ids[lid]) for lid, slot, w in shown if lid in truth.listing_ids]
        self.sent["winners_not_candidates"] += len(shown) - len(known)
        if not known:
            return clicks
        idx = np.array([i for *_, i in known], np.int64)
        answer = self.world.respond(self.rng, base_ctr=truth.base_ctr[idx], cvr=truth.cvr[idx],
                                    slots=np.array([slot for _, slot, _, _ in known], np.int64))
        if self.purchase_delay_mean_s is not None:  # the world's delays, rescaled
            delays = answer.purchase_delay_s * (self.purchase_delay_mean_s / self.world.config.purchase_delay_mean_s)
        else:
            delays = answer.purchase_delay_s
        qid = str(outcome["query_id"])
        for j, (lid, slot, winner, _) in enumerate(known):
            clicked, bought = bool(answer.clicked[j]), bool(answer.bought[j])
            self.impressions.append(Impression(qid, lid, slot, float(answer.p_click[j]), float(truth.cvr[idx[j]]),
                                               clicked, bought))
            if not clicked:
                continue
            click = Click.of_winner(outcome, winner, click_id=f"c-{qid}-{slot}", user_id=truth.user_id, ts=now)
            clicks.append(click)
            self.sent["clicks"] += 1
            if self.rng.random() < self.duplicate_click_rate:
                clicks.append(click)
                self.sent["clicks_resent"] += 1
            if bought:
                due = now + float(delays[j])
                amount = float(self.world.listing_price[self.world.listing_rows(np.array([lid]))[0]])
                self._purchases.append((due, Purchase(order_id=f"o-{click.click_id}", user_id=truth.user_id,
                                                      listing_id=lid, shop_id=click.shop_id, ts=due,
                                                      amount=amount)))
        return clicks

    def due_purchases(self, *, now: float) -> list[Purchase]:
        """Purchases whose delay has passed."""
        due = [p for t, p in self._purchases if t <= now]
        self._purchases = [(t, p) for t, p in self._purchases if t > now]
        self.sent["purchases"] += len(due)
        return due

    @property
    def pending_purchases(self) -> int:
        return len(self._purchases)
