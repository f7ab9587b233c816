"""The freshness meter (``bidder.replica.freshness``): a billed click is visible once a ``listing-stats`` snapshot
of its billing partition and listing, at or past its ledger offset, is in the copy."""

from __future__ import annotations

import math

import orjson

from bidder.replica.aggregation import ListingSnapshot, SnapshotBatch
from bidder.replica.freshness import FreshnessMeter


def _line(click_id: str, listing_id: int, ts: float, status: str = "charged") -> bytes:
    return orjson.dumps({"v": 1, "type": "ledger", "click_id": click_id, "shop_id": 7, "listing_id": listing_id,
                         "query_id": "q", "user_id": 1, "slot": 0, "ts": ts, "day": 0, "price": 0.3,
                         "amount": 0.0 if status == "duplicate" else 0.3, "status": status, "spend_after": 0.3})


def _snap(partition: int, listing_id: int, offset: int, topic: str = "billing") -> bytes:
    return SnapshotBatch.of([ListingSnapshot(topic, partition, listing_id, 0.0, 1.0, 0.0, 0.3, 100.0, -math.inf, 100.0,
                                             offset, 3600.0, offset + 1, 0)]).encode()


def test_a_snapshot_at_or_past_the_line_makes_it_visible_after_the_round() -> None:
    m = FreshnessMeter()
    m.record("billing", 1, 10, _line("c1", 5, ts=100.0))
    m.record("listing-stats", 0, 0, _snap(1, 5, offset=10))
    assert m.report()["count"] == 0  # not before the round is flushed
    assert m.round_end(now=100.4) == 1
    r = m.report()
    assert (r["count"], r["p50_ms"], r["max_ms"], r["pending"]) == (1, 400.0, 400.0, 0)


def test_a_line_read_after_its_snapshot_is_visible_at_once() -> None:
    m = FreshnessMeter()
    m.record("listing-stats", 0, 3, _snap(2, 9, offset=20))
    m.record("billing", 2, 20, _line("c1", 9, ts=50.0))
    m.record("billing", 2, 19, _line("c0", 9, ts=49.0))
    assert m.round_end(now=51.0) == 2
    assert sorted(m.latencies_ms) == [1000.0, 2000.0]
    assert m.report()["pending"] == 0


def test_an_older_snapshot_covers_nothing_of_a_later_line() -> None:
    m = FreshnessMeter()
    m.record("billing", 0, 30, _line("c1", 4, ts=10.0))
    m.record("listing-stats", 0, 0, _snap(0, 4, offset=29))
    assert m.round_end(now=11.0) == 0
    assert m.report()["pending"] == 1
    m.record("listing-stats", 0, 1, _snap(0, 4, offset=30))
    assert m.round_end(now=12.0) == 1
    assert m.report()["p99_ms"] == 2000.0 and m.report()["pending"] == 0


def test_other_partitions_listings_and_sources_cover_nothing() -> None:
    m = FreshnessMeter()
    m.record("billing", 0, 5, _line("c1", 4, ts=10.0))
    m.record("listing-stats", 0, 0, _snap(1, 4, offset=99))  # another billing partition
    m.record("listing-stats", 0, 1, _snap(0, 8, offset=99))  # another listing
    m.record("listing-stats", 0, 2, _snap(0, 4, offset=99, topic="auctions"))  # another source
    m.record("listing-stats", 0, 3, None)  # a tombstone
    assert m.round_end(now=11.0) == 0
    assert m.report()["pending"] == 1


def test_several_clicks_on_one_listing_each_become_visible_with_their_snapshot() -> None:
    m = FreshnessMeter()
    for i, off in enumerate((10, 14, 18)):
        m.record("billing", 3, off, _line(f"c{i}", 7, ts=100.0 + i))
    m.record("listing-stats", 0, 0, _snap(3, 7, offset=14))
    assert m.round_end(now=103.0) == 2  # lines 10 and 14
    assert m.report()["pending"] == 1
    m.record("listing-stats", 0, 1, _snap(3, 7, offset=12))  # a stale version of the key changes nothing
    assert m.round_end(now=103.5) == 0
    m.record("listing-stats", 0, 2, _snap(3, 7, offset=18))
    assert m.round_end(now=104.0) == 1
    assert sorted(m.latencies_ms) == [2000.0, 2000.0, 3000.0]
    r = m.report()
    assert (r["count"], r["pending"], r["max_ms"]) == (3, 0, 3000.0)


def test_duplicates_repeated_click_ids_and_unreadable_lines_are_excluded() -> None:
    m = FreshnessMeter()
    m.record("billing", 0, 1, _line("c1", 4, ts=10.0))
    m.record("billing", 0, 2, _line("c1", 4, ts=10.0, status="duplicate"))  # a resent click
    m.record("billing", 0, 3, _line("c1", 4, ts=10.0))  # the same click id written twice
    m.record("billing", 0, 4, b"not json")
    m.record("listing-stats", 0, 0, _snap(0, 4, offset=1))  # the aggregator folded line 1 only
    assert m.round_end(now=10.5) == 1
    r = m.report()
    assert (r["count"], r["pending"], r["excluded"]) == (1, 0, 3)


def test_restart_forgets_the_history_but_keeps_what_was_covered() -> None:
    m = FreshnessMeter()
    m.record("billing", 0, 1, _line("c1", 4, ts=10.0))
    m.record("listing-stats", 0, 0, _snap(0, 4, offset=1))
    m.record("billing", 0, 2, _line("c2", 5, ts=10.0))  # never covered while catching up
    m.round_end(now=500.0)
    m.restart()
    assert m.report() == {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None, "pending": 0, "excluded": 0}
    m.record("billing", 0, 1, _line("c9", 4, ts=600.0))  # offset already covered: visible at once
    assert m.round_end(now=600.1) == 1


def test_an_empty_meter_reports_no_percentiles() -> None:
    assert FreshnessMeter().report()["p99_ms"] is None


def test_the_probe_feeds_the_meter_a_round_at_a_time() -> None:
    from streams.harness.replica_probe import FreshnessTap

    now = [100.0]
    tap = FreshnessTap(clock=lambda: now[0])
    tap.record("billing", 0, 4, _line("c1", 4, ts=99.5))
    tap.record("auctions", 0, 9, b"{}")  # not kept
    tap.record("listing-stats", 0, 0, _snap(0, 4, offset=4))
    assert tap.meter.report()["count"] == 0  # nothing before the round ends
    tap.round_end()
    r = tap.report()
    assert (r["count"], r["p50_ms"], r["pending"]) == (1, 500.0, 0) and r["cpu_s"] >= 0.0
