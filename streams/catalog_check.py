"""Validation of the catalog topics (``listings``, ``shops``): rejects go to ``dead-letters``.

Every worker already folds the catalog into its state through the replica; what is left is to tell
producers about bad catalog records exactly once. A plain aiokafka consumer group (``<app_id>-catalog``)
splits the partitions between workers, dead-letters each rejected record, waits for the broker's
acknowledgement, and only then commits. It runs outside Faust on purpose: a compacted catalog is a
backlog of tens of thousands of records at every start, and behind Faust's single consumer it held
the query partitions back for tens of seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

from bidder.kafka_config import aiokafka_consumer_kwargs
from bidder.settings import Settings

__all__ = ["CatalogChecker"]

log = logging.getLogger(__name__)


class CatalogChecker:
    """Group consumer over the catalog topics; ``check(record)`` dead-letters a bad one (awaited)."""

    def __init__(self, settings: Settings, *, bootstrap: str | None,
                 check: Callable[[Any], Awaitable[None]]) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._check = check
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.records = 0

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            "listings", "shops", group_id=f"{self._settings.app_id}-catalog", enable_auto_commit=False,
            auto_offset_reset="earliest", **aiokafka_consumer_kwargs(self._settings, bootstrap=self._bootstrap))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="catalog-check")

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batches.values():
                for r in records:
                    await self._check(r)
                self.records += len(records)
            if batches:
                await consumer.commit()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
