"""The bidding hot path as one facade: decoded queries in, auction outcomes out.

Per call to :meth:`BidPipeline.process` (one or more queries, e.g. one ``take(batch, within)``):

1. Candidate ids -> catalog rows (:class:`~bidder.query.catalog.RowIndex`, the vectorised equivalent of
   ``Catalog.rows``); unknown or inactive listings are skipped (``n_unknown``).
2. ``features.gather`` of every query into one preallocated float32 buffer, one slice per query.
3. One ONNX Runtime call for CTR and one for CVR over the whole buffer (several queries in flight are
   one bigger batch: that is how a GPU pays off; on CPU it costs nothing).
4. Per query: :func:`bidder.query.autobid.bids` with each shop's remaining budget and pacing multiplier from
   the :class:`BudgetView`, then the GSP auction :func:`bidder.query.auction.run_auction`.
5. An :class:`bidder.events.AuctionOutcome` with the winners in slot order (each carrying the feature
   vector as served, for labels), the model versions and stage timings in ms: ``gather`` and ``bid``,
   ``auction`` of that query; ``score`` of the whole call; ``total`` from the start of the call until
   this outcome was built (what the query waited). Timings use the injected ``perf_counter``; feature
   time (``now``) comes from the injected ``clock``, read once per call.

Pure and synchronous: no I/O, no logging, no global state; time and randomness are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from bidder.events import AuctionOutcome, Query, Winner
from bidder.query.auction import run_auction
from bidder.query.autobid import bids as auto_bids
from bidder.query.catalog import Catalog, RowIndex
from bidder.query.features import FEATURE_SPEC, Priors, gather
from bidder.query.rolling import RollingStats
from bidder.query.scoring import Scorer

__all__ = ["BidPipeline", "BudgetView", "ScoreFn", "StaticBudget", "UnlimitedBudget"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


ScoreFn = Callable[[F32, Sequence[tuple[Query, int, int]]], tuple[F32, F32, dict[str, str]]]
"""features, per-query (query, offset, rows) spans -> (pctr, pcvr, {query_id: shed reason})"""


@runtime_checkable
class BudgetView(Protocol):
    """What the hot path needs to know about sellers' money, per shop row."""

    def remaining(self, shop_rows: I64) -> F64:
        """Budget left today for each shop row (0 or less: the shop does not bid)."""
        ...

    def pacing(self, shop_rows: I64, now: float) -> F64:
        """Bid multiplier per shop row at time ``now`` (1 = no shading)."""
        ...


class UnlimitedBudget:
    """Every shop has money and bids unshaded (offline runs, benchmarks, tests).

    >>> UnlimitedBudget().remaining(np.array([0, 3])).tolist()
    [inf, inf]
    """

    def __init__(self) -> None:
        self._inf = np.full(0, np.inf)
        self._one = np.ones(0)

    def _grow(self, n: int) -> None:
        if n > len(self._inf):
            self._inf = np.full(2 * n, np.inf)
            self._one = np.ones(2 * n)

    def remaining(self, shop_rows: I64) -> F64:
        self._grow(len(shop_rows))
        return self._inf[: len(shop_rows)]

    def pacing(self, shop_rows: I64, now: float) -> F64:
        self._grow(len(shop_rows))
        return self._one[: len(shop_rows)]


class StaticBudget:
    """Fixed remaining budget per shop row and one pacing multiplier; ``charge`` spends it.

    >>> b = StaticBudget(remaining_by_shop_row=np.array([5.0, 1.0]))
    >>> b.charge(np.array([1]), amount=np.array([2.0])).tolist(), b.remaining(np.array([0, 1])).tolist()
    ([1.0], [5.0, 0.0])
    """

    def __init__(self, *, remaining_by_shop_row: F64, pacing: float = 1.0) -> None:
        self._remaining = np.asarray(remaining_by_shop_row, np.float64).copy()
        self.pacing_multiplier = pacing

    @classmethod
    def from_catalog(cls, catalog: Catalog, *, pacing: float = 1.0) -> StaticBudget:
        """Each shop starts with its full daily budget."""
        return cls(remaining_by_shop_row=catalog.daily_budget[: catalog.n_shops], pacing=pacing)

    def remaining(self, shop_rows: I64) -> F64:
        rows = np.asarray(shop_rows, np.int64)
        out = np.zeros(len(rows), np.float64)
        ok = (rows >= 0) & (rows < len(self._remaining))
        out[ok] = self._remaining[rows[ok]]
        return out

    def pacing(self, shop_rows: I64, now: float) -> F64:
        return np.full(len(shop_rows), self.pacing_multiplier)

    def charge(self, shop_rows: I64, *, amount: F64) -> F64:
        """Spend ``min(amount, remaining)`` per click (rows may repeat); returns what was charged."""
        charged = np.zeros(len(shop_rows), np.float64)
        for i, (r, a) in enumerate(zip(shop_rows.tolist(), np.asarray(amount).tolist(), strict=True)):
            c = min(a, max(self._remaining[r], 0.0))
            self._remaining[r] -= c
            charged[i] = c
        return charged


class BidPipeline:
    """gather -> score CTR and CVR -> auto-bid -> GSP auction, for a batch of decoded queries."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        stats: RollingStats,
        priors: Priors,
        ctr: Scorer,
        cvr: Scorer,
        budget: BudgetView,
        slots: int,
        reserve_price: float,
        min_bid: float,
        max_bid: float,
        clock: Callable[[], float],
        rng: np.random.Generator,
        model_versions: Mapping[str, str],
        perf_counter: Callable[[], float] = time.perf_counter,
        capacity: int = 2048,
    ) -> None:
        if not 0.0 <= min_bid <= max_bid:
            raise ValueError(f"need 0 <= min_bid <= max_bid, got {min_bid}, {max_bid}")
        self.catalog = catalog
        self.stats = stats
        self.priors = priors
        self.ctr = ctr
        self.cvr = cvr
        self.budget = budget
        self.slots = slots
        self.reserve_price = reserve_price
        self.min_bid = min_bid
        self.max_bid = max_bid
        self.model_versions = dict(model_versions)
        self._clock = clock
        self._rng = rng
        self._perf = perf_counter
        self._x: F32 = np.empty((capacity, FEATURE_SPEC.n_features), np.float32)
        self.last_scored: tuple[F32, F32, F32] | None = None
        """(features, pctr, pcvr) of every candidate scored by the last call, for monitors
        (views into internal buffers: valid until the next call)"""
        self._index = RowIndex(catalog)

    def _ensure_capacity(self, n: int) -> None:
        if n > len(self._x):
            self._x = np.empty((max(n, 2 * len(self._x)), FEATURE_SPEC.n_features), np.float32)

    def process(self, queries: Sequence[Query], *, score: ScoreFn | None = None) -> list[AuctionOutcome]:
        """One outcome per query, in order; see the module docstring for the stages.

        ``score`` replaces the two direct model calls (the worker passes the micro-batcher there): it
        gets the feature matrix and each query's ``(query, offset, rows)`` span and returns pCTR and
        pCVR for every row plus ``{query_id: reason}`` for queries it shed; a shed query gets an
        outcome with no winners and ``extra["shed"]`` = the reason.
        """
        perf = self._perf
        t_start = perf()
        now = self._clock()
        cat = self.catalog
        self._ensure_capacity(sum(len(q.listing_ids) for q in queries))
        x_all = self._x
        spans: list[tuple[int, int, I64, int, float]] = []
        offset = 0
        for q in queries:
            t0 = perf()
            rows, known = self._index.rows(q.listing_ids)
            if known.all():
                rel = q.relevance
            else:
                rows, rel = rows[known], q.relevance[known]
            n = len(rows)
            gather(
                rows=rows, relevance=rel, context=q.context, catalog=cat, stats=self.stats,
                priors=self.priors, now=now, out=x_all[offset : offset + n],
            )
            spans.append((offset, n, rows, len(known) - n, perf() - t0))
            offset += n
        t0 = perf()
        x = x_all[:offset]
        shed: dict[str, str] = {}
        if score is None:
            pctr_all = self.ctr.score(x)
            pcvr_all = self.cvr.score(x)
        else:
            pctr_all, pcvr_all, shed = score(x, [(q, off, n) for q, (off, n, *_) in zip(queries, spans, strict=True)])
        score_ms = (perf() - t0) * 1e3
        self.last_scored = (x, pctr_all, pcvr_all)
        extra = {"batch_queries": len(queries)} if len(queries) > 1 else {}
        out: list[AuctionOutcome] = []
        for q, (off, n, rows, n_unknown, gather_s) in zip(queries, spans, strict=True):
            t0 = perf()
            pctr = pctr_all[off : off + n]
            pcvr = pcvr_all[off : off + n]
            shop = cat.shop_row[rows]
            b = auto_bids(
                pcvr=pcvr,
                price=cat.price[rows],
                target_share=cat.target_share[shop],
                pacing=self.budget.pacing(shop, now),
                remaining_budget=self.budget.remaining(shop),
                min_bid=self.min_bid,
                max_bid=self.max_bid,
            )
            t1 = perf()
            res = run_auction(
                bids=b, pctr=pctr, reserve_price=self.reserve_price, slots=self.slots, rng=self._rng
            )
            w = res.winners if q.query_id not in shed else res.winners[:0]
            winners = tuple(
                map(
                    Winner,
                    range(len(w)),
                    cat.listing_ids[rows[w]].tolist(),
                    cat.shop_ids[shop[w]].tolist(),
                    pctr[w].tolist(),
                    pcvr[w].tolist(),
                    b[w].tolist(),
                    res.prices.tolist(),
                    map(tuple, x_all[off + w].tolist()),
                )
            )
            t2 = perf()
            out.append(
                AuctionOutcome(
                    query_id=q.query_id,
                    ts=q.ts,
                    user_id=q.user_id,
                    winners=winners,
                    model_versions=self.model_versions,
                    timings_ms={
                        "gather": gather_s * 1e3,
                        "score": score_ms,
                        "bid": (t1 - t0) * 1e3,
                        "auction": (t2 - t1) * 1e3,
                        "total": (t2 - t_start) * 1e3,
                    },
                    n_candidates=len(q.listing_ids),
                    n_unknown=n_unknown,
                    extra={**extra, "shed": shed[q.query_id]} if q.query_id in shed else dict(extra),
                )
            )
        return out
