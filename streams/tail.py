"""Reading topics without a consumer group: a consumer on every partition, from the end or the beginning.
The demo's monitor and accounting, ``bidder drift watch``, dataset freezing and the benchmarks read this way."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from bidder.settings import Settings
from streams.kafka_config import aiokafka_consumer_kwargs

__all__ = ["tail_consumer"]


async def tail_consumer(settings: Settings, bootstrap: str | None, topics: list[str],
                        *, from_beginning: bool = False) -> AIOKafkaConsumer:
    """A group-less consumer on every partition of ``topics``, at their end (or beginning)."""
    kwargs = aiokafka_consumer_kwargs(settings, bootstrap=bootstrap)
    kwargs.pop("session_timeout_ms", None)
    kwargs.pop("heartbeat_interval_ms", None)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **kwargs)
    await consumer.start()
    parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(parts)
    if from_beginning:
        await consumer.seek_to_beginning(*parts)
    else:
        await consumer.seek_to_end(*parts)
    return consumer
