"""Every shop's spend today, for the auto-bidder of every worker, without reading every ledger line.

The bill agent of a ``billing`` partition holds that partition's exact ledger (it decides the clicks of its
shops). It publishes the partition's spend per shop today to ``shop-spend`` (compacted, keyed by the partition)
at most once per ``spend_publish_ms``, and only when the ledger changed: one :class:`SpendRecord` holding
**all** the partition's shops with spend that day, so the latest record of a partition is complete and the
topic compacts to one record per partition. Every worker keeps :class:`PublishedSpend`, the fold of those
records; the auto-bidder paces with :class:`ShopSpend`, the larger of the published spend and the worker's own
ledger (its own shops are exact at once, the others lag by the publish interval).

Spend within a day only grows, so the fold keeps, per (shop, day), the largest value any record gave: records
may arrive in any order, twice, or from two owners of a partition during a rebalance (both read the same
ledger) and the fold is the same. Budgets are never enforced from here: the bill agent clamps every charge
to the budget with its own exact ledger; a published spend that lags lets the auto-bidder bid a little longer
for a shop that just ran out, and that shop's clicks are then ``unbilled``.

>>> pub = PublishedSpend()
>>> rec = SpendRecord(partition=2, day=20_000, shop_ids=(7, 9), spend=(1.5, 0.25), at=1.0)
>>> pub.apply(SpendRecord.decode(rec.encode())), pub.spend(7, 20_000), pub.spend(8, 20_000)
(True, 1.5, 0.0)
>>> pub.apply(SpendRecord(partition=2, day=20_000, shop_ids=(7,), spend=(1.0,), at=0.5))  # older: changes nothing
False
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import orjson

from bidder.clicks.billing import Ledger

__all__ = ["SPEND_TOPIC", "PublishedSpend", "ShopSpend", "SpendRecord", "SpendSource"]

SPEND_TOPIC = "shop-spend"


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """One ``billing`` partition's spend per shop on one UTC day, as its owner's ledger had it at ``at``."""

    partition: int
    day: int
    shop_ids: tuple[int, ...]
    spend: tuple[float, ...]
    at: float

    def key(self) -> bytes:
        return str(self.partition).encode()

    def encode(self) -> bytes:
        return orjson.dumps({"v": 1, "type": "shop_spend", "partition": self.partition, "day": self.day,
                             "shop_ids": self.shop_ids, "spend": self.spend, "at": self.at})

    @classmethod
    def decode(cls, value: bytes) -> SpendRecord:
        """The record, or ``ValueError`` for anything else (a producer could write anything there)."""
        d = orjson.loads(value)
        if not isinstance(d, dict) or d.get("type") != "shop_spend":
            raise ValueError("not a shop_spend record")
        shops = tuple(int(s) for s in d["shop_ids"])
        spend = tuple(float(x) for x in d["spend"])
        if len(shops) != len(spend) or not all(math.isfinite(x) and x >= 0 for x in spend):
            raise ValueError("shop_ids and spend differ in length, or a spend is negative or not finite")
        return cls(partition=int(d["partition"]), day=int(d["day"]), shop_ids=shops, spend=spend, at=float(d["at"]))

    @classmethod
    def of_ledger(cls, ledger: Ledger, *, partition: int, day: int, shop_ids: Iterable[int], at: float) -> SpendRecord:
        """The record of ``shop_ids`` (a partition's shops) from ``ledger``: those with spend on ``day``."""
        pairs = sorted((s, ledger.spend(s, day)) for s in set(shop_ids))
        kept = [(s, x) for s, x in pairs if x > 0.0]
        return cls(partition=partition, day=day, shop_ids=tuple(s for s, _ in kept),
                   spend=tuple(x for _, x in kept), at=at)


class SpendSource(Protocol):
    """What :class:`bidder.query.budget.LedgerBudget` reads: spend per (shop, day), and a version that changes
    whenever a spend does (it caches on it)."""

    @property
    def version(self) -> int: ...

    def spend(self, shop_id: int, day: int) -> float: ...


class PublishedSpend:
    """The fold of ``shop-spend`` records: per (shop, day) the largest spend published (see the module)."""

    def __init__(self, *, keep_days: int = 2) -> None:
        self.keep_days = keep_days
        self._spend: dict[tuple[int, int], float] = {}
        self._last_day = -1
        self.version = 0

    def apply(self, record: SpendRecord) -> bool:
        """Fold a record in; whether any spend grew."""
        if record.day <= self._last_day - self.keep_days:
            return False
        grew = False
        for shop, x in zip(record.shop_ids, record.spend, strict=True):
            key = (shop, record.day)
            if x > self._spend.get(key, 0.0):
                self._spend[key] = x
                grew = True
        if record.day > self._last_day:
            self._last_day = record.day
            self._spend = {k: v for k, v in self._spend.items() if k[1] > record.day - self.keep_days}
        if grew:
            self.version += 1
        return grew

    def spend(self, shop_id: int, day: int) -> float:
        return self._spend.get((shop_id, day), 0.0)

    def __len__(self) -> int:
        return len(self._spend)


class ShopSpend:
    """The auto-bidder's spend: the larger of the worker's own ledger and what the owners published."""

    def __init__(self, ledger: Ledger, published: PublishedSpend) -> None:
        self.ledger = ledger
        self.published = published

    @property
    def version(self) -> int:
        return self.ledger.version + self.published.version

    def spend(self, shop_id: int, day: int) -> float:
        return max(self.ledger.spend(shop_id, day), self.published.spend(shop_id, day))
