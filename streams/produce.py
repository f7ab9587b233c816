"""``bidder produce``: lines of a file onto a topic, keyed by the event's key field when it has one."""

from __future__ import annotations

from typing import Any

import orjson

from bidder.settings import Settings
from bidder.topics import TOPICS
from streams.producer import EventProducer

__all__ = ["key_for_line", "produce_lines"]


def key_for_line(topic: str, line: bytes) -> bytes | None:
    """The record key a well-formed line would have; ``None`` when it cannot be read (sent anyway)."""
    spec = TOPICS.get(topic)
    try:
        obj: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if spec is None or not isinstance(obj, dict) or obj.get(spec.key) is None:
        return None
    return str(obj[spec.key]).encode()


async def produce_lines(settings: Settings, *, bootstrap: str, topic: str, lines: list[bytes]) -> int:
    async with EventProducer(settings, bootstrap=bootstrap) as producer:
        for line in lines:
            if line.strip():
                await producer.send_raw(topic, key_for_line(topic, line), line)
    return sum(1 for line in lines if line.strip())
