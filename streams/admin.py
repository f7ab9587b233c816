"""Topic administration over the Kafka admin API: idempotent creation of every declared topic."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bidder.settings import Settings
from bidder.topics import topic_specs
from streams.kafka_config import aiokafka_admin_kwargs

__all__ = ["create_topics"]


async def create_topics(settings: Settings, *, bootstrap: str | None = None) -> dict[str, str]:
    """Create missing topics; returns ``{topic: "created" | "exists"}``. Safe to run any number of times."""
    admin = AIOKafkaAdminClient(**aiokafka_admin_kwargs(settings, bootstrap=bootstrap))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        result: dict[str, str] = {}
        wanted = topic_specs(default_partitions=settings.topic_partitions)
        new = [
            NewTopic(name=spec.name, num_partitions=parts, replication_factor=settings.topic_replication,
                     topic_configs=spec.configs())
            for spec, parts in wanted
            if spec.name not in existing
        ]
        for spec, _ in wanted:
            result[spec.name] = "exists" if spec.name in existing else "created"
        if new:
            try:
                resp = await admin.create_topics(new)
            except TopicAlreadyExistsError:  # a concurrent creator won the race
                return result
            for topic, code, *_ in getattr(resp, "topic_errors", ()):
                if code == TopicAlreadyExistsError.errno:
                    result[topic] = "exists"
                elif code != 0:
                    raise RuntimeError(f"creating topic {topic} failed with Kafka error code {code}")
        return result
    finally:
        await admin.close()
