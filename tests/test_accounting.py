"""Every query of a run is accounted for from the topics: answered, dead-lettered, in flight or lost."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from bidder.decoding import Rejection
from bidder.settings import Settings
from streams.accounting import account_queries, topic_marks
from streams.deadletter import dead_letter_record
from streams.kafka_config import aiokafka_consumer_kwargs, aiokafka_producer_kwargs

pytestmark = pytest.mark.broker


async def _scenario(settings: Settings, bootstrap: str, *, leave_uncommitted: bool) -> tuple[int, ...]:
    group = f"acct-{uuid.uuid4().hex[:8]}"
    marks = await topic_marks(settings, bootstrap)
    producer = AIOKafkaProducer(**aiokafka_producer_kwargs(settings, bootstrap=bootstrap))
    await producer.start()
    run = uuid.uuid4().hex[:6]
    try:
        sent = [await producer.send_and_wait("queries", b"{}", key=f"{run}-{i}".encode()) for i in range(3)]
        # the first query answered, the second dead-lettered, the third neither
        await producer.send_and_wait("auctions", orjson.dumps({"query_id": f"{run}-0"}), key=f"{run}-0".encode())
        await producer.send_and_wait("dead-letters", dead_letter_record(
            Rejection("invalid_json", "test"), topic="queries", partition=sent[1].partition, offset=sent[1].offset,
            key=f"{run}-1".encode(), value=b"{}", ts=0.0), key=b"queries")
    finally:
        await producer.stop()
    # the group has taken everything on `queries` but, optionally, the third query
    kwargs = aiokafka_consumer_kwargs(settings, bootstrap=bootstrap)
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **kwargs)
    await consumer.start()
    try:
        consumer.assign([TopicPartition("queries", p) for p in sorted(consumer.partitions_for_topic("queries") or ())])
        tps = [TopicPartition("queries", p) for p in sorted(consumer.partitions_for_topic("queries") or ())]
        ends = await consumer.end_offsets(tps)
        third = TopicPartition("queries", sent[2].partition)
        offsets = {tp: OffsetAndMetadata(ends[tp] - (1 if leave_uncommitted and tp == third else 0), "")
                   for tp in tps}
        await consumer.commit(offsets)
    finally:
        await consumer.stop()
    a = await account_queries(settings, bootstrap, marks=marks, sent=3, group=group,
                              ids={f"{run}-{i}" for i in range(3)})
    return a.sent, a.answered, a.dead_lettered, a.in_flight, a.lost


def test_an_unanswered_query_behind_the_committed_offset_is_in_flight(settings: Settings, bootstrap: str) -> None:
    assert asyncio.run(_scenario(settings, bootstrap, leave_uncommitted=True)) == (3, 1, 1, 1, 0)


def test_an_unanswered_query_the_group_has_passed_is_lost(settings: Settings, bootstrap: str) -> None:
    assert asyncio.run(_scenario(settings, bootstrap, leave_uncommitted=False)) == (3, 1, 1, 0, 1)
