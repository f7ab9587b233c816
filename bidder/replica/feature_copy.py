"""A worker's copy of the aggregated rolling features: every source partition's latest snapshot per listing,
and their exact combination as the ``RollingStats`` that ``gather`` reads. The snapshots come from
:class:`bidder.replica.aggregation.SourceFold` (its module docstring has the whole protocol)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from bidder.query.catalog import Catalog, RowIndex
from bidder.query.rolling import NEVER, RollingStats
from bidder.replica.aggregation import ListingSnapshot, SnapshotBatch, Source

__all__ = ["FeatureCopy"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


_FILL = np.array([0.0, 0.0, 0.0, 0.0, NEVER, NEVER, NEVER])
"""a row no snapshot of a source reached: no counters, never seen"""


class _Partials:
    """Every source's latest snapshot per catalog row, in one table: ``state[source, row]`` (the 7 numbers of
    ``RollingStats.state``) and ``offsets[source, row]`` (-1: none), so combining a round's rows is a few numpy
    operations over all sources at once, not a few per source (per-source tables were 39 % of a replica's CPU at
    100 q/s in a profile, most of it per-source overhead of small arrays)."""

    def __init__(self) -> None:
        self.index: dict[Source, int] = {}
        self.offsets: I64 = np.full((0, 1024), -1, np.int64)
        self.state: F64 = np.empty((0, 1024, 7))

    def __len__(self) -> int:
        return len(self.index)

    def source(self, source: Source) -> int:
        """The table row of ``source`` (added on first use)."""
        at = self.index.get(source)
        if at is None:
            at = self.index[source] = len(self.index)
            capacity = self.offsets.shape[1]
            self.offsets = np.vstack([self.offsets, np.full((1, capacity), -1, np.int64)])
            self.state = np.concatenate([self.state, np.tile(_FILL, (1, capacity, 1))])
        return at

    def _ensure(self, max_row: int) -> None:
        capacity = self.offsets.shape[1]
        if max_row < capacity:
            return
        grown = max(2 * capacity, max_row + 1)
        offsets = np.full((len(self.index), grown), -1, np.int64)
        offsets[:, :capacity] = self.offsets
        state = np.tile(_FILL, (len(self.index), grown, 1))
        state[:, :capacity] = self.state
        self.offsets, self.state = offsets, state

    def store(self, source: Source, rows: I64, offsets: I64, state: F64) -> I64:
        """Keep each listing's ``state`` (``(n, 7)``) newer by offset than the one held for its row and source (the
        newest of a row's); the rows changed."""
        if len(rows) == 0:
            return rows
        at = self.source(source)
        self._ensure(int(rows.max()))
        order = np.lexsort((offsets, rows))
        newest_of_row = np.r_[rows[order][1:] != rows[order][:-1], True]
        pick = order[newest_of_row]
        pick = pick[offsets[pick] > self.offsets[at, rows[pick]]]
        changed: I64 = rows[pick]
        self.offsets[at, changed] = offsets[pick]
        self.state[at, changed] = state[pick]
        return changed

    def held(self, rows: I64) -> tuple[npt.NDArray[np.bool_], F64]:
        """``(sources, n)`` whether each source holds each of ``rows``, and their ``(sources, n, 7)`` states."""
        self._ensure(int(rows.max()) if len(rows) else 0)
        return self.offsets[:, rows] >= 0, self.state[:, rows]


class FeatureCopy:
    """What a worker keeps of the snapshot topic: per source partition, its latest partial per catalog row,
    and in :attr:`stats` (a ``RollingStats`` over catalog rows, what ``gather`` reads) their combination.

    Every row of :attr:`stats` is the ``merge`` of each source's latest partial for it, recomputed for the
    rows an :meth:`apply` touched. A snapshot no newer (by offset) than the one held for its source and
    listing changes nothing. A snapshot of a listing the catalog does not know yet waits (the newest per
    source and listing) until an ``apply`` after the catalog learned it, or :meth:`retry_waiting`.

    Memory: one partial table per source partition, 64 bytes per catalog row each, besides :attr:`stats`
    (1M listings and 24 source partitions: 1.5 GB).

    >>> cat = Catalog()
    >>> cat.upsert_listing(103, shop_id=7, price=20.0, category=1)
    >>> copy = FeatureCopy(half_life_s=10.0)
    >>> import math
    >>> a = ListingSnapshot("auctions", 0, 103, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -math.inf, 4, 10.0, 5, 0)
    >>> b = ListingSnapshot("auctions", 1, 103, 1.0, 0.0, 0.0, 0.0, 10.0, 10.0, -math.inf, 9, 10.0, 10, 0)
    >>> copy.apply([a, b], cat)
    >>> copy.stats.columns(np.array([0]), now=10.0)[:, 0].tolist()
    [2.0, 0.0, 0.0, 0.0, 10.0, -inf]
    """

    def __init__(self, *, half_life_s: float) -> None:
        self.stats = RollingStats(half_life_s=half_life_s)
        self.counts: Counter[str] = Counter()
        self._partials = _Partials()
        self._waiting: dict[tuple[str, int, int], ListingSnapshot] = {}
        self._listings_known = -1
        """``catalog.n_listings`` when the waiting snapshots were last tried"""
        self._index: RowIndex | None = None
        """listing id -> catalog row for the batches (built on first use, for the catalog it was given)"""

    @property
    def waiting(self) -> int:
        """Snapshots held for listings the catalog does not know yet."""
        return len(self._waiting)

    def apply(self, snapshots: Iterable[ListingSnapshot], catalog: Catalog,
              batches: Iterable[SnapshotBatch] = ()) -> None:
        """Store ``snapshots`` and ``batches`` (and the waiting ones the catalog now knows) and recombine the rows
        they touch."""
        retried = self._take_known(catalog) if catalog.n_listings != self._listings_known else []
        by_source = self._place([*retried, *snapshots], catalog)
        touched = [self._partials.store(src, np.asarray(rows, np.int64),
                                        np.fromiter((s.offset for s in snaps), np.int64, len(snaps)),
                                        np.asarray([s.state() for s in snaps], np.float64))
                   for src, (rows, snaps) in by_source.items()]
        touched += [self._store_batch(b, catalog) for b in batches]
        if touched:
            self._combine(np.unique(np.concatenate(touched)))

    def _store_batch(self, batch: SnapshotBatch, catalog: Catalog) -> I64:
        """A batch's listings the catalog knows stored in their source's partial (the others wait)."""
        if batch.half_life_s != self.stats.half_life_s:
            self.counts["other_half_life"] += len(batch)
            return np.empty(0, np.int64)
        # tombstoned listings keep their counters too: row, not active. A RowIndex, not Catalog.rows (a dict lookup
        # per listing: 19 % of a replica's CPU in a profile at 100 q/s, checkpoints holding every listing a fold has)
        if self._index is None or self._index.catalog is not catalog:
            self._index = RowIndex(catalog)
        rows, _ = self._index.rows(batch.listing_ids)
        unknown = rows < 0
        if unknown.any():
            for s in SnapshotBatch(batch.topic, batch.partition, batch.half_life_s, batch.mark, batch.since,
                                   batch.listing_ids[unknown], batch.offsets[unknown],
                                   batch.state[unknown]).snapshots():
                self._wait(s)
            known = ~unknown
            return self._partials.store(batch.source, rows[known], batch.offsets[known], batch.state[known])
        return self._partials.store(batch.source, rows, batch.offsets, batch.state)

    def retry_waiting(self, catalog: Catalog) -> None:
        """Apply the waiting snapshots of listings ``catalog`` now knows."""
        self._listings_known = -1
        self.apply((), catalog)

    def _take_known(self, catalog: Catalog) -> list[ListingSnapshot]:
        self._listings_known = catalog.n_listings
        known = [key for key, s in self._waiting.items() if catalog.listing_row(s.listing_id) is not None]
        return [self._waiting.pop(key) for key in known]

    def _place(self, snapshots: Iterable[ListingSnapshot],
               catalog: Catalog) -> dict[Source, tuple[list[int], list[ListingSnapshot]]]:
        """Snapshots by source with their catalog rows; the others wait or are counted away."""
        by_source: dict[Source, tuple[list[int], list[ListingSnapshot]]] = {}
        for s in snapshots:
            if s.half_life_s != self.stats.half_life_s:
                self.counts["other_half_life"] += 1
                continue
            row = catalog.listing_row(s.listing_id)
            if row is None:
                self._wait(s)
                continue
            rows, snaps = by_source.setdefault(s.source, ([], []))
            rows.append(row)
            snaps.append(s)
        return by_source

    def _wait(self, s: ListingSnapshot) -> None:
        key = (s.topic, s.partition, s.listing_id)
        held = self._waiting.get(key)
        if held is None or s.offset > held.offset:
            self._waiting[key] = s

    def _combine(self, rows: I64) -> None:
        """Rows of :attr:`stats` = the merge of every source's partial held for them, computed for all sources
        at once: each partial's counters decayed to the latest ``at`` among them and summed, the last-seen
        times their maximum (what ``RollingStats.merge`` of one partial after another gives, in a few numpy
        operations whatever the number of source partitions)."""
        if not self._partials:
            self.stats.clear(rows)
            return
        held, states = self._partials.held(rows)  # (sources, rows), (sources, rows, 7)
        at = np.where(held, states[..., 6], NEVER)
        latest = at.max(axis=0)
        with np.errstate(invalid="ignore"):  # -inf - -inf where no source holds the row: no counters either
            factor = np.exp2(np.maximum(latest - at, 0.0) / -self.stats.half_life_s)
        factor[~np.isfinite(at)] = 0.0
        combined = np.empty((7, len(rows)))
        combined[:4] = np.einsum("srk,sr->kr", states[..., :4], factor)
        combined[4] = np.where(held, states[..., 4], NEVER).max(axis=0)
        combined[5] = np.where(held, states[..., 5], NEVER).max(axis=0)
        combined[6] = latest
        self.stats.set_state(rows, combined)
