"""Records a fetch skipped are fetched again from the broker and handed to the agents in order.

The embedded Tansu broker skips records under concurrent producers (``bidder/replica/offset_gaps.py``); that
cannot be produced on demand, so these tests drop records from what a real consumer read and let the
repair fetch them from the real broker (the session broker: noida-db, or ``BIDDER_KAFKA_BOOTSTRAP``).
A transaction marker is a real gap on every broker: the repair must report it absent and go on.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bidder.clicks.billing import Ledger
from bidder.decoding import Limits
from bidder.events import Listing, Shop, encode
from bidder.replica.state import BidderState
from bidder.settings import Settings
from streams.admin import create_topics
from streams.broker import embedded_broker
from streams.gap_repair import GapRepairer, RepairedEvent
from streams.kafka_config import aiokafka_admin_kwargs, aiokafka_consumer_kwargs, aiokafka_producer_kwargs
from streams.outputs import Outputs
from streams.replicator import Replicator
from streams.runtime import Runtime

pytestmark = pytest.mark.broker


async def new_topic(settings: Settings, bootstrap: str) -> str:
    name = f"gap-test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**aiokafka_admin_kwargs(settings, bootstrap=bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    return name


async def read_all(settings: Settings, bootstrap: str, topic: str, n: int) -> list[Any]:
    kwargs = aiokafka_consumer_kwargs(settings, bootstrap=bootstrap)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **kwargs)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    out: list[Any] = []
    deadline = time.monotonic() + 20
    try:
        while len(out) < n and time.monotonic() < deadline:
            out.extend((await consumer.getmany(tp, timeout_ms=200)).get(tp, []))
    finally:
        await consumer.stop()
    assert len(out) == n
    return out


def runtime(settings: Settings, bootstrap: str) -> Runtime:
    # with_skipped needs the settings, the repairer and the counters only
    return Runtime(settings=settings, state=None, replica=None, pipeline=None,  # type: ignore[arg-type]
                   limits=None, out=Outputs(settings=settings, topics={}), monitors=None,  # type: ignore[arg-type]
                   repairer=GapRepairer(settings, bootstrap=bootstrap, name="group"))


async def test_records_a_fetch_skipped_are_fetched_again_in_order(settings: Settings, bootstrap: str) -> None:
    topic = await new_topic(settings, bootstrap)
    producer = AIOKafkaProducer(acks="all", **aiokafka_producer_kwargs(settings, bootstrap=bootstrap))
    await producer.start()
    try:
        for i in range(12):
            await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i}".encode(), partition=0)
    finally:
        await producer.stop()
    records = await read_all(settings, bootstrap, topic, 12)
    rt = runtime(settings, bootstrap)
    try:
        # the consumer "skipped" 4 and 5 (one batch) and 9 (the next batch)
        first = await rt.with_skipped([SimpleNamespace(message=r) for r in records[:8] if r.offset not in (4, 5)])
        second = await rt.with_skipped([SimpleNamespace(message=r) for r in records[8:] if r.offset != 9])
    finally:
        assert rt.repairer is not None
        await rt.repairer.stop()
    got = first + second
    assert [e.message.offset for e in got] == list(range(12))
    assert [e.message.value for e in got] == [f"v{i}".encode() for i in range(12)]
    assert [e.message.key for e in got] == [f"k{i}".encode() for i in range(12)]
    assert {e.message.offset for e in got if isinstance(e, RepairedEvent)} == {4, 5, 9}
    assert all(e.message.topic == topic and e.message.partition == 0 for e in got)
    assert rt.counts["group_skipped_repaired"] == 3 and rt.counts["group_skipped_absent"] == 0
    assert rt.metrics.skipped_records.labels(consumer="group", outcome="repaired")._value.get() == 3


async def test_a_transaction_marker_is_a_gap_with_nothing_to_fetch(settings: Settings, bootstrap: str) -> None:
    topic = await new_topic(settings, bootstrap)
    kwargs = aiokafka_producer_kwargs(settings, bootstrap=bootstrap)
    tx = AIOKafkaProducer(transactional_id=f"gap-test-{uuid.uuid4().hex[:6]}", acks="all", **kwargs)
    await tx.start()
    try:
        async with tx.transaction():
            await tx.send_and_wait(topic, b"in-a-transaction", partition=0)
        async with tx.transaction():  # its own transaction: record at 2, marker at 3
            await tx.send_and_wait(topic, b"after-the-marker", partition=0)
        await tx.stop()
    except BaseException:
        await tx.stop()
        raise
    records = await read_all(settings, bootstrap, topic, 2)
    assert [r.offset for r in records] == [0, 2]  # the marker at 1 is never delivered
    rt = runtime(settings.model_copy(update={"gap_repair_wait_s": 0.3}), bootstrap)
    try:
        got = await rt.with_skipped([SimpleNamespace(message=r) for r in records])
    finally:
        assert rt.repairer is not None
        await rt.repairer.stop()
    assert [e.message.offset for e in got] == [0, 2]  # nothing invented, nothing held back
    assert rt.counts["group_skipped_absent"] == 1 and rt.counts["group_skipped_repaired"] == 0



async def test_the_replica_folds_a_skipped_ledger_line_fetched_again(settings: Settings) -> None:
    # a broker of its own: a ledger line on the session broker's ``billing`` would be folded by the
    # session worker's replica and spend a shop's budget behind other tests' backs
    if settings.kafka_bootstrap:
        pytest.skip("writes to billing: runs on an embedded broker only")
    with embedded_broker("noida") as broker:
        await create_topics(settings, bootstrap=broker.bootstrap)
        await replica_repairs_a_ledger_line(settings, broker.bootstrap)


async def replica_repairs_a_ledger_line(settings: Settings, bootstrap: str) -> None:

    t = time.time()
    state = BidderState(half_life_s=3600.0, click_window_s=600.0, attribution_window_s=300.0, limits=Limits())
    state.apply("shops", 0, 0, encode(Shop(7, 10.0, 0.05, t)), now=t)
    state.apply("listings", 0, 0, encode(Listing(103, 7, 20.0, 1, t)), now=t)
    click_id = f"c-gap-{uuid.uuid4().hex[:8]}"
    line = Ledger().decide(click_id=click_id, shop_id=7, listing_id=103, query_id="q-gap", user_id=5, slot=0,
                           ts=t, price=0.4, budget=10.0)
    producer = AIOKafkaProducer(acks="all", **aiokafka_producer_kwargs(settings, bootstrap=bootstrap))
    await producer.start()
    try:
        meta = await producer.send_and_wait("billing", orjson.dumps(line.to_dict()), key=b"7", partition=0)
    finally:
        await producer.stop()
    # this worker's own later lines already moved the mark past the skipped one
    state.ledger_applied[0] = meta.offset + 5
    replica = Replicator(state, settings, bootstrap=bootstrap)
    seen: list[Any] = []
    replica.repairer.on_repair = seen.append
    try:
        # the replica read offset - 1, then a fetch skipped the line at offset
        replica.repairer.gaps.expect("billing", 0, meta.offset)
        await replica._fold_missed(TopicPartition("billing", 0), meta.offset + 1, t)
    finally:
        await replica.stop()
    assert state.ledger.spend(7, line.day) == pytest.approx(0.4)
    assert state.clicks.attribute(user_id=5, listing_id=103, ts=t + 1) is not None
    assert len(seen) == 1 and len(seen[0].records) == 1 and seen[0].absent == 0
