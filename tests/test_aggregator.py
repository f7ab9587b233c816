"""The aggregator against the real broker: what it writes to ``listing-stats``, read back into a worker's
:class:`~bidder.replica.feature_copy.FeatureCopy`, has the numbers of one process folding every record
(:class:`~bidder.replica.state.BidderState`), across a crash and restart and across refused snapshot writes.

The source topics are the session's (other tests write to them too): each test writes records of its own
listings, shops, query ids and click ids and compares only those listings. Each test writes its snapshots to a
``listing-stats`` of its own, so no other aggregator of the session (a worker's) writes beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from bidder.clicks.billing import LedgerEntry
from bidder.decoding import Limits
from bidder.events import Listing, Shop, encode
from bidder.labels.attribution import IMPRESSIONS_PREFIX, label_update
from bidder.replica.aggregation import SnapshotBatch
from bidder.replica.feature_copy import FeatureCopy
from bidder.replica.state import BidderState
from bidder.settings import Settings
from bidder.topics import TOPICS
from streams.aggregator import AGGREGATED_TOPICS, Aggregator
from streams.kafka_config import aiokafka_admin_kwargs, aiokafka_producer_kwargs
from streams.tail import tail_consumer

pytestmark = pytest.mark.broker

T0 = 1_800_000_000.0


@dataclass(frozen=True, slots=True)
class Sent:
    topic: str
    key: bytes
    value: bytes | None
    partition: int = -1
    offset: int = -1


class Traffic:
    """Outcomes (up to 24 winners), ledger lines and conversion labels of this test's own listings, with the
    repeats the topics carry: redelivered records, ``duplicate`` ledger lines, resent click ids, orders
    converted twice; and impression records, unreadable records, winners outside the catalog."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tag = uuid.uuid4().hex[:10]
        base = self.rng.randrange(10**6, 10**9) * 1000
        self.listings = range(base, base + 60)
        self.shops = [base + 100 + i for i in range(6)]
        self.t = T0
        self.i = 0
        self._recent: list[Sent] = []
        self._lines: list[tuple[int, str]] = []

    def shop_of(self, listing_id: int) -> int:
        return self.shops[listing_id % len(self.shops)]

    def generate(self, n: int) -> list[Sent]:
        out: list[Sent] = []
        for _ in range(n):
            self.i += 1
            self.t += self.rng.expovariate(1 / 5.0)
            ts = self.t - self.rng.uniform(0.0, 1200.0) if self.rng.random() < 0.1 else self.t
            roll = self.rng.random()
            if roll < 0.08 and self._recent:
                record = self.rng.choice(self._recent)  # a redelivery: the same bytes, the same key
            elif roll < 0.5:
                record = self.outcome(ts)
            elif roll < 0.75:
                record = self.ledger_line(ts)
            elif roll < 0.97:
                record = self.label(ts)
            else:
                topic = self.rng.choice(["auctions", "billing", "labels"])
                record = Sent(topic, self.tag.encode(), self.rng.choice([b"{not json", b"[1,2]", None]))
            out.append(record)
            self._recent = [*self._recent[-7:], record]
        return out

    def outcome(self, ts: float) -> Sent:
        qid = f"{self.tag}-q{self.i}"
        ids = self.rng.sample(self.listings, self.rng.choice([1, 2, 4, 24]))
        if self.rng.random() < 0.1:
            ids.append(self.listings.stop + self.i)  # not in the catalog
        winners = [{"slot": s, "listing_id": lid, "shop_id": self.shop_of(lid), "price": 0.2, "pctr": 0.1,
                    "pcvr": 0.05, "bid": 0.3, "features": [0.5] * 8} for s, lid in enumerate(ids)]
        value = orjson.dumps({"v": 1, "type": "auction", "query_id": qid, "ts": ts, "user_id": 1, "winners": winners})
        return Sent("auctions", qid.encode(), value)

    def ledger_line(self, ts: float) -> Sent:
        lid, cid = self.rng.choice(self.listings), f"{self.tag}-c{self.i}"
        if self._lines and self.rng.random() < 0.2:  # a click id resent: same shop, so same partition
            lid, cid = self.rng.choice(self._lines)
        self._lines.append((lid, cid))
        status = self.rng.choice(["charged", "charged", "charged", "unbilled", "duplicate"])
        amount = round(self.rng.uniform(0.05, 1.0), 6) if status == "charged" else 0.0
        entry = LedgerEntry(click_id=cid, shop_id=self.shop_of(lid), listing_id=lid, query_id=f"{self.tag}-q{self.i}",
                            user_id=1, slot=0, ts=ts, day=int(ts // 86_400), price=0.3, amount=amount,
                            status=status,  # type: ignore[arg-type]
                            spend_after=amount)
        return Sent("billing", TOPICS["billing"].key_of(entry), orjson.dumps(entry.to_dict()))

    def label(self, ts: float) -> Sent:
        qid = f"{self.tag}-q{max(1, self.i - self.rng.randrange(8))}"
        if self.rng.random() < 0.15:
            return Sent("labels", qid.encode(), IMPRESSIONS_PREFIX + b',"impressions":[]}')
        order = None if self.rng.random() < 0.2 else f"o-{qid}"  # a query converted again: the same order
        value = orjson.dumps(label_update(query_id=qid, slot=0, listing_id=self.rng.choice(self.listings), ts=ts,
                                          click_id=f"{self.tag}-c{self.i}", order_id=order))
        return Sent("labels", qid.encode(), value)

    def reference(self, sent: Iterable[Sent], settings: Settings) -> BidderState:
        """One process folding every record of this traffic, the catalog first."""
        state = BidderState(half_life_s=settings.feature_half_life_s, click_window_s=1e9, attribution_window_s=300.0,
                            limits=Limits())
        for shop in self.shops:
            state.apply("shops", 0, 0, encode(Shop(shop, 10.0, 0.05, T0)), now=T0)
        for lid in self.listings:
            state.apply("listings", 0, 0, encode(Listing(lid, self.shop_of(lid), 20.0, 1, T0)), now=T0)
        for r in sorted(sent, key=lambda r: (r.topic, r.partition, r.offset)):
            state.apply(r.topic, r.partition, r.offset, r.value, now=T0)
        return state


async def produce(settings: Settings, bootstrap: str, records: list[Sent]) -> list[Sent]:
    """Write ``records`` (in order per partition); each with the partition and offset the broker gave it."""
    producer = AIOKafkaProducer(acks="all", **aiokafka_producer_kwargs(settings, bootstrap=bootstrap))
    await producer.start()
    try:
        acks = [await producer.send(r.topic, value=r.value, key=r.key) for r in records]
        metas = await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return [Sent(r.topic, r.key, r.value, m.partition, m.offset) for r, m in zip(records, metas, strict=True)]


async def new_stats_topic(settings: Settings, bootstrap: str) -> str:
    name = f"listing-stats-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**aiokafka_admin_kwargs(settings, bootstrap=bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, settings.topic_partitions, 1, topic_configs=TOPICS[
            "listing-stats"].configs())])
    finally:
        await admin.close()
    return name


async def read_stats(settings: Settings, bootstrap: str, topic: str) -> list[tuple[bytes, SnapshotBatch]]:
    consumer = await tail_consumer(settings, bootstrap, [topic], from_beginning=True)
    try:
        parts = list(consumer.assignment())
        ends = await consumer.end_offsets(parts)
        out: list[tuple[bytes, SnapshotBatch]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out += [(r.key, SnapshotBatch.decode(r.value)) for r in records if r.value is not None]
            if all([await consumer.position(tp) >= ends[tp] for tp in parts]):
                return out
        raise AssertionError("listing-stats not read to its end")
    finally:
        await consumer.stop()


def ends_of(sent: Iterable[Sent]) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = {}
    for r in sent:
        tp = TopicPartition(r.topic, r.partition)
        ends[tp] = max(ends.get(tp, 0), r.offset + 1)
    return ends


async def folded(*aggs: Aggregator, ends: dict[TopicPartition, int], timeout_s: float = 20.0) -> None:
    """Until ``aggs`` (the members of one group) have folded every record below ``ends``."""
    deadline = time.monotonic() + timeout_s
    while True:
        marks = {tp: mark for agg in aggs for tp, mark in agg.marks().items()}
        if all(marks.get(tp, 0) >= end for tp, end in ends.items()):
            return
        assert all(agg.running for agg in aggs), [agg.failure for agg in aggs]
        assert time.monotonic() < deadline, (marks, ends, [dict(agg.counts) for agg in aggs])
        await asyncio.sleep(0.05)


async def published(agg: Aggregator, *, timeout_s: float = 10.0) -> None:
    """Until ``agg`` has written what it folded before this call."""
    rounds, deadline = agg.counts["publish_rounds"], time.monotonic() + timeout_s
    while agg.counts["publish_rounds"] < rounds + 2:
        assert time.monotonic() < deadline, dict(agg.counts)
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(agg: Aggregator) -> AsyncIterator[Aggregator]:
    """``agg`` started and its first assignment restored; stopped (publishing what it holds) at the end."""
    await agg.start()
    try:
        await asyncio.wait_for(agg.ready.wait(), 20)
        yield agg
    finally:
        await agg.stop()


async def round_trip(agg: Aggregator, settings: Settings, bootstrap: str, records: list[Sent],
                     sent: list[Sent]) -> None:
    """Produce ``records`` (appended to ``sent``), then wait until ``agg`` folded everything sent and wrote it."""
    sent += await produce(settings, bootstrap, records)
    await folded(agg, ends=ends_of(sent))
    await published(agg)


def own_settings(settings: Settings) -> Settings:
    # a checkpoint every 5 batches, a ring of 11
    return settings.model_copy(update={"app_id": f"agg-test-{uuid.uuid4().hex[:8]}", "aggregate_interval_ms": 20.0,
                                       "aggregate_checkpoint_s": 0.1})


async def assert_same_numbers(settings: Settings, bootstrap: str, stats_topic: str, traffic: Traffic,
                              sent: list[Sent]) -> None:
    """The copy of every record on ``listing-stats``, and of what compaction would leave of it (the last record
    per key: the embedded brokers do not compact), both have the numbers of one process folding ``sent``."""
    state = traffic.reference(sent, settings)
    records = await read_stats(settings, bootstrap, stats_topic)
    compacted = dict(records)
    assert len(compacted) < len(records)  # the ring and the checkpoints reuse their keys
    rows = np.arange(state.catalog.n_listings)
    now = traffic.t + 60.0
    expected = state.stats.columns(rows, now=now)
    assert expected[:3].sum(axis=1).min() > 0  # impressions, clicks and conversions were counted
    for batches in ([b for _, b in records], list(compacted.values())):
        copy = FeatureCopy(half_life_s=settings.feature_half_life_s)
        copy.apply((), state.catalog, batches)
        np.testing.assert_allclose(copy.stats.columns(rows, now=now), expected, rtol=1e-6, atol=1e-9)


async def test_the_published_copy_has_the_numbers_of_one_fold(bootstrap: str, settings: Settings) -> None:
    settings = own_settings(settings)
    stats_topic = await new_stats_topic(settings, bootstrap)
    traffic = Traffic(seed=1)
    agg = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    sent: list[Sent] = []
    async with running(agg):
        for _ in range(8):  # batches enough for checkpoints and the ring to write their keys again
            await round_trip(agg, settings, bootstrap, traffic.generate(75), sent)
    assert agg.counts["batches"] >= 2 and agg.counts["send_failures"] == 0
    state = traffic.reference(sent, settings)
    assert agg.repeats >= state.counts["auctions_repeated"] + state.counts["conversions_repeated"] > 0
    await assert_same_numbers(settings, bootstrap, stats_topic, traffic, sent)


async def test_a_restarted_aggregator_counts_nothing_twice_and_loses_nothing(bootstrap: str,
                                                                            settings: Settings) -> None:
    settings = own_settings(settings)
    stats_topic = await new_stats_topic(settings, bootstrap)
    traffic = Traffic(seed=2)
    first = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    await first.start()
    try:
        await asyncio.wait_for(first.ready.wait(), 20)
        sent = await produce(settings, bootstrap, traffic.generate(300))
        await folded(first, ends=ends_of(sent))
        await published(first)
        sent += await produce(settings, bootstrap, traffic.generate(100))
        await folded(first, ends=ends_of(sent))
    finally:
        await first.abort()  # a crash: what was folded since the last batch is not on listing-stats
    again = traffic.rng.sample([r for r in sent if r.value is not None], 40)  # repeats of records folded before
    later = again + traffic.generate(200)
    traffic.rng.shuffle(later)
    sent += await produce(settings, bootstrap, later)
    second = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    async with running(second):
        assert second.counts["restores"] >= 1 and second.counts["remembered"] > 0
        await folded(second, ends=ends_of(sent))
    await assert_same_numbers(settings, bootstrap, stats_topic, traffic, sent)


async def test_members_joining_and_leaving_share_the_partitions_without_losing_a_record(
        bootstrap: str, settings: Settings) -> None:
    settings = own_settings(settings)
    stats_topic = await new_stats_topic(settings, bootstrap)
    traffic = Traffic(seed=4)
    first = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    second = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    await first.start()
    try:
        await asyncio.wait_for(first.ready.wait(), 20)
        sent = await produce(settings, bootstrap, traffic.generate(200))
        await folded(first, ends=ends_of(sent))
        await second.start()  # the group rebalances: the first publishes, keeps half and the second restores half
        production = asyncio.create_task(produce(settings, bootstrap, traffic.generate(200)))
        await asyncio.wait_for(second.ready.wait(), 20)
        deadline = time.monotonic() + 20
        while not (first.marks() and second.marks() and len(first.marks()) + len(second.marks()) == 12):
            assert time.monotonic() < deadline, (first.marks(), second.marks())
            await asyncio.sleep(0.05)
        sent += await production
        await folded(first, second, ends=ends_of(sent))
        await second.stop()  # it leaves: the first takes its partitions back from listing-stats
        sent += await produce(settings, bootstrap, traffic.generate(200))
        await folded(first, ends=ends_of(sent))
    finally:
        await second.stop()
        await first.stop()
    assert first.counts["restores"] > 12 and second.counts["restores"] > 0
    await assert_same_numbers(settings, bootstrap, stats_topic, traffic, sent)


class Refusing(Aggregator):
    """Snapshot writes refused by number: ``raise_at`` raise from ``send`` (the rest of that batch is not
    sent), ``fail_at`` are queued but their acknowledgement fails (the rest of the batch is written)."""

    def __init__(self, settings: Settings, *, bootstrap: str, stats_topic: str, raise_at: set[int],
                 fail_at: set[int]) -> None:
        super().__init__(settings, bootstrap=bootstrap, stats_topic=stats_topic, max_rows=7)  # batches in parts
        self.calls = 0
        self.raise_at = raise_at
        self.fail_at = fail_at

    async def _send(self, key: bytes, batch: SnapshotBatch) -> asyncio.Future[object]:
        self.calls += 1
        if self.calls in self.raise_at:
            raise KafkaError("refused by the test")
        if self.calls in self.fail_at:
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(KafkaError("not acknowledged (the test)"))
            return failed
        return await super()._send(key, batch)


async def test_a_refused_snapshot_write_neither_loses_nor_double_counts(bootstrap: str, settings: Settings) -> None:
    settings = own_settings(settings)
    stats_topic = await new_stats_topic(settings, bootstrap)
    traffic = Traffic(seed=3)
    agg = Refusing(settings, bootstrap=bootstrap, stats_topic=stats_topic, raise_at=set(), fail_at=set())
    sent: list[Sent] = []
    async with running(agg):
        for i in range(4):
            await round_trip(agg, settings, bootstrap, traffic.generate(150), sent)
            if i < 3:  # refuse writes of the batches to come, after some written
                calls = agg.calls
                agg.raise_at |= {calls + 3 + i} if i % 2 else set()
                agg.fail_at |= set() if i % 2 else {calls + 5, calls + 6 + i}
        # every refused write reached before the stop, and the folds it dropped restored and written again (a
        # write refused in the stop's last publish is the next owner's to redo: a restart, another test)
        while agg.calls <= max(agg.raise_at | agg.fail_at):
            await round_trip(agg, settings, bootstrap, traffic.generate(20), sent)
        await folded(agg, ends=ends_of(sent))
        await published(agg)
    assert agg.calls > max(agg.raise_at | agg.fail_at), "the test refuses writes it never reached"
    assert agg.counts["send_failures"] >= 3 and agg.counts["restores"] > len(agg.marks())
    await assert_same_numbers(settings, bootstrap, stats_topic, traffic, sent)


class FailingFolds(Aggregator):
    """The ``fail``-th fetch is folded half-way, then fetching a skipped record again fails (a broker restart)."""

    def __init__(self, settings: Settings, *, bootstrap: str, stats_topic: str, fail: int) -> None:
        super().__init__(settings, bootstrap=bootstrap, stats_topic=stats_topic)
        self.fetches = 0
        self.fail = fail

    async def _fold(self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.fetches += int(any(batch.values()))
        if self.fetches != self.fail:
            return await super()._fold(batch)
        await super()._fold({tp: records[: len(records) // 2] for tp, records in batch.items()})
        raise KafkaError("fetching a skipped record again failed (the test)")


async def test_a_fetch_folded_half_way_is_restored_not_lost(bootstrap: str, settings: Settings) -> None:
    settings = own_settings(settings)
    stats_topic = await new_stats_topic(settings, bootstrap)
    traffic = Traffic(seed=5)
    agg = FailingFolds(settings, bootstrap=bootstrap, stats_topic=stats_topic, fail=2)
    sent: list[Sent] = []
    async with running(agg):
        for _ in range(4):
            await round_trip(agg, settings, bootstrap, traffic.generate(100), sent)
    assert agg.counts["fold_failures"] == 1 and agg.counts["restores"] > len(agg.marks())
    await assert_same_numbers(settings, bootstrap, stats_topic, traffic, sent)


_DEAD_MEMBER = """
import asyncio, os, sys
from aiokafka import AIOKafkaConsumer

async def main() -> None:
    consumer = AIOKafkaConsumer("auctions", bootstrap_servers=sys.argv[1], group_id=sys.argv[2],
                                session_timeout_ms=30000, heartbeat_interval_ms=1000)
    await consumer.start()  # subscribed before the start: returns once assigned
    print("assigned", flush=True)
    os._exit(0)  # no LeaveGroup: a member that crashed

asyncio.run(main())
"""


async def test_a_member_that_died_without_leaving_does_not_hold_the_start(bootstrap: str, settings: Settings) -> None:
    """The group cannot assign while a member that died has not timed out (30 s here; the embedded noida never
    evicts it): ``start`` returns anyway, not ready. Before, aiokafka's ``start`` waited for the assignment, and a
    restarted worker's start waited with it, its agents stalled, and the commit-stall watchdog restarted it again
    (chaos t2 on noida)."""
    settings = own_settings(settings)
    stats_topic = await new_stats_topic(settings, bootstrap)
    agg = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", _DEAD_MEMBER, bootstrap, agg.group_id,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(dead.communicate(), 60)
    assert out.strip() == b"assigned"
    try:
        await asyncio.wait_for(agg.start(), 10)
        await asyncio.sleep(2.0)
        assert agg.running and not agg.ready.is_set() and agg.marks() == {}
    finally:
        await agg.abort()


async def test_an_aborted_member_leaves_its_group_at_once(bootstrap: str, settings: Settings) -> None:
    """What a worker's exit for a restart relies on (``Runtime.exit_for_restart``): ``abort`` leaves the group,
    so the other member is assigned everything without waiting for a session timeout (30 s here; never on
    the embedded noida, which does not evict a member that stopped heart-beating)."""
    settings = own_settings(settings).model_copy(update={"session_timeout_ms": 30000,
                                                         "heartbeat_interval_ms": 1000})
    stats_topic = await new_stats_topic(settings, bootstrap)
    first = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    second = Aggregator(settings, bootstrap=bootstrap, stats_topic=stats_topic)
    await first.start()
    try:
        await asyncio.wait_for(first.ready.wait(), 20)
        await second.start()
        deadline = time.monotonic() + 20
        while not (first.marks() and second.marks()):  # the partitions shared between the two
            assert time.monotonic() < deadline, (first.marks(), second.marks())
            await asyncio.sleep(0.05)
        await first.abort()
        t0 = time.monotonic()
        while len(second.marks()) < len(AGGREGATED_TOPICS) * settings.topic_partitions:
            assert time.monotonic() - t0 < 15.0, second.marks()
            await asyncio.sleep(0.1)
    finally:
        await first.abort()
        await second.stop()

