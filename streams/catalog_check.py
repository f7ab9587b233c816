"""Validation of the catalog topics (``listings``, ``shops``): rejects go to ``dead-letters``.

Every worker already folds the catalog into its state through the replica; what is left is to tell
producers about bad catalog records exactly once. A plain aiokafka consumer group (``<app_id>-catalog``)
splits the partitions between workers, dead-letters each rejected record, waits for the broker's
acknowledgement, and only then commits. It runs outside Faust on purpose: a compacted catalog is a
backlog of tens of thousands of records at every start, and behind Faust's single consumer it held
the query partitions back for tens of seconds.

Its first pass over that backlog is start-up work: the worker waits for it (:meth:`wait_caught_up`)
before it says it is ready. Checked while queries were already arriving, the 30,300 records of the demo
catalog took ~1 s of CPU beside the first queries and cost them 300-500 ms each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from bidder.settings import Settings
from streams.kafka_config import aiokafka_consumer_kwargs
from streams.workarounds import pace_consumer

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
        self._assigned: asyncio.Queue[set[TopicPartition]] = asyncio.Queue()
        self.caught_up = asyncio.Event()
        """set once the partitions of the first assignment were read to their ends at assignment"""

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            group_id=f"{self._settings.app_id}-catalog", enable_auto_commit=False,
            auto_offset_reset="earliest", **aiokafka_consumer_kwargs(self._settings, bootstrap=self._bootstrap))
        assigned = self._assigned

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                return None

            async def on_partitions_assigned(self, tps: Any) -> None:
                assigned.put_nowait(set(tps))

        await self._consumer.start()
        # after the start: aiokafka's ``start`` of a consumer subscribed before it waits for the first
        # assignment, which a member that died without leaving delays (``streams.aggregator.Aggregator.start``)
        self._consumer.subscribe(["listings", "shops"], listener=Listener())
        pace_consumer(self._consumer, floor_s=self._settings.replica_fetch_floor_ms / 1000.0)
        self._task = asyncio.create_task(self._run(), name="catalog-check")

    async def wait_caught_up(self, *, timeout_s: float = 60.0) -> bool:
        """Wait for the first pass over the catalog backlog (False on timeout)."""
        try:
            await asyncio.wait_for(self.caught_up.wait(), timeout_s)
        except TimeoutError:
            log.warning("catalog check not caught up after %.0fs; going on", timeout_s)
            return False
        return True

    async def _check_caught_up(self, consumer: AIOKafkaConsumer, targets: dict[TopicPartition, int]) -> None:
        if not targets:
            self.caught_up.set()
            return
        for tp, end in targets.items():
            if tp in consumer.assignment() and await consumer.position(tp) < end:
                return
        log.info("catalog check caught up: %d records checked, ends %s", self.records,
                 {f"{tp.topic}[{tp.partition}]": end for tp, end in targets.items()})
        self.caught_up.set()

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        targets: dict[TopicPartition, int] | None = None
        while True:
            if not self.caught_up.is_set():
                while not self._assigned.empty():
                    tps = self._assigned.get_nowait()
                    targets = {tp: int(o) for tp, o in (await consumer.end_offsets(list(tps))).items()}
                if targets is not None:
                    await self._check_caught_up(consumer, targets)
            batches = await consumer.getmany(timeout_ms=500, max_records=2000)
            for records in batches.values():
                for i, r in enumerate(records, 1):
                    await self._check(r)
                    if i % 100 == 0:
                        # checking is synchronous: a 2,000-record batch would hold the event loop, and every
                        # query with it, for the whole batch (catalog records arrive in bulk at any time)
                        await asyncio.sleep(0)
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
