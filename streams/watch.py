"""``bidder drift watch``: follow ``drift-alerts`` and print one line per event."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from bidder.monitoring.drift import DriftEvent
from bidder.settings import Settings
from streams.tail import tail_consumer

__all__ = ["watch_drift_alerts"]


async def watch_drift_alerts(settings: Settings, *, bootstrap: str, from_beginning: bool, seconds: float | None,
                             echo: Callable[[str], None]) -> int:
    """Print alerts as they arrive; returns how many were printed."""
    consumer = await tail_consumer(settings, bootstrap, ["drift-alerts"], from_beginning=from_beginning)
    deadline = None if seconds is None else time.monotonic() + seconds
    n = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=250)
            for records in batches.values():
                for r in records:
                    try:
                        echo(DriftEvent.from_dict(orjson.loads(r.value)).describe())
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        echo(f"unreadable drift alert at offset {r.offset}: {r.value[:200]!r}")
                    n += 1
        return n
    finally:
        await consumer.stop()
