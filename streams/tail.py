"""Reading topics without a consumer group: a consumer on every partition, from the end or the beginning.
The demo's monitor and accounting, ``bidder drift watch``, dataset freezing and the benchmarks read this way;
the replica and the aggregator's restores build theirs with :func:`group_less_consumer` and
:func:`partitions_of`."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bidder.settings import Settings
from streams.kafka_config import aiokafka_consumer_kwargs
from streams.workarounds import refresh_metadata

__all__ = ["group_less_consumer", "partitions_of", "tail_consumer"]


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
