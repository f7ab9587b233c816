"""How fresh a worker's copy of the aggregated features is: a click, until another worker gathers it.

A click is billed as a ledger line on ``billing`` (partition ``p``, offset ``o``; its ``ts`` is the click's event
time). The aggregator of that partition folds it into listing ``L``'s partial counters of source
``("billing", p)`` and publishes it in a :class:`~bidder.replica.aggregation.SnapshotBatch` to ``listing-stats``
whose offset for ``L`` is the last ledger line folded into ``L``. A replica that has read a snapshot of
``("billing", p)`` for ``L`` with ``offset >= o`` and taken it into its copy (``BidderState.flush``, once per
fetch round) gathers the click for ``L``: the click is *visible*, and its freshness is the wall clock then
minus ``ts``. Goal: p99 <= 1 s.

The replica reads both topics through one consumer, so they arrive in any order across topics: a ledger line
read after a snapshot that already covers its offset is visible at once (the meter keeps the highest
covering offset per ``(p, L)``). Lines that change no snapshot are left out (``excluded``): status
``duplicate`` (a resent click, never folded), a click id already seen (a line written twice), an unreadable
line. A snapshot older than a line (``offset < o``) covers nothing of it.

Feed a fetch round's records (:meth:`FreshnessMeter.record`), then call :meth:`FreshnessMeter.round_end` once
the state has flushed the round. Pure: no Kafka, the clock is the caller's.

>>> m = FreshnessMeter()
>>> line = {"click_id": "c1", "shop_id": 7, "listing_id": 103, "query_id": "q", "user_id": 1, "slot": 0,
...         "ts": 100.0, "day": 0, "price": 0.3, "amount": 0.3, "status": "charged", "spend_after": 0.3}
>>> m.record("billing", 2, 40, orjson.dumps(line))
>>> m.batch(SnapshotBatch("billing", 2, 3600.0, 41, 0, np.array([103]), np.array([40]), np.zeros((1, 7))))
>>> m.round_end(now=100.25), m.report()["p50_ms"], m.report()["pending"]
(1, 250.0, 0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from bidder.clicks.billing import LedgerEntry
from bidder.replica.aggregation import RecentKeys, SnapshotBatch
from bidder.replica.state import SNAPSHOT_TOPIC

__all__ = ["FreshnessMeter"]

BILLING_TOPIC = "billing"
_UNREADABLE = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError)
Key = tuple[int, int]
"""(billing partition, listing id)"""


class FreshnessMeter:
    """Click -> visible in this replica's copy, per ledger line (see the module's doc).

    ``max_click_ids`` bounds the memory of click ids seen (the oldest forgotten first).
    """

    def __init__(self, *, max_click_ids: int = 1_000_000) -> None:
        self._pending: dict[Key, list[tuple[int, float]]] = {}
        """(offset, click ts) of the lines not yet covered by a snapshot read"""
        self._covered: dict[Key, int] = {}
        """the highest snapshot offset read per (p, L)"""
        self._visible: list[float] = []
        """click ts of the lines covered this round (visible once the round is flushed)"""
        self._latencies_ms: list[float] = []
        self._seen = RecentKeys(max_click_ids)
        self.excluded = 0
        """ledger lines that change no snapshot: duplicates, repeated click ids, unreadable lines"""

    # -- feeding -----------------------------------------------------------------------------------
    def record(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        """One record the replica read; only ``billing`` lines and ``listing-stats`` snapshots matter."""
        if topic == BILLING_TOPIC:
            try:
                entry = LedgerEntry.from_dict(orjson.loads(value or b"null"))
            except _UNREADABLE:
                self.excluded += 1
                return
            self.ledger_line(partition, offset, entry)
        elif topic == SNAPSHOT_TOPIC and value is not None:
            try:
                batch = SnapshotBatch.decode(value)
            except _UNREADABLE:
                return
            self.batch(batch)

    def ledger_line(self, partition: int, offset: int, entry: LedgerEntry) -> None:
        """A ledger line at ``billing[partition]@offset``."""
        ts = float(entry.ts)
        if entry.status == "duplicate" or not math.isfinite(ts) or not self._seen.add(str(entry.click_id)):
            self.excluded += 1
            return
        key = (partition, int(entry.listing_id))
        if self._covered.get(key, -1) >= offset:
            self._visible.append(ts)
        else:
            self._pending.setdefault(key, []).append((offset, ts))

    def batch(self, batch: SnapshotBatch) -> None:
        """A ``listing-stats`` record; only those of a ``billing`` source cover ledger lines."""
        if batch.topic != BILLING_TOPIC:
            return
        for listing_id, offset in zip(batch.listing_ids.tolist(), batch.offsets.tolist(), strict=True):
            self._cover((batch.partition, listing_id), offset)

    def _cover(self, key: Key, offset: int) -> None:
        covered = max(self._covered.get(key, -1), offset)
        self._covered[key] = covered
        waiting = self._pending.get(key)
        if not waiting:
            return
        still = [(o, ts) for o, ts in waiting if o > covered]
        self._visible.extend(ts for o, ts in waiting if o <= covered)
        if still:
            self._pending[key] = still
        else:
            del self._pending[key]

    def round_end(self, *, now: float) -> int:
        """The round's records are in the copy (after ``BidderState.flush``): what they covered is visible
        ``now`` (epoch seconds). Returns how many clicks became visible."""
        n = len(self._visible)
        self._latencies_ms.extend((now - ts) * 1000.0 for ts in self._visible)
        self._visible.clear()
        return n

    def restart(self) -> None:
        """Forget what was measured and what is pending (e.g. the history read while catching up); keep
        what the snapshots covered and the click ids seen."""
        self._pending.clear()
        self._visible.clear()
        self._latencies_ms.clear()
        self.excluded = 0

    # -- reading -----------------------------------------------------------------------------------
    @property
    def latencies_ms(self) -> list[float]:
        """Freshness of each click seen visible, in the order they became visible."""
        return list(self._latencies_ms)

    @property
    def pending(self) -> int:
        """Clicks read but not (yet) covered by a snapshot taken into the copy."""
        return sum(map(len, self._pending.values())) + len(self._visible)

    def pending_for(self, listing_id: int) -> int:
        """Clicks on ``listing_id`` read but not covered yet (any billing partition)."""
        return sum(len(v) for (_, lid), v in self._pending.items() if lid == listing_id)

    def report(self) -> dict[str, Any]:
        """``count`` clicks seen visible, their freshness ``p50_ms``/``p99_ms``/``max_ms`` (None when none),
        ``pending`` (never seen visible so far), ``excluded`` (lines that change no snapshot)."""
        lat = np.asarray(self._latencies_ms, np.float64)
        stats: dict[str, float | None] = {"p50_ms": None, "p99_ms": None, "max_ms": None}
        if lat.size:
            stats = {"p50_ms": round(float(np.percentile(lat, 50)), 3),
                     "p99_ms": round(float(np.percentile(lat, 99)), 3), "max_ms": round(float(lat.max()), 3)}
        return {"count": int(lat.size), **stats, "pending": self.pending, "excluded": self.excluded}
