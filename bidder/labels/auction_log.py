"""Recent auction outcomes by query id: what the calibration monitor matures into labels.

A worker keeps the outcomes it wrote itself (``BidderState.own_outcome``; the reference fold,
``BidderState(features="fold")``, folds every partition of ``auctions``); the click and conversion updates that
mark them are on the worker's own partitions of ``labels`` (keyed by query, like the queries it answered).
Clicks are no longer priced from here: a click carries its slot, price and auction time under a signed token
(``bidder/clicks/click_token.py``). Entries older than ``retain_s`` (by default ``window_s``) or beyond
``capacity`` are forgotten oldest first. Age is event time: the newest outcome folded.

The index also matures labels for the calibration monitor (:class:`Matured`, taken with
:meth:`AuctionLog.take_matured`), in event time (the ``ts`` of the outcomes folded):

* **CTR**: an outcome leaving the index (past ``retain_s`` >= the click window) has final click labels:
  every winner, ``p`` = the pCTR served, ``y`` = clicked.
* **CVR**: a clicked winner's conversion label is final once no attributable purchase can still come:
  ``conversion_window_s`` (the attribution window) after the click window closed. ``p`` = the pCVR
  served, ``y`` = converted (:meth:`mark_converted`, from the ``labels`` topic).

Each matured batch names the model version that priced it and, when a shadow model scored the same
winners (``outcome["shadow"]``, :mod:`bidder.query.shadow`), the shadow's version and predictions, so both are
judged on the same impressions.

>>> log = AuctionLog(window_s=600.0, capacity=10)
>>> log.add({"query_id": "q1", "ts": 100.0, "winners": [
...     {"slot": 0, "listing_id": 103, "shop_id": 7, "price": 0.25, "pctr": 0.1, "pcvr": 0.05}]})
True
>>> log.find("q1", 103).price, log.auction_ts("q1")
(0.25, 100.0)
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from bidder.events import Winner

__all__ = ["AuctionLog", "Matured"]

_NAN = math.nan


@dataclass(frozen=True, slots=True)
class _Auction:
    """One recorded outcome: its winners as they are on the topic (:meth:`Winner.from_wire`, no features)
    and, when a shadow model scored them, the shadow's predictions slot by slot."""

    ts: float
    winners: dict[int, Winner]
    """by listing id"""
    shadow: dict[int, tuple[float, float]]
    """listing id -> the shadow's (pCTR, pCVR); empty when no shadow scored this auction"""

    def shadow_of(self, ads: list[Winner], target: str) -> tuple[float, ...]:
        i = 0 if target == "ctr" else 1
        return tuple(self.shadow.get(ad.listing_id, (_NAN, _NAN))[i] for ad in ads)


@dataclass(frozen=True, slots=True)
class Matured:
    """Final labels of one outcome's winners for one target, with what each model predicted."""

    target: str
    """``ctr`` or ``cvr``"""
    version: str
    """the serving model that priced the auction"""
    ts: float
    """event time of the auction"""
    p: tuple[float, ...]
    y: tuple[int, ...]
    shadow_version: str = ""
    shadow_p: tuple[float, ...] = ()


@dataclass(slots=True)
class _Pending:
    """Clicked winners waiting for their conversion labels to become final."""

    due: float
    query_id: str
    ts: float
    version: str
    shadow_version: str
    ads: list[Winner]
    shadow_p: tuple[float, ...]


class AuctionLog:
    """``query_id -> {listing_id: Winner}`` for the recent past."""

    def __init__(self, *, window_s: float, conversion_window_s: float = 600.0, retain_s: float | None = None,
                 capacity: int = 200_000, max_matured: int = 100_000) -> None:
        self.window_s = window_s
        self.retain_s = max(window_s, retain_s or window_s)
        self.conversion_window_s = conversion_window_s
        self.capacity = capacity
        self.max_matured = max_matured
        self._by_query: OrderedDict[str, _Auction] = OrderedDict()
        self._versions: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        self._clicked: set[tuple[str, int]] = set()
        self._converted: set[tuple[str, int]] = set()
        self._awaiting: set[tuple[str, int]] = set()
        """clicked winners past the click window whose conversion label is not final yet"""
        self._pending: deque[_Pending] = deque()
        self.duplicates = 0
        self.matured_dropped = 0
        """matured batches not kept because nobody took them (``max_matured``)"""
        self.matured: list[Matured] = []

    def __len__(self) -> int:
        return len(self._by_query)

    def add(self, outcome: dict[str, Any]) -> bool:
        """Record an outcome; False if this query id was already recorded (a redelivered outcome)."""
        qid = str(outcome["query_id"])
        if qid in self._by_query:
            self.duplicates += 1
            return False
        ts = float(outcome["ts"])
        shadow = outcome.get("shadow") or {}
        ads = {ad.listing_id: ad for ad in map(Winner.from_wire, outcome["winners"])}
        s_ctr, s_cvr = list(shadow.get("pctr", ())), list(shadow.get("pcvr", ()))
        scored = len(s_ctr) == len(ads) == len(s_cvr)  # the shadow's predictions are in winner order
        by_listing = {lid: (float(c), float(v)) for lid, c, v in zip(ads, s_ctr, s_cvr, strict=True)} if scored else {}
        self._by_query[qid] = _Auction(ts, ads, by_listing)
        self._versions[qid] = ({str(k): str(v) for k, v in (outcome.get("model_versions") or {}).items()},
                               {str(k): str(v) for k, v in (shadow.get("versions") or {}).items()})
        self._evict(ts)
        return True

    def mark_clicked(self, query_id: str, listing_id: int) -> None:
        if query_id in self._by_query:
            self._clicked.add((query_id, listing_id))

    def clicked(self, query_id: str, listing_id: int) -> bool:
        """Whether a click on this winner was marked (and its CTR label has not matured yet)."""
        return (query_id, listing_id) in self._clicked

    def mark_converted(self, query_id: str, listing_id: int) -> None:
        """A purchase was attributed to a click on this winner (kept until its CVR label matures)."""
        # the conversion may be folded before the click's update (two records): the auction is enough
        if query_id in self._by_query or (query_id, listing_id) in self._awaiting:
            self._converted.add((query_id, listing_id))

    def take_matured(self) -> list[Matured]:
        out, self.matured = self.matured, []
        return out

    def _emit(self, m: Matured) -> None:
        if len(self.matured) < self.max_matured:
            self.matured.append(m)
        else:
            self.matured_dropped += 1

    def _evict(self, now: float) -> None:
        while self._by_query:
            oldest = next(iter(self._by_query.values()))
            if not (len(self._by_query) > self.capacity or oldest.ts < now - self.retain_s):
                break
            qid, auction = self._by_query.popitem(last=False)
            versions, shadow = self._versions.pop(qid, ({}, {}))
            shown = list(auction.winners.values())
            flags = tuple(int((qid, ad.listing_id) in self._clicked) for ad in shown)
            clicked = [ad for ad, f in zip(shown, flags, strict=True) if f]
            self._clicked.difference_update((qid, ad.listing_id) for ad in shown)
            self._emit(Matured("ctr", versions.get("ctr", ""), auction.ts, tuple(a.pctr for a in shown), flags,
                               shadow.get("ctr", ""), auction.shadow_of(shown, "ctr") if shadow else ()))
            self._converted.difference_update((qid, ad.listing_id) for ad, f in zip(shown, flags, strict=True)
                                              if not f)
            if clicked:
                self._awaiting.update((qid, ad.listing_id) for ad in clicked)
                self._pending.append(_Pending(auction.ts + self.retain_s + self.conversion_window_s, qid,
                                              auction.ts, versions.get("cvr", ""), shadow.get("cvr", ""), clicked,
                                              auction.shadow_of(clicked, "cvr")))
        while self._pending and self._pending[0].due <= now:
            p = self._pending.popleft()
            y = tuple(int((p.query_id, ad.listing_id) in self._converted) for ad in p.ads)
            self._converted.difference_update((p.query_id, ad.listing_id) for ad in p.ads)
            self._awaiting.difference_update((p.query_id, ad.listing_id) for ad in p.ads)
            self._emit(Matured("cvr", p.version, p.ts, tuple(a.pcvr for a in p.ads), y, p.shadow_version,
                               p.shadow_p if p.shadow_version else ()))

    def knows(self, query_id: str) -> bool:
        return query_id in self._by_query

    def find(self, query_id: str, listing_id: int) -> Winner | None:
        """The winner ``listing_id`` of the recorded auction ``query_id`` (None: no such auction or winner)."""
        entry = self._by_query.get(query_id)
        return None if entry is None else entry.winners.get(listing_id)

    def auction_ts(self, query_id: str) -> float:
        """Event time of the recorded auction ``query_id`` (KeyError if it is not recorded)."""
        return self._by_query[query_id].ts
