"""Rolling features aggregated once: one partial fold per source partition, snapshots, a worker's copy.

Each record of ``auctions``, ``billing`` and ``labels`` is folded once, by whoever owns its partition
(:class:`SourceFold`, run by ``streams/aggregator.py``), into partial counters keyed by listing id, and the
listings that changed are published in columnar :class:`SnapshotBatch` records to ``listing-stats`` (with
periodic checkpoints of every listing, so that the topic can be compacted: ``streams.aggregator.record_keys``).
A worker keeps the latest partial of every source per listing and their sum
(:class:`bidder.replica.feature_copy.FeatureCopy`), which is what ``gather`` reads. The decay of
``RollingStats`` is exact and order-free and ``merge`` adds state folded elsewhere, so the partials of
disjoint records combine into the fold of all of them.

What is counted, the same counters as ``BidderState.apply``:

* ``auctions``: each winner of an outcome is one impression at the outcome's ``ts``; a ``query_id`` already
  seen counts nothing (``AuctionLog.add``).
* ``billing``: a ledger line is a click at its ``ts`` and, when its amount is > 0, that amount of spend; a
  line with status ``duplicate`` or a click id already seen counts nothing (``Ledger.apply``).
* ``labels``: a ``label_update`` with ``converted`` is a conversion at its ``ts``; an ``order_id`` already
  seen counts nothing. Examples (``IMPRESSIONS_PREFIX``: on ``labels`` before ``impressions`` had a topic) are
  skipped unparsed.

A record that cannot be read (or has a non-finite ``ts``) is counted in ``counts`` and remembered by
nothing, never raised. Repeats are found per source partition: the topics are keyed so a repeat lands where
its original did (``auctions`` and ``labels`` by ``query_id``, ``billing`` by ``shop_id``). The memory of
keys seen is bounded like the structures it replaces (the oldest forgotten first).

**Exactly once across restarts.** A fold keeps per listing ``applied``, the offset of the last record folded
into it (a record at offset ``o`` counts for listing ``L`` only if ``o > applied[L]``), and ``mark``: every
offset below it is folded or skipped. Each :meth:`SourceFold.batch` holds every listing changed by the records
in ``[since, mark)`` and says so (in each part, when it is written in several records). The resume protocol:

1. The writer sends a batch to the topic and waits for its acknowledgements before the next one, so only the
   last batch written can be incomplete.
2. A restarted aggregator reads the topic back (any order; stale versions may be mixed in, the highest offset
   per listing wins): ``fold = SourceFold.restore(topic, partition, snapshots, ...)``.
3. It rebuilds its memory of repeats: ``fold.remember(offset, value)`` for the records of a window before
   ``fold.resume_from()`` at least as long as the repeats it must catch (redeliveries come within seconds).
4. It folds from ``fold.resume_from()`` on: ``fold.fold(offset, value)``.

``resume_from()`` is the ``since`` of the newest batch found: every batch before it was complete, so every
record below it is in the snapshots, and what the newest batch did hold is skipped by ``applied``. The
lowest ``applied`` is not enough: a listing first touched in the lost part of the last batch has no snapshot
at all, and its record may lie below every surviving listing's offset.
"""

from __future__ import annotations

import math
import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from bidder.clicks.billing import LedgerEntry
from bidder.events import Winner
from bidder.labels.attribution import IMPRESSIONS_PREFIX
from bidder.query.rolling import RollingStats

__all__ = ["AGGREGATED_TOPICS", "ListingSnapshot", "RecentKeys", "SnapshotBatch", "Source", "SourceFold"]

AGGREGATED_TOPICS: tuple[str, ...] = ("auctions", "billing", "labels")
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Source = tuple[str, int]
"""(topic, partition)"""
_UNREADABLE = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, OverflowError)


@dataclass(frozen=True, slots=True)
class ListingSnapshot:
    """One source partition's partial rolling counters of one listing, after the records up to ``offset``.

    >>> ListingSnapshot("auctions", 2, 103, 1.0, 0.0, 0.0, 0.0, 50.0, 50.0, -math.inf, 7, 3600.0, 8, 0).state()
    (1.0, 0.0, 0.0, 0.0, 50.0, -inf, 50.0)
    """

    topic: str
    partition: int
    listing_id: int
    impressions: float
    """this source's counters, decayed to ``at``"""
    clicks: float
    conversions: float
    spend: float
    at: float
    """epoch seconds: the newest event folded into them"""
    last_impression_at: float
    """``-inf``: never"""
    last_click_at: float
    offset: int
    """the last record of the source folded into this listing (``applied``)"""
    half_life_s: float
    mark: int
    """every offset below it was folded or skipped when this was taken"""
    since: int
    """the ``mark`` of the batch before: this batch holds every listing changed by offsets ``[since, mark)``"""

    @property
    def source(self) -> Source:
        return self.topic, self.partition

    def state(self) -> tuple[float, ...]:
        """The seven values of :meth:`RollingStats.state` (counters, last impression, last click, ``at``)."""
        return (self.impressions, self.clicks, self.conversions, self.spend, self.last_impression_at,
                self.last_click_at, self.at)

_MAGIC = b"LSB1"
_HEAD = struct.Struct("<4sI")


@dataclass(frozen=True, slots=True, eq=False)
class SnapshotBatch:
    """The partial counters of many listings of one source partition, columnar: what one ``listing-stats``
    record carries (a batch of :meth:`SourceFold.batch`, or a part of one).

    One record per listing made every impression a record of its own (~23 per outcome of 24 winners over a
    large catalog): its encode, send, fetch and decode cost more than the fold it replaced. A batch is one
    record of arrays (72 bytes per listing); a worker takes it in with a few numpy operations.

    >>> s = ListingSnapshot("auctions", 2, 103, 1.0, 0.0, 0.0, 0.0, 50.0, 50.0, -math.inf, 7, 3600.0, 8, 0)
    >>> b = SnapshotBatch.of([s])
    >>> SnapshotBatch.decode(b.encode()).snapshots() == [s]
    True
    """

    topic: str
    partition: int
    half_life_s: float
    mark: int
    """every offset below it was folded or skipped when this was taken"""
    since: int
    """the ``mark`` of the batch before: the batch (all its parts) holds every listing changed in ``[since, mark)``"""
    listing_ids: I64
    offsets: I64
    """per listing: the last record of the source folded into it"""
    state: F64
    """``(n, 7)``: the values of :meth:`ListingSnapshot.state` per listing"""

    @property
    def source(self) -> Source:
        return self.topic, self.partition

    def __len__(self) -> int:
        return len(self.listing_ids)

    @classmethod
    def of(cls, snapshots: list[ListingSnapshot]) -> SnapshotBatch:
        """The snapshots (of one source and one batch) as columns."""
        first = snapshots[0]
        return cls(first.topic, first.partition, first.half_life_s, first.mark, first.since,
                   np.fromiter((x.listing_id for x in snapshots), np.int64, len(snapshots)),
                   np.fromiter((x.offset for x in snapshots), np.int64, len(snapshots)),
                   np.asarray([x.state() for x in snapshots], np.float64).reshape(-1, 7))

    def snapshots(self) -> list[ListingSnapshot]:
        """One :class:`ListingSnapshot` per listing (a restore's form; the copy takes the columns)."""
        return [ListingSnapshot(self.topic, self.partition, lid, imp, clk, conv, spend, at, last_imp, last_clk,
                                offset, self.half_life_s, self.mark, self.since)
                for lid, offset, (imp, clk, conv, spend, last_imp, last_clk, at)
                in zip(self.listing_ids.tolist(), self.offsets.tolist(), self.state.tolist(), strict=True)]

    def parts(self, max_rows: int) -> list[SnapshotBatch]:
        """This batch cut into records of at most ``max_rows`` listings (every part says the batch's range)."""
        return [SnapshotBatch(self.topic, self.partition, self.half_life_s, self.mark, self.since,
                              self.listing_ids[i : i + max_rows], self.offsets[i : i + max_rows],
                              self.state[i : i + max_rows]) for i in range(0, max(len(self), 1), max_rows)]

    def take(self, mask: npt.NDArray[np.bool_]) -> SnapshotBatch:
        """The listings ``mask`` selects, as a batch of the same range."""
        return SnapshotBatch(self.topic, self.partition, self.half_life_s, self.mark, self.since,
                             self.listing_ids[mask], self.offsets[mask], self.state[mask])

    def encode(self) -> bytes:
        head = orjson.dumps({"topic": self.topic, "partition": self.partition, "half_life_s": self.half_life_s,
                             "mark": self.mark, "since": self.since, "n": len(self)})
        return b"".join((_HEAD.pack(_MAGIC, len(head)), head, self.listing_ids.astype("<i8").tobytes(),
                         self.offsets.astype("<i8").tobytes(), self.state.astype("<f8").tobytes()))

    @classmethod
    def decode(cls, value: bytes) -> SnapshotBatch:
        """The batch ``value`` encodes; ValueError (or KeyError, TypeError) for anything else."""
        if len(value) < _HEAD.size:
            raise ValueError("too short for a snapshot batch")
        magic, head_len = _HEAD.unpack_from(value)
        if magic != _MAGIC:
            raise ValueError(f"not a snapshot batch of version 1: {value[:8]!r}")
        d = orjson.loads(value[_HEAD.size : _HEAD.size + head_len])
        n = int(d["n"])
        body = memoryview(value)[_HEAD.size + head_len :]
        if n < 0 or len(body) != 72 * n:
            raise ValueError(f"a batch of {n} listings has {len(body)} bytes of columns, not {72 * n}")
        ids = np.frombuffer(body[: 8 * n], "<i8").astype(np.int64)
        offsets = np.frombuffer(body[8 * n : 16 * n], "<i8").astype(np.int64)
        state = np.frombuffer(body[16 * n :], "<f8").astype(np.float64).reshape(n, 7)
        if not np.isfinite(state[:, [0, 1, 2, 3, 6]]).all():
            raise ValueError("a snapshot's counters and time are finite")
        return cls(str(d["topic"]), int(d["partition"]), float(d["half_life_s"]), int(d["mark"]), int(d["since"]),
                   ids, offsets, state)


def _finite(x: Any) -> float:
    t = float(x)
    if not math.isfinite(t):
        raise ValueError(f"not a finite time: {x!r}")
    return t


class RecentKeys:
    """The last ``capacity`` keys seen, oldest forgotten first (a repeat does not refresh a key): how the folds
    here, ``BidderState`` (order ids) and the freshness meter (click ids) recognise a repeat in bounded memory.

    >>> keys = RecentKeys(2)
    >>> [keys.add("a"), keys.add("a"), keys.add("b"), keys.add("c"), "a" in keys, "c" in keys]
    [True, False, True, True, False, True]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> bool:
        """Remember ``key``; False if it was remembered already."""
        if key in self._keys:
            return False
        self._keys[key] = None
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True


@dataclass(frozen=True, slots=True)
class _Count:
    """What one new (not repeated) record adds: ``kind`` to each listing (repeats count twice) at ``ts``."""

    kind: Literal["impressions", "clicks", "conversions"]
    listing_ids: list[int]
    ts: float
    spend: float = 0.0


class SourceFold:
    """The partial rolling counters of one source partition, keyed by listing id (no catalog).

    >>> fold = SourceFold("billing", 1, half_life_s=3600.0)
    >>> line = {"click_id": "c1", "shop_id": 7, "listing_id": 103, "query_id": "q", "user_id": 1, "slot": 0,
    ...         "ts": 100.0, "day": 0, "price": 0.3, "amount": 0.3, "status": "charged", "spend_after": 0.3}
    >>> fold.fold(0, orjson.dumps(line)); fold.fold(1, orjson.dumps(line))  # the second: a resent click id
    >>> [(s.listing_id, s.clicks, s.spend, s.offset) for s in fold.snapshots()]
    [(103, 1.0, 0.3, 0)]
    """

    def __init__(self, topic: str, partition: int, *, half_life_s: float, max_queries: int = 200_000,
                 max_clicks: int = 2_000_000, max_orders: int = 1_000_000) -> None:
        if topic not in AGGREGATED_TOPICS:
            raise ValueError(f"{topic!r} carries no rolling counters")
        self.topic = topic
        self.partition = partition
        self.half_life_s = half_life_s
        self.counts: Counter[str] = Counter()
        self._stats = RollingStats(half_life_s=half_life_s)
        self._row: dict[int, int] = {}
        self._listing_ids: list[int] = []
        self._applied: list[int] = []
        """by local row: the offset of the last record folded into that listing"""
        self._dirty: set[int] = set()
        self._mark = 0
        self._since = 0
        self._seen = RecentKeys({"auctions": max_queries, "billing": max_clicks, "labels": max_orders}[topic])
        """query ids, click ids or order ids, by topic"""

    @property
    def mark(self) -> int:
        """Every offset below it is folded or skipped."""
        return self._mark

    def resume_from(self) -> int:
        """The offset to fold from next (after :meth:`restore`: where the resume protocol starts)."""
        return self._mark

    # -- folding -----------------------------------------------------------------------------------
    def fold(self, offset: int, value: bytes | None) -> None:
        """Fold the record at ``offset`` (offsets increase; one below :attr:`mark` was folded already)."""
        if offset < self._mark:
            self.counts["below_mark"] += 1
            return
        self._mark = offset + 1
        count = self._read(value)
        if count is not None:
            self._add(offset, count)

    def remember(self, offset: int, value: bytes | None) -> None:
        """Only remember the record's key for repeats (a record folded before the resume point)."""
        del offset  # the window is the caller's: any records before resume_from()
        self._read(value)

    def _read(self, value: bytes | None) -> _Count | None:
        """The count of a new record (its key now remembered), None for a repeat or nothing to count."""
        try:
            if self.topic == "auctions":
                return self._outcome(orjson.loads(value or b"null"))
            if self.topic == "billing":
                return self._ledger_line(LedgerEntry.from_dict(orjson.loads(value or b"null")))
            if value is not None and not value.startswith(IMPRESSIONS_PREFIX):
                return self._label(orjson.loads(value))
        except _UNREADABLE:
            self.counts[f"{self.topic}_unreadable"] += 1
        return None

    def _new(self, key: str) -> bool:
        if self._seen.add(key):
            return True
        self.counts[f"{self.topic}_repeated"] += 1
        return False

    def _outcome(self, outcome: dict[str, Any]) -> _Count | None:
        # every winner read as the auction log reads it: an outcome it refuses counts nothing here either
        ids = [Winner.from_wire(w).listing_id for w in outcome["winners"]]
        count = _Count("impressions", ids, _finite(outcome["ts"]))
        return count if self._new(str(outcome["query_id"])) else None

    def _ledger_line(self, entry: LedgerEntry) -> _Count | None:
        count = _Count("clicks", [int(entry.listing_id)], _finite(entry.ts), max(0.0, float(entry.amount)))
        if entry.status == "duplicate":  # Ledger.apply: never a charge, and its click id is not remembered
            self.counts[f"{self.topic}_repeated"] += 1
            return None
        return count if self._new(str(entry.click_id)) else None

    def _label(self, label: dict[str, Any]) -> _Count | None:
        if label.get("type") != "label_update" or not label.get("converted"):
            return None
        count = _Count("conversions", [int(label["listing_id"])], _finite(label["ts"]))
        return count if self._new(str(label["order_id"])) else None

    def _add(self, offset: int, count: _Count) -> None:
        rows = self._unapplied_rows(offset, count.listing_ids)
        if not rows:
            return
        at = np.asarray(rows, np.int64)
        self._stats.record(at, kind=count.kind, now=count.ts)
        if count.spend > 0:
            self._stats.record(at, kind="spend", now=count.ts, amount=count.spend)

    def _unapplied_rows(self, offset: int, listing_ids: list[int]) -> list[int]:
        """Rows of the listings the record at ``offset`` is not folded into yet, now marked applied and dirty
        (a listing named twice is counted twice)."""
        rows = [row for row in map(self._row_of, listing_ids) if offset > self._applied[row]]
        for row in rows:
            self._applied[row] = offset
        self._dirty.update(rows)
        return rows

    def _row_of(self, listing_id: int) -> int:
        row = self._row.get(listing_id)
        if row is None:
            row = self._row[listing_id] = len(self._listing_ids)
            self._listing_ids.append(listing_id)
            self._applied.append(-1)
        return row

    # -- snapshots ---------------------------------------------------------------------------------
    def batch(self, *, every_listing: bool = False) -> SnapshotBatch:
        """The listings changed since the last batch (all of them with ``every_listing``: a checkpoint), as
        they are now."""
        picked = range(len(self._listing_ids)) if every_listing else sorted(self._dirty)
        self._dirty.clear()
        since, self._since = self._since, self._mark
        rows = np.fromiter(picked, np.int64, len(picked))
        ids = np.fromiter((self._listing_ids[r] for r in picked), np.int64, len(picked))
        offsets = np.fromiter((self._applied[r] for r in picked), np.int64, len(picked))
        return SnapshotBatch(self.topic, self.partition, self.half_life_s, self._mark, since, ids, offsets,
                             np.ascontiguousarray(self._stats.state(rows).T))

    def snapshots(self) -> list[ListingSnapshot]:
        """The listings changed since the last call, as they are now, one object each."""
        return self.batch().snapshots()

    @classmethod
    def restore(cls, topic: str, partition: int, snapshots: Iterable[ListingSnapshot], *, half_life_s: float,
                **bounds: int) -> SourceFold:
        """A fold rebuilt from its snapshots as read back from the compacted topic (other sources' are
        ignored, the highest offset per listing wins); fold on from :meth:`resume_from`.

        ``bounds``: ``max_queries``, ``max_clicks``, ``max_orders`` as for the constructor. Snapshots folded
        with another half-life cannot be restored (ValueError): refold from the start."""
        fold = cls(topic, partition, half_life_s=half_life_s, **bounds)
        own = [s for s in snapshots if s.source == (topic, partition)]
        if any(s.half_life_s != half_life_s for s in own):
            raise ValueError("snapshots of another half-life: refold the source from its start")
        latest = _latest_by_listing(own)
        rows = [fold._row_of(s.listing_id) for s in latest]
        for row, s in zip(rows, latest, strict=True):
            fold._applied[row] = s.offset
        fold._stats.set_state(np.asarray(rows, np.int64), np.asarray([s.state() for s in latest]).reshape(-1, 7).T)
        if own:
            newest = max(s.mark for s in own)
            fold._mark = fold._since = min(s.since for s in own if s.mark == newest)
        return fold


def _latest_by_listing(snapshots: Iterable[ListingSnapshot]) -> list[ListingSnapshot]:
    latest: dict[tuple[str, int, int], ListingSnapshot] = {}
    for s in snapshots:
        held = latest.get((s.topic, s.partition, s.listing_id))
        if held is None or s.offset > held.offset:
            latest[s.topic, s.partition, s.listing_id] = s
    return list(latest.values())

