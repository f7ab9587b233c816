"""Logged simulator traffic: the training data of the CTR and CVR models, produced offline.

``simulate`` runs the seeded :class:`streams.harness.market.World` (the same laws, rate and buyers as the
live simulator: :meth:`~streams.harness.market.World.draw_query`,
:meth:`~streams.harness.market.World.respond`) under a simple bidding policy and records what the bidder
would have logged:

* every query draws 600 candidates; features are gathered exactly as served
  (:func:`bidder.query.features.gather` over a :class:`bidder.query.catalog.Catalog` and the live
  :class:`bidder.query.rolling.RollingStats`), so rolling CTR/CVR, counts and recency look as they will in
  production;
* policy: pCTR and pCVR from a model (``onnx_models/train.py`` logs with a logistic regression fitted on
  a first, prior-policy run, so the log's ranking, and with it which listings are shown in which slots,
  is a served model's as in the live loop; :func:`prior_policy`, the smoothed rolling CTR/CVR features,
  otherwise), bids from :func:`bidder.query.autobid.bids` (pacing 1, shops stop bidding when today's budget is
  spent), winners from the real GSP auction :func:`bidder.query.auction.run_auction` (budgets scaled by
  ``budget_scale`` so auctions stay full all day);
* each of the 24 winners is an impression; it is clicked with probability
  ``base_ctr * position_bias(slot)`` and a click converts with the world's true CVR, after an
  exponential delay. Impressions, clicks, spend and conversions flow back into the rolling stats at
  their event times;
* the first ``n_warmup`` queries (two hours at the world's 50 q/s) only warm the stats up; after that each
  impression is one logged row with its served features, labels and the true probabilities (the oracle)
  beside them. The logged queries run through a compressed day of hours, so the models see every hour;
* the rolling state at the end is the world's past (:class:`bidder.replica.history.ListingHistory`): shipped as
  ``history.npz`` beside the models, it is what the live demo restores before serving
  (``bidder simulate --history``), so live features continue where the training traffic ended.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bidder.query.auction import run_auction
from bidder.query.autobid import bids as auto_bids
from bidder.query.catalog import Catalog
from bidder.query.features import FEATURE_SPEC, Priors, QueryContext, gather
from bidder.query.rolling import RollingStats
from bidder.replica.history import ListingHistory, world_key
from streams.harness.market import World, WorldConfig

__all__ = ["SERVED_STRIDE", "Policy", "SimConfig", "TrafficLog", "build_catalog", "prior_policy", "simulate"]

SERVED_STRIDE = 100
"""one candidate row in this many is kept as a sample of what was served"""

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How much traffic to simulate; defaults are what the committed models were trained on."""

    world_seed: int = 7
    n_warmup: int = 360_000
    """queries that only warm up the rolling stats: two hours (two feature half-lives) of the world's traffic"""
    n_log: int = 150_000
    """queries whose impressions are logged (50 minutes of the world's traffic; ~0.9 % of impressions are
    clicked, so this is what gives the CVR models ~30k clicks to train on)"""
    rate_qps: float = WorldConfig().query_rate_qps
    """mean query arrival rate (Poisson): the world's, which is also the live demo's default"""
    compressed_day: bool = True
    """the logged queries' hour of day runs through all 24 hours (one hour per ``n_log / 24`` queries), so the
    models see every hour although the log spans minutes; the rolling stats keep real event time"""
    start_ts: float = 1_767_225_600.0
    """2026-01-01T00:00:00Z"""
    n_candidates: int = 600
    slots: int = 24
    half_life_s: float = 3600.0
    prior_ctr: float = 0.02
    prior_cvr: float = 0.05
    prior_strength: float = 50.0
    reserve_price: float = 0.05
    min_bid: float = 0.02
    max_bid: float = 3.0
    budget_scale: float = 10.0
    """shops' daily budgets are multiplied by this in the logging run: over its hours of traffic the real
    budgets would run out, and a log of full auctions trains better models (the live demo starts a fresh day)"""
    world: WorldConfig = field(default_factory=WorldConfig)

    @classmethod
    def small(cls) -> SimConfig:
        """A few seconds of traffic on a small world (tests)."""
        return cls(
            n_warmup=300,
            n_log=1_500,
            rate_qps=0.2,
            n_candidates=200,
            world=WorldConfig(n_shops=40, n_listings=3_000, n_users=2_000),
        )


@dataclass(frozen=True, slots=True)
class TrafficLog:
    """One row per logged impression, in time order."""

    x: F32
    """``(n, d)`` features as served"""
    clicked: npt.NDArray[np.int8]
    purchased: npt.NDArray[np.int8]
    """1 if the impression was clicked and the click converted"""
    p_click: F64
    """true click probability of the impression (base CTR x position bias)"""
    p_buy: F64
    """true purchase probability given a click"""
    slot: I64
    ts: F64
    history: ListingHistory | None = None
    """the world's rolling state at the end of the run: what a live deployment restores
    (``bidder simulate --history``), so serving starts where the training traffic ended"""
    served: F32 = field(default_factory=lambda: np.empty((0, FEATURE_SPEC.n_features), np.float32))
    """every ``SERVED_STRIDE``-th candidate row of every logged query, as served (winners or not): the
    distribution the drift monitor sees live, stored as the models' reference profile"""

    @property
    def n(self) -> int:
        return len(self.clicked)

    def data_hash(self) -> str:
        h = hashlib.sha256()
        for a in (self.x, self.clicked, self.purchased, self.ts):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def build_catalog(world: World) -> Catalog:
    """A catalog holding every shop and listing of the world (catalog row == world row)."""
    cat = Catalog(capacity=len(world.listing_ids))
    for s in range(len(world.shop_ids)):
        cat.upsert_shop(
            int(world.shop_ids[s]),
            daily_budget=float(world.shop_budget[s]),
            target_share=float(world.shop_target_share[s]),
        )
    for r in range(len(world.listing_ids)):
        cat.upsert_listing(
            int(world.listing_ids[r]),
            shop_id=int(world.shop_ids[world.listing_shop[r]]),
            price=float(world.listing_price[r]),
            category=int(world.listing_category[r]),
        )
    return cat


def _cat(parts: Sequence[npt.NDArray[Any]], dtype: type[np.generic], width: int | None = None) -> npt.NDArray[Any]:
    if not parts:
        return np.empty((0,) if width is None else (0, width), dtype)
    return np.concatenate(parts).astype(dtype)


Policy = Callable[[F32], tuple[F64, F64]]
"""features ``(n, d)`` -> ``(pctr, pcvr)``: what the logging bidder believes"""


def prior_policy(x: F32) -> tuple[F64, F64]:
    """The smoothed rolling CTR and CVR features as the predictions (a bidder without models)."""
    return x[:, 1].astype(np.float64), x[:, 2].astype(np.float64)


def simulate(cfg: SimConfig, *, seed: int, progress: Callable[[int, int], None] | None = None,
             policy: Policy = prior_policy) -> TrafficLog:
    """Run the world offline under ``policy``; see the module docstring.

    ``progress(done, total)`` is called every 1,000 queries."""
    world = World.generate(cfg.world, seed=cfg.world_seed)
    catalog = build_catalog(world)
    stats = RollingStats(half_life_s=cfg.half_life_s, capacity=len(world.listing_ids))
    priors = Priors(prior_ctr=cfg.prior_ctr, prior_cvr=cfg.prior_cvr, strength=cfg.prior_strength)
    rng = np.random.default_rng(seed)
    buf = np.empty((cfg.n_candidates, FEATURE_SPEC.n_features), np.float32)
    spent = np.zeros(len(world.shop_ids), np.float64)
    budget = catalog.daily_budget[: catalog.n_shops] * cfg.budget_scale
    day = -1
    pending: list[tuple[float, int]] = []  # (purchase time, listing row)
    xs: list[F32] = []
    served: list[F32] = []
    cols: dict[str, list[npt.NDArray[np.generic]]] = {k: [] for k in ("c", "b", "pc", "pb", "s", "t")}
    now = cfg.start_ts
    total = cfg.n_warmup + cfg.n_log
    for i in range(total):
        if progress is not None and i % 1000 == 0:
            progress(i, total)
        now += float(rng.exponential(1.0 / cfg.rate_qps))
        if int(now // 86_400) != day:  # budgets reset at midnight UTC
            day = int(now // 86_400)
            spent[:] = 0.0
        while pending and pending[0][0] <= now:
            t, r = heapq.heappop(pending)
            stats.record(np.array([r], np.int64), kind="conversions", now=t)
        hour = (i - cfg.n_warmup) * 24 // cfg.n_log if cfg.compressed_day and i >= cfg.n_warmup else None
        q = world.draw_query(rng, now=now, n_candidates=cfg.n_candidates, hour=hour)
        rows = world.listing_rows(q.listing_ids)
        ctx = QueryContext(device=q.device, page=q.page, hour=q.hour, category=q.category)
        x = gather(
            rows=rows, relevance=q.relevance, context=ctx, catalog=catalog, stats=stats, priors=priors,
            now=now, out=buf,
        )
        shop = catalog.shop_row[rows]
        pctr, pcvr = policy(x)
        b = auto_bids(
            pcvr=pcvr,
            price=catalog.price[rows],
            target_share=catalog.target_share[shop],
            pacing=np.ones(len(rows)),
            remaining_budget=budget[shop] - spent[shop],
            min_bid=cfg.min_bid,
            max_bid=cfg.max_bid,
        )
        res = run_auction(bids=b, pctr=pctr, reserve_price=cfg.reserve_price, slots=cfg.slots, rng=rng)
        w = res.winners
        k = len(w)
        answer = world.respond(rng, base_ctr=q.base_ctr[w], cvr=q.cvr[w], slots=np.arange(k))
        p_click, clicked, bought = answer.p_click, answer.clicked, answer.bought
        stats.record(rows[w], kind="impressions", now=now)
        if clicked.any():
            crow = rows[w[clicked]]
            stats.record(crow, kind="clicks", now=now)
            cshop = shop[w[clicked]]
            charge = np.minimum(res.prices[clicked], np.maximum(budget[cshop] - spent[cshop], 0.0))
            np.add.at(spent, cshop, charge)
            stats.record(crow, kind="spend", now=now, amount=charge)
            for r, d in zip(rows[w[bought]].tolist(), answer.purchase_delay_s[bought].tolist(), strict=True):
                heapq.heappush(pending, (now + d, r))
        if i >= cfg.n_warmup:
            served.append(x[i % SERVED_STRIDE :: SERVED_STRIDE].copy())
            xs.append(x[w].copy())
            cols["c"].append(clicked.astype(np.int8))
            cols["b"].append(bought.astype(np.int8))
            cols["pc"].append(p_click)
            cols["pb"].append(q.cvr[w])
            cols["s"].append(np.arange(k, dtype=np.int64))
            cols["t"].append(np.full(k, now))
    return TrafficLog(
        x=_cat(xs, np.float32, FEATURE_SPEC.n_features),
        clicked=_cat(cols["c"], np.int8),
        purchased=_cat(cols["b"], np.int8),
        p_click=_cat(cols["pc"], np.float64),
        p_buy=_cat(cols["pb"], np.float64),
        slot=_cat(cols["s"], np.int64),
        ts=_cat(cols["t"], np.float64),
        served=_cat(served, np.float32, FEATURE_SPEC.n_features),
        history=ListingHistory.from_stats(stats, listing_ids=world.listing_ids, end=now, span_s=now - cfg.start_ts,
                                          world=world_key(cfg.world, cfg.world_seed)),
    )
