"""Fetch again the records a reader skipped (:mod:`bidder.replica.offset_gaps` names the holes).

One plain aiokafka consumer without a group, assigned one partition at a time: it seeks to the first
missing offset and reads up to the end of the hole, again every 50 ms until ``wait_s`` has passed,
because on the embedded Tansu broker the skipped record becomes visible a moment after the later
one. What it finds is handed back in offset order; what it never finds is ``absent``: on Kafka that
is a transaction marker or a record compacted away (nothing to do), on Tansu a record the broker
acknowledged and lost. Compacted topics are not repaired: holes are normal there (the caller skips
them).

Each reader owns one repairer and asks it, for every record it reads, what was skipped before it
(:meth:`GapRepairer.missed_before`): normally nothing, one dict lookup. Used by the Faust agents
(:mod:`streams.agents`), the replica (:mod:`streams.replicator`), the demo monitor, ``dataset freeze`` and
the chaos harness's readers (:mod:`streams.harness.chaos`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from bidder.replica.offset_gaps import Gap, GapTracker
from bidder.settings import Settings
from streams.kafka_config import aiokafka_consumer_kwargs

__all__ = ["GapRepairer", "Repair", "RepairedEvent", "RepairedMessage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RepairedMessage:
    """The fields of a Faust ``Message`` the agents read, for a record fetched by the repairer."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> RepairedMessage:
        return cls(record.topic, record.partition, record.offset, record.key, record.value)


@dataclass(frozen=True, slots=True)
class RepairedEvent:
    """Stands in for a Faust ``EventT`` in a batch handed to an agent's handler."""

    message: RepairedMessage


@dataclass
class Repair:
    """What one repair of a :class:`Gap` found."""

    gap: Gap
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    absent: int = 0
    """offsets of the gap never found"""
    absent_sample: list[int] = field(default_factory=list)
    attempts: int = 0


class GapRepairer:
    """Re-reads skipped offset ranges with its own consumer (started on first use).

    ``gaps`` follows the offsets its reader delivered (the reader ``forget``s partitions whose
    assignment changed); ``wait_s`` defaults to ``settings.gap_repair_wait_s``; ``on_repair`` is told
    of every repair (the worker counts them in its metrics)."""

    def __init__(self, settings: Settings, *, bootstrap: str | None, name: str, wait_s: float | None = None) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self.name = name
        self.wait_s = settings.gap_repair_wait_s if wait_s is None else wait_s
        self.gaps = GapTracker()
        self.on_repair: Callable[[Repair], None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self.repaired = 0
        """records fetched again and handed back"""
        self.absent = 0
        """offsets never found (a transaction marker, a compacted record, a record the broker lost)"""

    async def _ensure(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            kwargs = aiokafka_consumer_kwargs(self._settings, bootstrap=self._bootstrap)
            for k in ("session_timeout_ms", "heartbeat_interval_ms", "fetch_max_wait_ms"):
                kwargs.pop(k, None)
            consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                        fetch_max_wait_ms=50, **kwargs)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def missed_before(self, topic: str, partition: int, offset: int) -> list[ConsumerRecord[bytes, bytes]]:
        """The records a fetch skipped before the one at ``offset`` (fetched again), in offset order."""
        gap = self.gaps.update(topic, partition, offset)
        return [] if gap is None else (await self.fetch(gap)).records

    async def fetch(self, gap: Gap) -> Repair:
        """The records of ``gap`` the broker holds, trying again until ``wait_s`` has passed."""
        async with self._lock:
            consumer = await self._ensure()
            tp = TopicPartition(gap.topic, gap.partition)
            consumer.assign([tp])
            found: dict[int, ConsumerRecord[bytes, bytes]] = {}
            deadline = time.monotonic() + self.wait_s
            repair = Repair(gap)
            first_missing = gap.start
            while True:
                while first_missing < gap.end and first_missing in found:
                    first_missing += 1
                if first_missing >= gap.end:
                    break
                repair.attempts += 1
                consumer.seek(tp, first_missing)
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=200, max_records=max(gap.size, 1))
                    records = batch.get(tp, [])
                    for r in records:
                        if gap.start <= r.offset < gap.end:
                            found[r.offset] = r
                    if not records or await consumer.position(tp) >= gap.end:
                        break
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
            repair.records = [found[o] for o in sorted(found)]
            repair.absent = gap.size - len(found)
            repair.absent_sample = [o for o in range(gap.start, min(gap.end, gap.start + 1000))
                                    if o not in found][:10]
        self.repaired += len(repair.records)
        self.absent += repair.absent
        log.warning("%s: %s[%d] offsets %d..%d were skipped by a fetch; %d fetched again, %d absent %s "
                    "(%d attempts)", self.name, gap.topic, gap.partition, gap.start, gap.end - 1,
                    len(repair.records), repair.absent, repair.absent_sample, repair.attempts)
        if self.on_repair is not None:
            self.on_repair(repair)
        return repair

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
