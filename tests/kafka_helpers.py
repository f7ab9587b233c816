"""Reading topics in tests: everything from the beginning until a condition holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

from bidder.settings import Settings
from streams.tail import tail_consumer


async def read_until(settings: Settings, bootstrap: str, topics: list[str],
                     done: Callable[[list[tuple[str, Any, bytes | None]]], bool], *,
                     timeout_s: float = 30.0) -> list[tuple[str, Any, bytes | None]]:
    """(topic, decoded JSON object or None, key) of every record, from the start, until ``done`` or timeout."""
    consumer = await tail_consumer(settings, bootstrap, topics, from_beginning=True)
    out: list[tuple[str, Any, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    try:
                        value = orjson.loads(r.value) if r.value else None
                    except orjson.JSONDecodeError:
                        value = None
                    if not isinstance(value, dict):  # other tests write non-objects on purpose
                        value = None
                    out.append((tp.topic, value, r.key))
            if done(out):
                return out
        return out
    finally:
        await consumer.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
