"""The replica probe (``bidder bench e2e --replica-probe``): a replica alone, caught up before it counts,
reporting what it folded and the CPU it spent after that."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from bidder.labels.attribution import label_update
from bidder.settings import Settings
from streams.harness.replica_probe import ProbeProcess
from streams.producer import EventProducer

pytestmark = [pytest.mark.broker]


def _outcome(qid: str) -> bytes:
    winners = [{"slot": i, "listing_id": 900_000 + i, "shop_id": 7, "price": 0.2, "pctr": 0.01, "pcvr": 0.05,
                "bid": 0.3} for i in range(3)]
    return orjson.dumps({"v": 1, "type": "auction", "query_id": qid, "ts": time.time(), "user_id": 1,
                         "winners": winners, "model_versions": {}, "timings_ms": {}, "n_candidates": 3})


def _click(qid: str) -> bytes:
    return orjson.dumps({"v": 1, "type": "click", "click_id": f"c-{qid}", "query_id": qid, "listing_id": 900_000,
                         "shop_id": 7, "user_id": 1, "ts": time.time(), "slot": 0, "price": 0.2,
                         "shown_at": time.time(), "token": "unchecked-here"})


def _update(qid: str) -> bytes:
    return orjson.dumps(label_update(query_id=qid, slot=0, listing_id=900_000, ts=time.time(), click_id=f"c-{qid}"))


def test_the_probe_counts_what_it_folds_after_catching_up(bootstrap: str, settings: Settings,
                                                          tmp_path: Path) -> None:
    tag = f"probe-{time.time_ns()}"

    async def send(n: int, prefix: str) -> None:
        async with EventProducer(settings, bootstrap=bootstrap) as producer:
            for i in range(n):
                await producer.send_raw("auctions", f"{prefix}-{i}".encode(), _outcome(f"{prefix}-{i}"))
                await producer.send_raw("clicks", b"7", _click(f"{prefix}-{i}"))
                await producer.send_raw("labels", f"{prefix}-{i}".encode(), _update(f"{prefix}-{i}"))

    asyncio.run(send(30, f"{tag}-before"))  # folded while catching up: not counted
    probe = ProbeProcess(bootstrap, tmp_path / "replica.json")
    pid = probe.start()
    try:
        assert pid > 0 and (tmp_path / "replica.json.ready").exists()
        asyncio.run(send(50, f"{tag}-after"))
        time.sleep(2.0)  # the replica polls every replica_fetch_floor_ms at most
    finally:
        report = probe.stop()
    assert report is not None
    # the probe owns every partition number (one worker): it reads the label updates of all of them
    assert report["own_partitions"] == list(range(settings.topic_partitions))
    assert report["counts"].get("label_updates", 0) >= 50
    assert report["counts"].get("label_updates", 0) < 80  # the 30 before it caught up are not in the window
    assert report["records"] >= 50
    # a worker's replica reads neither auctions (clicks carry their prices signed; calibration matures the
    # worker's own outcomes) nor clicks (its bill agent decides those of its partitions and the attribute agent
    # waits for that bill agent): none of the 80 outcomes and clicks is folded
    assert report["counts"].get("auctions", 0) == 0 and report["records"] < 80 + 30
    by_topic = report["records_per_s_by_topic"]
    assert "clicks" not in by_topic and "auctions" not in by_topic and by_topic["labels"] * report["wall_s"] >= 49
    assert report["cpu_s"] > 0 and report["cpu_us_per_record"] > 0
    assert report["wall_s"] >= 2.0
    # caught up, it fetches at most once per floor, data or not (50 clicks in a burst, then quiet)
    assert 0 < report["fetches_per_s"] <= 1000.0 / settings.replica_fetch_floor_ms + 1
    # the bytes it took in: at least the 50 updates' values (the outcomes and clicks are not fetched at all)
    taken_kb = report["value_kb_per_s"] * report["wall_s"]
    assert taken_kb >= 0.95 * 50 * len(_update(f"{tag}-after-10")) / 1000.0
    # copied features (listing-stats): how fresh the copy is; folded from the raw records: nothing to measure
    assert report["freshness"] is None or {"count", "p50_ms", "p99_ms", "max_ms", "pending"} <= set(report["freshness"])


def test_a_replica_copying_the_features_measures_how_fresh_a_click_is(bootstrap: str, settings: Settings) -> None:
    import math

    from bidder.replica.aggregation import ListingSnapshot, SnapshotBatch
    from streams.harness.replica_probe import FreshnessTap
    from streams.replicator import Replicator, worker_state

    listing = 800_000 + time.time_ns() % 100_000

    async def run() -> dict[str, object]:
        tap = FreshnessTap()
        replica = Replicator(worker_state(settings, features="copy"), settings, bootstrap=bootstrap, observer=tap)
        await replica.own(range(settings.topic_partitions))  # the billed clicks of every partition
        await replica.start()
        tap.restart()
        try:
            async with EventProducer(settings, bootstrap=bootstrap) as producer:
                line = {"v": 1, "type": "ledger", "click_id": f"fresh-{listing}", "shop_id": 7,
                        "listing_id": listing, "query_id": "q", "user_id": 1, "slot": 0, "ts": time.time(),
                        "day": 0, "price": 0.3, "amount": 0.3, "status": "charged", "spend_after": 0.3}
                p, o = await producer.send_raw("billing", b"7", orjson.dumps(line))
                snap = ListingSnapshot("billing", p, listing, 0.0, 1.0, 0.0, 0.3, time.time(), -math.inf,
                                       time.time(), o, settings.feature_half_life_s, o + 1, o)
                batch = SnapshotBatch.of([snap]).encode()
                await producer.send_raw("listing-stats", f"billing:{p}:d0.0".encode(), batch)
            assert await replica.wait_caught_up(["billing", "listing-stats"])
        finally:
            await replica.stop()
        # other tests' clicks may be measured beside it (the session's worker bills and aggregates too): this
        # click is not pending, and at least it was measured
        assert tap.meter.pending_for(listing) == 0
        return tap.report()

    report = asyncio.run(run())
    assert report["count"] >= 1
    assert isinstance(report["p99_ms"], float) and 0.0 <= report["p99_ms"] < 30_000.0


def test_a_replica_reads_billing_orders_and_labels_of_its_own_partitions_only(bootstrap: str,
                                                                              settings: Settings) -> None:
    """What a worker's replica takes in does not grow with other workers' traffic: of ``billing``, ``orders`` and
    ``labels`` it reads the partition numbers it owns; one it gets later is read from the start (its ledger
    rebuilt), one it loses is no longer fetched (what it folded is kept)."""
    from bidder.clicks.billing import Ledger
    from streams.replicator import Replicator, worker_state

    tag = f"own-{time.time_ns()}"
    n = settings.topic_partitions
    assert n >= 2

    def line(shop: int, i: int) -> bytes:
        e = Ledger().decide(click_id=f"{tag}-{shop}-{i}", shop_id=shop, listing_id=900_000, query_id=f"{tag}-q",
                            user_id=1, slot=0, ts=time.time(), price=0.01, budget=1.0)
        return orjson.dumps(e.to_dict())

    async def run() -> None:
        shops = {0: 10_000_000 + time.time_ns() % 1000, 1: 20_000_000 + time.time_ns() % 1000}
        async with EventProducer(settings, bootstrap=bootstrap) as producer:
            for p, shop in shops.items():  # lines of two shops, each on its own partition
                for i in range(5):
                    await producer.send_raw("billing", str(shop).encode(), line(shop, i), partition=p)
        state = worker_state(settings)
        replica = Replicator(state, settings, bootstrap=bootstrap)
        await replica.own([0])
        await replica.start()
        try:
            day = int(time.time() // 86_400)
            assert state.ledger.spend(shops[0], day) == pytest.approx(0.05)
            assert state.ledger.spend(shops[1], day) == 0.0  # partition 1 is another worker's
            assert replica.own_partitions == {0}
            await replica.add_own(1)  # assigned partition 1 too: its ledger is rebuilt from the start
            assert await replica.wait_caught_up(["billing"], partitions={"billing": 1})
            assert state.ledger.spend(shops[1], day) == pytest.approx(0.05)
            await replica.own([1])  # lost partition 0: no longer fetched, its fold kept
            async with EventProducer(settings, bootstrap=bootstrap) as producer:
                await producer.send_raw("billing", str(shops[0]).encode(), line(shops[0], 9), partition=0)
                await producer.send_raw("billing", str(shops[1]).encode(), line(shops[1], 9), partition=1)
            assert await replica.wait_caught_up(["billing"])
            assert state.ledger.spend(shops[1], day) == pytest.approx(0.06)
            assert state.ledger.spend(shops[0], day) == pytest.approx(0.05)
            assert replica.own_partitions == {1}
        finally:
            await replica.stop()

    asyncio.run(run())
