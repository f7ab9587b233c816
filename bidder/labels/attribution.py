"""Online labels: impressions become training examples; clicks and purchases correct them.

Every auction outcome yields one ``impressions`` record holding its impressions as provisional negatives
(``clicked=0, converted=0, label_version=0``) with the features exactly as served (and, while a
shadow model runs, its predictions: ``shadow_versions``, per example ``shadow_pctr``/``shadow_pcvr``). A charged or
unbilled click emits an update ``clicked=1`` (version 1); a purchase attributed to the buyer's last
click on that listing within the attribution window emits ``converted=1`` (version 2); the updates go to
``labels``, a topic of their own, so the readers of updates alone (every worker's replica, the aggregators)
never fetch the examples. Consumers of the training data read both topics and keep, per ``impression_id``,
the highest version; a label has matured once its impression is older than the attribution window. Both
topics are keyed by ``query_id``.

>>> idx = ClickIndex(window_s=600.0)
>>> idx.add(user_id=5, listing_id=103, ts=10.0, click_id="c1", query_id="q1", slot=2)
>>> idx.attribute(user_id=5, listing_id=103, ts=100.0).click_id
'c1'
>>> idx.attribute(user_id=5, listing_id=103, ts=700.0) is None
True
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["IMPRESSIONS_PREFIX", "ClickIndex", "ClickRef", "impression_id", "label_update", "provisional_labels"]


def impression_id(query_id: str, slot: int) -> str:
    return f"{query_id}:{slot}"


@dataclass(frozen=True, slots=True)
class ClickRef:
    """A click a purchase can be attributed to."""

    click_id: str
    query_id: str
    slot: int
    listing_id: int
    ts: float


class ClickIndex:
    """Last clicks per (buyer, listing), kept for the attribution window (bounded by ``capacity``)."""

    def __init__(self, *, window_s: float, capacity: int = 1_000_000) -> None:
        self.window_s = window_s
        self.capacity = capacity
        self._clicks: OrderedDict[tuple[int, int], list[ClickRef]] = OrderedDict()

    def add(self, *, user_id: int, listing_id: int, ts: float, click_id: str, query_id: str, slot: int) -> None:
        key = (user_id, listing_id)
        refs = self._clicks.pop(key, [])
        refs.append(ClickRef(click_id, query_id, slot, listing_id, ts))
        refs.sort(key=lambda r: r.ts)
        self._clicks[key] = refs[-8:]
        while len(self._clicks) > self.capacity:
            self._clicks.popitem(last=False)

    def attribute(self, *, user_id: int, listing_id: int, ts: float) -> ClickRef | None:
        """The buyer's last click on the listing at or before ``ts`` and within the window."""
        best = None
        for ref in self._clicks.get((user_id, listing_id), ()):
            if ref.ts <= ts and ts - ref.ts <= self.window_s:
                best = ref
        return best


IMPRESSIONS_PREFIX = b'{"v":1,"type":"impressions"'
"""how ``orjson.dumps(provisional_labels(...))`` starts (key order is insertion order). Such records are on
``impressions``; ``labels`` held them too before the two were split, so readers of updates still skip a record
that starts this way unparsed (a ``labels`` topic written by an older release)."""


def provisional_labels(outcome: dict[str, Any]) -> dict[str, Any]:
    """The ``impressions`` record for one auction outcome: every impression a provisional negative."""
    qid = str(outcome["query_id"])
    shadow = outcome.get("shadow") or {}
    record = {
        "v": 1,
        "type": "impressions",
        "query_id": qid,
        "ts": outcome["ts"],
        "user_id": outcome["user_id"],
        "model_versions": outcome.get("model_versions", {}),
        "label_version": 0,
        "examples": [
            {
                "impression_id": impression_id(qid, int(w["slot"])),
                "slot": w["slot"],
                "listing_id": w["listing_id"],
                "shop_id": w["shop_id"],
                "pctr": w["pctr"],
                "pcvr": w["pcvr"],
                "bid": w["bid"],
                "price": w["price"],
                "features": w.get("features", []),
                "clicked": 0,
                "converted": 0,
            }
            for w in outcome["winners"]
        ],
    }
    if shadow:  # the shadow model's predictions for the same impressions (bidder/query/shadow.py)
        record["shadow_versions"] = shadow["versions"]
        for ex, sc, sv in zip(record["examples"], shadow["pctr"], shadow["pcvr"], strict=True):
            ex["shadow_pctr"], ex["shadow_pcvr"] = sc, sv
    return record


def label_update(
    *, query_id: str, slot: int, listing_id: int, ts: float, click_id: str, order_id: str | None = None
) -> dict[str, Any]:
    """A correction: the impression was clicked (and, with ``order_id``, converted)."""
    return {
        "v": 1,
        "type": "label_update",
        "impression_id": impression_id(query_id, slot),
        "query_id": query_id,
        "slot": slot,
        "listing_id": listing_id,
        "ts": ts,
        "click_id": click_id,
        "order_id": order_id,
        "clicked": 1,
        "converted": int(order_id is not None),
        "label_version": 2 if order_id is not None else 1,
    }
