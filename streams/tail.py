"""Reading topics without a consumer group: a consumer on every partition, from the end or the beginning.
The demo's monitor and accounting, ``bidder drift watch``, dataset freezing and the benchmarks read this way;
the replica and the aggregator's restores build theirs with :func:`group_less_consumer` and
:func:`partitions_of`."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bidder.settings import Settings
from streams.kafka_config import aiokafka_consumer_kwargs
from streams.workarounds import refresh_metadata

__all__ = ["earliest_event_time", "group_less_consumer", "partitions_of", "tail_consumer"]


def group_less_consumer(settings: Settings, bootstrap: str | None, **extra: Any) -> AIOKafkaConsumer:
    """A consumer without a group (nothing committed, no heartbeats), not started; ``extra`` adds aiokafka
    options (``auto_offset_reset``, ``max_partition_fetch_bytes``)."""
    kwargs = aiokafka_consumer_kwargs(settings, bootstrap=bootstrap)
    kwargs.pop("session_timeout_ms", None)
    kwargs.pop("heartbeat_interval_ms", None)
    return AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **kwargs, **extra)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str, *, tries: int = 50) -> list[int]:
    """The partitions of ``topic``, waiting (``tries`` x 0.1 s) for metadata that a just-created topic or a
    just-restarted broker may not have yet; RuntimeError when the topic does not exist."""
    for _ in range(tries):
        ids = consumer.partitions_for_topic(topic)
        if ids:
            return sorted(ids)
        await refresh_metadata(consumer)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic!r} does not exist; run `bidder topics create` first")


async def tail_consumer(settings: Settings, bootstrap: str | None, topics: list[str],
                        *, from_beginning: bool = False) -> AIOKafkaConsumer:
    """A group-less consumer on every partition of ``topics``, at their end (or beginning)."""
    consumer = group_less_consumer(settings, bootstrap)
    await consumer.start()
    parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(parts)
    if from_beginning:
        await consumer.seek_to_beginning(*parts)
    else:
        await consumer.seek_to_end(*parts)
    return consumer


async def earliest_event_time(settings: Settings, bootstrap: str | None, topic: str, *,
                              timeout_s: float = 10.0) -> float | None:
    """The earliest event time (``ts``) among the first readable records of each partition of ``topic``, or
    None when it has none (or nothing readable came within ``timeout_s``): how far back what was folded from
    it reaches, read once instead of the whole topic."""
    consumer = group_less_consumer(settings, bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        begins, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
        waiting = {tp for tp in parts if ends[tp] > begins[tp]}
        earliest: float | None = None
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(*waiting, timeout_ms=200, max_records=50)).items():
                for r in records:
                    try:
                        ts = float(orjson.loads(r.value or b"null")["ts"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue  # an unreadable record: the next one of the partition
                    if math.isfinite(ts):
                        earliest = ts if earliest is None else min(earliest, ts)
                        waiting.discard(tp)
                        break
                if records and records[-1].offset + 1 >= ends[tp]:
                    waiting.discard(tp)
        return earliest
    finally:
        await consumer.stop()
