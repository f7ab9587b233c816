"""Recent auction outcomes by query id: where a click finds the price it must be charged.

Every worker folds the ``auctions`` topic into this index. Entries older than ``window_s`` (the click
window) or beyond ``capacity`` are forgotten oldest first; a click for a forgotten or never-seen query
is dead-lettered as ``unknown_auction``.

>>> log = AuctionLog(window_s=600.0, capacity=10)
>>> log.add({"query_id": "q1", "ts": 100.0, "winners": [
...     {"slot": 0, "listing_id": 103, "shop_id": 7, "price": 0.25, "pctr": 0.1, "pcvr": 0.05}]})
True
>>> log.find("q1", 103).price
0.25
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["AuctionLog", "ShownAd"]


@dataclass(frozen=True, slots=True)
class ShownAd:
    """One winner of a recorded auction."""

    query_id: str
    slot: int
    listing_id: int
    shop_id: int
    price: float
    pctr: float
    pcvr: float
    ts: float


class AuctionLog:
    """``query_id -> {listing_id: ShownAd}`` for the recent past."""

    def __init__(self, *, window_s: float, capacity: int = 200_000) -> None:
        self.window_s = window_s
        self.capacity = capacity
        self._by_query: OrderedDict[str, tuple[float, dict[int, ShownAd]]] = OrderedDict()
        self._versions: dict[str, str] = {}
        self._clicked: set[tuple[str, int]] = set()
        self.duplicates = 0
        self.matured: list[tuple[str, float, list[float], list[int]]] = []
        """(ctr model version, ts, pCTRs, clicked flags) of outcomes past the click window, for the
        calibration monitor to take (``take_matured``)"""

    def __len__(self) -> int:
        return len(self._by_query)

    def add(self, outcome: dict[str, Any]) -> bool:
        """Record an outcome; False if this query id was already recorded (a redelivered outcome)."""
        qid = str(outcome["query_id"])
        if qid in self._by_query:
            self.duplicates += 1
            return False
        ts = float(outcome["ts"])
        ads = {
            int(w["listing_id"]): ShownAd(qid, int(w["slot"]), int(w["listing_id"]), int(w["shop_id"]),
                                          float(w["price"]), float(w["pctr"]), float(w["pcvr"]), ts)
            for w in outcome["winners"]
        }
        self._by_query[qid] = (ts, ads)
        self._versions[qid] = str(outcome.get("model_versions", {}).get("ctr", ""))
        self._evict(ts)
        return True

    def mark_clicked(self, query_id: str, listing_id: int) -> None:
        if query_id in self._by_query:
            self._clicked.add((query_id, listing_id))

    def take_matured(self) -> list[tuple[str, float, list[float], list[int]]]:
        out, self.matured = self.matured, []
        return out

    def _evict(self, now: float) -> None:
        while self._by_query:
            ts, _ = next(iter(self._by_query.values()))
            if len(self._by_query) > self.capacity or ts < now - self.window_s:
                qid, (ts, ads) = self._by_query.popitem(last=False)
                version = self._versions.pop(qid, "")
                clicked = [int((qid, lid) in self._clicked) for lid in ads]
                self._clicked.difference_update((qid, lid) for lid in ads)
                if len(self.matured) < 100_000:
                    self.matured.append((version, ts, [a.pctr for a in ads.values()], clicked))
            else:
                break

    def knows(self, query_id: str) -> bool:
        return query_id in self._by_query

    def find(self, query_id: str, listing_id: int) -> ShownAd | None:
        entry = self._by_query.get(query_id)
        return None if entry is None else entry[1].get(listing_id)
