"""Rolling features aggregated once: the same numbers as every worker's own fold, and exactly once across
restarts of an aggregator."""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bidder.clicks.billing import LedgerEntry
from bidder.decoding import Limits
from bidder.events import Listing, Shop, encode
from bidder.labels.attribution import IMPRESSIONS_PREFIX, label_update
from bidder.query.catalog import Catalog
from bidder.replica.aggregation import ListingSnapshot, SnapshotBatch, SourceFold
from bidder.replica.feature_copy import FeatureCopy
from bidder.replica.state import BidderState

HALF_LIFE = 600.0
T0 = 1_800_000_000.0
LISTINGS = range(1000, 1200)
PARTITIONS = {"auctions": 3, "billing": 2, "labels": 3}
SOURCES = [(topic, p) for topic, n in PARTITIONS.items() for p in range(n)]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None


def shop_of(listing_id: int) -> int:
    return listing_id % 20 + 1


def by_query(query_id: str) -> int:
    """``auctions`` and ``labels`` are keyed by query id"""
    return zlib.crc32(query_id.encode()) % 3


class Stream:
    """A realistic mix: outcomes, ledger lines and labels in increasing time with some late ones, redelivered
    records (the same bytes again, on the same partition), ``duplicate`` ledger lines, resent click ids and
    order ids, winners the catalog does not know, impression records and unreadable records."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.records: list[Record] = []
        self._next: dict[tuple[str, int], int] = {}
        self._recent: list[Record] = []
        self._lines: list[tuple[int, str]] = []
        """(listing id, click id) of the ledger lines so far"""
        self.t = T0

    def emit(self, topic: str, partition: int, value: bytes | None) -> None:
        offset = self._next.get((topic, partition), 0)
        self._next[topic, partition] = offset + 1
        self.records.append(Record(topic, partition, offset, value))
        self._recent = [*self._recent[-7:], self.records[-1]]

    def generate(self, n: int) -> list[Record]:
        for i in range(n):
            self.t += self.rng.expovariate(1 / 5.0)
            late = self.rng.random() < 0.1
            ts = self.t - self.rng.uniform(0.0, 2 * HALF_LIFE) if late else self.t
            roll = self.rng.random()
            if roll < 0.1:
                again = self.rng.choice(self._recent or [Record("auctions", 0, 0, b"{}")])
                self.emit(again.topic, again.partition, again.value)  # a redelivery
            elif roll < 0.55:
                self.outcome(i, ts)
            elif roll < 0.8:
                self.ledger_line(i, ts)
            elif roll < 0.95:
                self.label(i, ts)
            else:
                self.emit(self.rng.choice(SOURCES)[0], 0, self.rng.choice([b"{not json", b"[1,2]", b'"s"', None]))
        return self.records

    def outcome(self, i: int, ts: float) -> None:
        qid = f"q{i}"
        ids = self.rng.sample(LISTINGS, self.rng.randint(1, 4))
        if self.rng.random() < 0.1:
            ids.append(9_000 + i)  # not in the catalog: neither fold counts it
        winners = [{"slot": s, "listing_id": lid, "shop_id": shop_of(lid), "price": 0.2, "pctr": 0.1, "pcvr": 0.05,
                    "bid": 0.3} for s, lid in enumerate(ids)]
        self.emit("auctions", by_query(qid), orjson.dumps({"query_id": qid, "ts": ts, "winners": winners}))

    def ledger_line(self, i: int, ts: float) -> None:
        lid = self.rng.choice(LISTINGS)
        cid = f"c{i}"
        if self._lines and self.rng.random() < 0.2:  # a click id resent: its shop, so its partition, again
            lid, cid = self.rng.choice(self._lines)
        self._lines.append((lid, cid))
        status = self.rng.choice(["charged", "charged", "charged", "unbilled", "duplicate"])
        amount = round(self.rng.uniform(0.05, 1.0), 6) if status == "charged" else 0.0
        entry = LedgerEntry(click_id=cid, shop_id=shop_of(lid), listing_id=lid, query_id=f"q{i}", user_id=1, slot=0,
                            ts=ts, day=int(ts // 86_400), price=0.3, amount=amount, status=status,  # type: ignore[arg-type]
                            spend_after=amount)
        self.emit("billing", shop_of(lid) % 2, orjson.dumps(entry.to_dict()))

    def label(self, i: int, ts: float) -> None:
        qid = f"q{max(0, i - self.rng.randrange(8))}"
        if self.rng.random() < 0.2:
            self.emit("labels", by_query(qid), IMPRESSIONS_PREFIX + b',"impressions":[]}')
            return
        order = None if self.rng.random() < 0.2 else f"o-{qid}"  # a query converted again: the same order
        self.emit("labels", by_query(qid), orjson.dumps(label_update(
            query_id=qid, slot=0, listing_id=self.rng.choice(LISTINGS), ts=ts, click_id=f"c{i}", order_id=order)))


def replica(records: list[Record]) -> BidderState:
    """Today's fold: one process, every partition, the catalog first."""
    state = BidderState(half_life_s=HALF_LIFE, click_window_s=1e9, attribution_window_s=300.0, limits=Limits())
    for shop in {shop_of(lid) for lid in LISTINGS}:
        state.apply("shops", 0, 0, encode(Shop(shop, 10.0, 0.05, T0)), now=T0)
    for lid in LISTINGS:
        state.apply("listings", 0, 0, encode(Listing(lid, shop_of(lid), 20.0, 1, T0)), now=T0)
    for r in records:
        state.apply(r.topic, r.partition, r.offset, r.value, now=T0)
    return state


def wire(folds: list[SourceFold], max_rows: int) -> list[SnapshotBatch]:
    """Each fold's next batch as ``listing-stats`` records of at most ``max_rows`` listings, read back."""
    return [SnapshotBatch.decode(part.encode()) for f in folds for part in f.batch().parts(max_rows)]


def fold(source: tuple[str, int]) -> SourceFold:
    return SourceFold(*source, half_life_s=HALF_LIFE)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), every=st.integers(1, 80), max_rows=st.integers(1, 60))
def test_the_aggregated_copy_has_the_numbers_of_the_replica(seed: int, every: int, max_rows: int) -> None:
    stream = Stream(seed)
    records = stream.generate(400)
    state = replica(records)
    folds = {source: fold(source) for source in SOURCES}
    copy = FeatureCopy(half_life_s=HALF_LIFE)
    for i, r in enumerate(records, 1):
        folds[r.topic, r.partition].fold(r.offset, r.value)
        if i % every == 0 or i == len(records):
            copy.apply((), state.catalog, wire(list(folds.values()), max_rows))
    rows = np.arange(state.catalog.n_listings)
    now = stream.t + 60.0
    np.testing.assert_allclose(copy.stats.columns(rows, now=now), state.stats.columns(rows, now=now),
                               rtol=1e-6, atol=1e-9)
    counted = sum((f.counts for f in folds.values()), start=type(state.counts)())
    assert counted["auctions_repeated"] == state.counts["auctions_repeated"]
    assert counted["billing_repeated"] == state.ledger.counts["duplicate"]
    assert counted["labels_repeated"] == state.counts["conversions_repeated"]
    assert all(counted[f"{t}_unreadable"] == state.counts[f"{t}_unreadable"] for t in PARTITIONS)
    assert copy.waiting == len(outside_the_catalog(records))  # kept, one each, never counted


def outside_the_catalog(records: list[Record]) -> set[int]:
    return {w["listing_id"] for r in records if r.topic == "auctions" and r.value and r.value.startswith(b'{"query_id')
            for w in orjson.loads(r.value)["winners"] if w["listing_id"] not in LISTINGS}


def batches(f: SourceFold, records: list[Record], every: int, *, final: bool) -> list[list[ListingSnapshot]]:
    """The snapshot batches ``f`` writes while folding ``records`` (every ``every`` records; at the end if
    ``final``, else what it folded after its last batch is lost with it)."""
    out = []
    for i, r in enumerate(records, 1):
        f.fold(r.offset, r.value)
        if i % every == 0:
            out.append(f.snapshots())
    return [*out, f.snapshots()] if final else out


def compacted(written: list[ListingSnapshot]) -> dict[int, tuple[int, tuple[float, ...]]]:
    """What the compacted topic holds per listing: the last written (offset and state)."""
    return {s.listing_id: (s.offset, s.state()) for s in written}


def restart(records: list[Record], *, every: int, cut: int, lost: float,
            seed: int) -> tuple[list[ListingSnapshot], list[ListingSnapshot], int]:
    """Fold ``records[:cut]`` and crash, losing the fraction ``lost`` of the last batch written; restore from
    what was written, remember a window before the resume point and fold on to the end. Returns what was
    written before the crash and after it (in order) and the resume point."""
    rng = random.Random(seed)
    source = (records[0].topic, records[0].partition)
    before = batches(fold(source), records[:cut], every=every, final=False)
    if before:
        before[-1] = [s for s in before[-1] if rng.random() >= lost]
    written = [s for batch in before for s in batch]
    read_back = written.copy()
    rng.shuffle(read_back)  # a log not compacted yet: every stale version too, in any order
    restored = SourceFold.restore(*source, read_back, half_life_s=HALF_LIFE)
    resume = restored.resume_from()
    # the protocol's step 3: a window at least as long as the repeats to catch. This stream resends a click id
    # from anywhere in its past (seed 179190613: 54 records back, past a window of 50), so the window is all of
    # it; the aggregator's is ``aggregate_remember_records`` (a repeat farther back is counted again)
    for r in records:
        if r.offset < resume:
            restored.remember(r.offset, r.value)
    after = batches(restored, [r for r in records if r.offset >= resume], every=every, final=True)
    return written, [s for batch in after for s in batch], resume


def whole(records: list[Record], every: int) -> dict[int, tuple[int, tuple[float, ...]]]:
    """The compacted topic of an uninterrupted fold."""
    source = (records[0].topic, records[0].partition)
    return compacted([s for batch in batches(fold(source), records, every=every, final=True) for s in batch])


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), every=st.integers(1, 30), cut=st.floats(0.1, 0.9),
       lost=st.sampled_from([0.0, 0.5, 1.0]), source=st.sampled_from(SOURCES))
@example(seed=179190613, every=1, cut=0.875, lost=0.0, source=("billing", 1))  # a click id resent 54 records later
def test_a_restarted_fold_counts_nothing_twice(seed: int, every: int, cut: float, lost: float,
                                               source: tuple[str, int]) -> None:
    records = [r for r in Stream(seed).generate(400) if (r.topic, r.partition) == source]
    before, after, _ = restart(records, every=every, cut=int(cut * len(records)), lost=lost, seed=seed)
    assert compacted([*before, *after]) == whole(records, every)


def test_the_restart_re_reads_records_some_listings_hold_already() -> None:
    # the case the per-listing offsets exist for: the resume point lies below offsets already folded into some
    # listings (folding from there without them counts those records twice: breaking them fails this test)
    records = [r for r in Stream(7).generate(400) if (r.topic, r.partition) == ("auctions", 1)]
    before, after, resume = restart(records, every=10, cut=45, lost=0.5, seed=7)
    assert resume < max(s.offset for s in before)
    assert compacted([*before, *after]) == whole(records, 10)


def test_a_batch_survives_the_wire() -> None:
    snaps = [ListingSnapshot("labels", 2, 103, 0.0, 0.0, 1.5, 0.0, T0, -math.inf, -math.inf, 41, HALF_LIFE, 50, 30),
             ListingSnapshot("labels", 2, 207, 2.0, 1.0, 0.0, 0.4, T0 + 1, T0, T0 + 1, 44, HALF_LIFE, 50, 30)]
    value = SnapshotBatch.of(snaps).encode()
    assert SnapshotBatch.decode(value).snapshots() == snaps
    assert [b.snapshots() for b in SnapshotBatch.of(snaps).parts(1)] == [[snaps[0]], [snaps[1]]]
    with pytest.raises(ValueError, match="version 1"):
        SnapshotBatch.decode(b"LSB2" + value[4:])
    with pytest.raises(ValueError, match="bytes of columns"):
        SnapshotBatch.decode(value[:-8])
    nan = SnapshotBatch.of([ListingSnapshot("labels", 2, 5, math.nan, 0.0, 0.0, 0.0, T0, -math.inf, -math.inf, 1,
                                            HALF_LIFE, 2, 0)])
    with pytest.raises(ValueError, match="finite"):
        SnapshotBatch.decode(nan.encode())


def snapshot(listing_id: int, *, impressions: float, offset: int, partition: int = 0) -> ListingSnapshot:
    return ListingSnapshot("auctions", partition, listing_id, impressions, 0.0, 0.0, 0.0, T0, T0, -math.inf, offset,
                           HALF_LIFE, offset + 1, 0)


def test_an_older_snapshot_does_not_overwrite_a_newer_one() -> None:
    cat = Catalog()
    cat.upsert_listing(103, shop_id=7, price=20.0, category=1)
    copy = FeatureCopy(half_life_s=HALF_LIFE)
    copy.apply([snapshot(103, impressions=5.0, offset=9), snapshot(103, impressions=1.0, offset=3, partition=1)], cat)
    copy.apply([snapshot(103, impressions=2.0, offset=4)], cat)  # older than partition 0's offset 9
    assert copy.stats.columns(np.array([0]), now=T0)[0].tolist() == [6.0]
    copy.apply([snapshot(103, impressions=7.0, offset=12)], cat)
    assert copy.stats.columns(np.array([0]), now=T0)[0].tolist() == [8.0]


def test_the_copy_grows_past_its_first_rows_and_sources_in_any_order() -> None:
    # the copy keeps every source in one table (rows x sources): rows past its first 1,024 arrive before and
    # after a new source, and each row is still the sum of its sources' partials
    cat = Catalog()
    for listing_id in range(3_000):
        cat.upsert_listing(listing_id, shop_id=7, price=20.0, category=1)
    copy = FeatureCopy(half_life_s=HALF_LIFE)
    copy.apply([snapshot(5, impressions=1.0, offset=1)], cat)
    copy.apply([snapshot(2_500, impressions=2.0, offset=2, partition=1)], cat)  # new source and rows past 1,024
    copy.apply([snapshot(5, impressions=4.0, offset=3, partition=2), snapshot(1_500, impressions=8.0, offset=4)], cat)
    rows = np.array([cat.listing_row(i) or 0 for i in (5, 1_500, 2_500, 2_999)])
    assert copy.stats.columns(rows, now=T0)[0].tolist() == [5.0, 8.0, 2.0, 0.0]


def test_a_snapshot_of_an_unknown_listing_waits_for_the_catalog() -> None:
    cat = Catalog()
    cat.upsert_listing(103, shop_id=7, price=20.0, category=1)
    copy = FeatureCopy(half_life_s=HALF_LIFE)
    copy.apply([snapshot(555, impressions=1.0, offset=2), snapshot(555, impressions=3.0, offset=6),
                snapshot(555, impressions=2.0, offset=4)], cat)
    assert copy.waiting == 1
    cat.upsert_listing(555, shop_id=7, price=20.0, category=1)
    copy.apply([], cat)
    assert copy.waiting == 0
    assert copy.stats.columns(np.array([cat.listing_row(555) or 0]), now=T0)[0].tolist() == [3.0]
    copy.apply([snapshot(777, impressions=1.0, offset=1)], cat)
    cat.upsert_listing(777, shop_id=7, price=20.0, category=1)
    copy.retry_waiting(cat)
    assert copy.waiting == 0 and copy.stats.columns(np.array([2]), now=T0)[0].tolist() == [1.0]


def history_record(listing_id: int, rng: random.Random) -> bytes:
    clicked = rng.random() < 0.5
    return orjson.dumps({"listing_id": listing_id, "impressions": rng.uniform(0, 50), "clicks": rng.uniform(0, 3),
                         "conversions": rng.uniform(0, 1), "spend": rng.uniform(0, 2), "at": T0 - 5.0,
                         "last_impression": T0 - rng.uniform(5, 500), "last_click": T0 - 60.0 if clicked else None,
                         "history_from": T0 - 3600.0, "half_life_s": HALF_LIFE})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), every=st.integers(1, 60), catalog_late=st.booleans())
def test_a_worker_state_takes_its_features_from_listing_stats(seed: int, every: int, catalog_late: bool) -> None:
    # the worker's side: listing-stats and listing-history records through BidderState.apply, taken in at the end
    # of each fetch round (flush), give the one-process fold's features, history included, even when the
    # snapshots arrive before the catalog does
    rng = random.Random(seed)
    stream = Stream(seed)
    records = stream.generate(300)
    history = [Record("listing-history", 0, i, history_record(lid, rng)) for i, lid in enumerate(LISTINGS[::3])]
    reference = replica([*history, *records])
    folds = {source: fold(source) for source in SOURCES}
    written: list[SnapshotBatch] = []
    for i, r in enumerate(records, 1):
        folds[r.topic, r.partition].fold(r.offset, r.value)
        if i % every == 0 or i == len(records):
            written += [part for f in folds.values() for part in f.batch().parts(rng.randint(1, 40))]
    worker = BidderState(half_life_s=HALF_LIFE, click_window_s=1e9, attribution_window_s=300.0, limits=Limits(),
                         features="copy")
    assert "listing-stats" in worker.replicated_topics and "listing-stats" not in reference.replicated_topics
    catalog = [Record("listings", 0, 0, encode(Listing(lid, shop_of(lid), 20.0, 1, T0))) for lid in LISTINGS]
    feed = [*history, *(Record("listing-stats", 0, i, s.encode()) for i, s in enumerate(written))]
    feed = [*feed, *catalog] if catalog_late else [*catalog, *feed]
    for i, r in enumerate(feed, 1):
        worker.apply(r.topic, r.partition, r.offset, r.value, now=T0)
        if rng.random() < 0.05 or i == len(feed):
            worker.flush()
    rows = np.arange(reference.catalog.n_listings)
    assert worker.catalog.n_listings == reference.catalog.n_listings
    now = stream.t + 60.0
    np.testing.assert_allclose(worker.stats.columns(rows, now=now), reference.stats.columns(rows, now=now),
                               rtol=1e-6, atol=1e-9)
    assert worker.history_from == reference.history_from
    assert worker.counts["listing-stats"] == len(written)  # one record per part
