"""Feeds every worker's :class:`bidder.replica.state.BidderState` from the replicated topics.

A plain aiokafka consumer without a group, reading from the beginning, so a restart rebuilds the fold:

* every partition of the topics every worker needs whole (``bidder.replica.state.GLOBAL_TOPICS``: the catalog
  and what the aggregators and the bill agents publish), from the start;
* the worker's **own** partitions of ``billing``, ``orders`` and ``labels`` (:meth:`Replicator.own`: the partition
  numbers the worker group assigned it, which the worker passes in at every assignment; an agent about to
  decide on a partition adds it with :meth:`Replicator.add_own` first). A partition the worker gets again is
  re-read from the start (folding is idempotent); one it loses is no longer fetched, its fold is kept.

Catching up is measured against the larger of ``ListOffsets(latest)`` and the high watermark of the
fetch responses: the embedded Tansu broker answers ListOffsets wrongly after multi-record batches
(base offset of the last batch + 1), and Faust's own table recovery trusts it; the fetch high
watermark is right on both embedded brokers and on Kafka.

**Truncation.** A partition whose fetch high watermark stays below this replica's position lost
records this worker had already folded: the memory-only Tansu broker came back empty after a restart
(and keeps answering fetches past the end of the new log with no error and a small high watermark),
or, on Kafka, an unclean leader election truncated the log (there a fetch past the end gets
``OffsetOutOfRange`` and aiokafka resets to ``auto_offset_reset``, which is also the beginning). The
replica logs it, counts it (``truncations``) and re-reads that partition from the start, **keeping
its fold**: folding is idempotent (catalog upserts, outcomes by query id, ledger lines by click id,
conversions by order id; see :mod:`bidder.replica.state`), so spend it already knew is not forgotten and a
click the broker forgot cannot be charged against an emptied budget. The condition must hold for
``truncation_confirm_s``: right after a Kafka leader change the new leader's high watermark can lag
the old one's for a moment, and a false alarm would only cost a re-read.

**Skipped records.** A fetch that skips a record (the embedded Tansu broker does under concurrent
producers; see :mod:`bidder.replica.offset_gaps`) would leave a ledger line out of the fold: spend this worker
never learns of. Every offset jump is fetched again (:class:`streams.gap_repair.GapRepairer`) and what
is found folded before the record that revealed it, below the own-ledger mark too (folding is
idempotent). Compacted topics (the catalog) are not repaired: holes are normal there, a catalog of
100k listings would cost thousands of fetches at every start, and a listing or shop is written again
whenever it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from bidder.decoding import Limits
from bidder.replica.state import OWN_TOPICS, BidderState, FeatureSource
from bidder.settings import Settings
from bidder.topics import TOPICS
from streams.gap_repair import GapRepairer
from streams.tail import earliest_event_time, group_less_consumer, partitions_of
from streams.workarounds import fetches_sent, pace_consumer

__all__ = ["COPARTITIONED", "GROUP_INPUTS", "Replicator", "RoundObserver", "worker_state"]

GROUP_INPUTS: tuple[str, ...] = ("queries", "clicks", "purchases")
"""the topics the worker group's agents read: the group assigns their partition numbers"""
COPARTITIONED: tuple[str, ...] = (*GROUP_INPUTS, *OWN_TOPICS)
"""topics whose partition number p belongs to one worker (Faust assigns equal numbers of the inputs together)"""

log = logging.getLogger(__name__)



def worker_state(settings: Settings, *, features: FeatureSource = "copy") -> BidderState:
    """The empty state a worker (or a replica alone) folds the topics into, from its settings: rolling features
    from the aggregators' ``listing-stats`` (``"copy"``), or folded from the raw records (``"fold"``)."""
    limits = Limits(max_bytes=settings.max_message_bytes, max_candidates=settings.max_candidates,
                    max_age_s=settings.max_event_age_s, max_future_s=settings.max_event_future_s)
    return BidderState(half_life_s=settings.feature_half_life_s, click_window_s=settings.click_window_s,
                       attribution_window_s=settings.attribution_window_s, limits=limits, features=features)

class RoundObserver(Protocol):
    """Sees what the replica folds (``streams.harness.replica_probe``'s freshness meter): every record after
    its fold, and the end of each fetch round after the state took it in (``BidderState.flush``)."""

    def record(self, topic: str, partition: int, offset: int, value: bytes | None) -> None: ...

    def round_end(self) -> None: ...


class Replicator:
    """Background task folding replicated topics into ``state``."""

    def __init__(self, state: BidderState, settings: Settings, *, bootstrap: str | None,
                 clock: Callable[[], float] = time.time, observer: RoundObserver | None = None) -> None:
        self.state = state
        self.observer = observer
        self._settings = settings
        self._bootstrap = bootstrap
        self._clock = clock
        self._topics = state.replicated_topics
        self._own_topics = state.own_topics
        self._global = [t for t in self._topics if t not in self._own_topics]
        self._own: set[int] = set()
        """the own partition numbers held now"""
        self._own_lock = asyncio.Lock()
        self._assignments = 0
        """how many times the own partitions changed (a fetch round in progress then drops what it has left)"""
        self._partitions: dict[str, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied: dict[TopicPartition, int] = {}
        self._rounds = 0
        self._last_round = time.monotonic()
        self._round_event = asyncio.Event()
        self._round_timeout_ms = max(settings.fetch_max_wait_ms, settings.replica_fetch_floor_ms, 5)
        self.ready = asyncio.Event()
        self.records_by_topic: Counter[str] = Counter()
        """records folded per topic (:attr:`records` is their sum)"""
        self.value_bytes = 0
        """bytes of the record values fetched (what the replica takes in, read or skipped)"""
        self.fold_errors = 0
        """records whose fold raised (a defect: ``BidderState.apply`` counts the unreadable ones itself)"""
        self.truncations = 0
        """partitions found truncated below this replica's position and re-read from the start"""
        self.truncation_confirm_s = 2.0
        self._past_end_since: dict[TopicPartition, float] = {}
        self._compacted = {t for t in self._topics if t in TOPICS and TOPICS[t].cleanup_policy == "compact"}
        self.repairer = GapRepairer(settings, bootstrap=bootstrap, name="replica")

    async def start(self) -> None:
        consumer = group_less_consumer(self._settings, self._bootstrap, auto_offset_reset="earliest",
                                       max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        pace_consumer(consumer, floor_s=self._settings.replica_fetch_floor_ms / 1000.0)
        async with self._own_lock:  # an assignment arriving meanwhile waits for the consumer
            for topic in self._topics:
                self._partitions[topic] = len(await partitions_of(consumer, topic))
            if self._own_topics:
                await self._check_copartitioned(consumer)
            parts = [TopicPartition(topic, p) for topic in self._global for p in range(self._partitions[topic])]
            parts += [TopicPartition(topic, p) for topic in self._own_topics for p in sorted(self._own)
                      if p < self._partitions[topic]]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            self._applied = dict.fromkeys(parts, 0)
            self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="replicator")
        if "auctions" not in self._topics:  # the aggregated copy: how far back its features reach
            earliest = await earliest_event_time(self._settings, self._bootstrap, "auctions")
            if earliest is not None:
                self.state.history_begins(earliest)
        await self.wait_caught_up()
        # caught up: from now on one fetch per floor, data or not (a tailing replica fetched again after
        # every record; its CPU is per fetch); the backlog above was read at full speed
        pace_consumer(consumer, floor_s=self._settings.replica_fetch_floor_ms / 1000.0, busy=True)
        self.ready.set()
        log.info("replica ready: %s", dict(self.state.counts))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        await self.repairer.stop()

    async def _check_copartitioned(self, consumer: AIOKafkaConsumer) -> None:
        """Refuse to start on topics whose partition counts differ: a worker owns the partition numbers of
        ``queries``, ``clicks`` and ``purchases`` it is assigned, and reads the same numbers of its own topics."""
        counts = {t: len(await partitions_of(consumer, t)) for t in COPARTITIONED}
        if len(set(counts.values())) > 1:
            await consumer.stop()
            raise RuntimeError(f"these topics must have equal partition counts, and have {counts}: a worker "
                               "attributes a shop's orders and reads the ledger, orders and labels of the partition "
                               "numbers it is assigned (recreate them with one count)")

    @property
    def own_partitions(self) -> frozenset[int]:
        """The own partition numbers this replica reads ``billing``, ``orders`` and ``labels`` of."""
        return frozenset(self._own)

    async def own(self, partitions: Iterable[int]) -> None:
        """Read the own topics for exactly these partition numbers (the worker's assignment) from now on."""
        await self._set_own(set(partitions))

    async def add_own(self, partition: int) -> None:
        """Read the own topics for ``partition`` too (an agent about to decide on it; no-op when held)."""
        if partition not in self._own:
            await self._set_own(self._own | {partition})

    async def _set_own(self, wanted: set[int]) -> None:
        async with self._own_lock:
            consumer = self._consumer
            if consumer is None or wanted == self._own or not self._own_topics:
                self._own = wanted  # before the start: the start assigns them
                return
            own = {TopicPartition(t, p) for t in self._own_topics for p in wanted if p < self._partitions[t]}
            dropped = [tp for tp in self._applied if tp.topic in self._own_topics and tp not in own]
            added = [tp for tp in own if tp not in self._applied]
            for tp in dropped:
                del self._applied[tp]
                self._past_end_since.pop(tp, None)
            self.repairer.gaps.forget({(tp.topic, tp.partition) for tp in dropped})
            # assign() forgets every position: the partitions kept go on from what was folded
            consumer.assign([*self._applied, *added])
            for tp, applied in self._applied.items():
                consumer.seek(tp, applied)
            for tp in added:
                consumer.seek(tp, 0)
                self._applied[tp] = 0
            self._own = wanted
            self._assignments += 1
            log.info("replica: own partitions %s (+%d -%d topic partitions)", sorted(wanted), len(added), len(dropped))

    async def end_offset(self, topic: str, partition: int) -> int:
        """The end offset of any partition (a ListOffsets request; this replica need not read it)."""
        assert self._consumer is not None
        tp = TopicPartition(topic, partition)
        return int((await self._consumer.end_offsets([tp]))[tp])

    async def _fold_missed(self, tp: TopicPartition, offset: int, now: float) -> None:
        """Fold what a fetch skipped before ``offset`` (compacted topics have holes by design)."""
        if tp.topic not in self._compacted:
            for r in await self.repairer.missed_before(tp.topic, tp.partition, offset):
                self._fold(tp, r.offset, r.value, now, repaired=True)

    def _fold(self, tp: TopicPartition, offset: int, value: bytes | None, now: float, *,
              repaired: bool = False) -> None:
        try:
            self.state.apply(tp.topic, tp.partition, offset, value, now=now, repaired=repaired)
        except Exception:  # a fold defect must not stop the replica (and with it every agent)
            self.fold_errors += 1
            log.exception("replica: cannot fold %s[%d]@%d; skipped", tp.topic, tp.partition, offset)
        if self.observer is not None:
            self.observer.record(tp.topic, tp.partition, offset, value)

    def _flush(self) -> None:
        try:
            self.state.flush()
        except Exception:  # as a fold defect: the agents keep the features they had
            self.fold_errors += 1
            log.exception("replica: cannot take the listing-stats snapshots read; skipped")

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            # small rounds, yielding between them: folding is synchronous, and a 5000-record round
            # (a catalog at start, a backlog) held the event loop, and every query, for over a second
            # records wake getmany at once; the timeout only spaces out rounds that find nothing (at 10 ms, a
            # replica at 100 q/s ran 97 rounds a second, each a flush and a truncation check, for ~10 fetches)
            batches = await consumer.getmany(timeout_ms=self._round_timeout_ms, max_records=256)
            now = self._clock()
            assigned = self._assignments
            for tp, records in batches.items():
                for r in records:
                    if assigned == self._assignments:
                        await self._fold_missed(tp, r.offset, now)
                    if assigned != self._assignments:
                        break  # the own partitions changed meanwhile: each kept one was sought to what is folded
                    self._fold(tp, r.offset, r.value, now)
                    self._applied[tp] = r.offset + 1
                    self.records_by_topic[tp.topic] += 1
                    self.value_bytes += max(r.serialized_value_size, 0)
                await asyncio.sleep(0)
            self._flush()
            if self.observer is not None:
                self.observer.round_end()
            self._check_truncation(consumer)
            self._rounds += 1
            self._last_round = time.monotonic()
            self._round_event.set()
            self._round_event = asyncio.Event()

    def _check_truncation(self, consumer: AIOKafkaConsumer) -> None:
        """Re-read from the start every partition whose high watermark stayed below our position."""
        now = time.monotonic()
        for tp, applied in self._applied.items():
            hw = consumer.highwater(tp)
            if hw is None or hw >= applied:
                self._past_end_since.pop(tp, None)
                continue
            if now - self._past_end_since.setdefault(tp, now) < self.truncation_confirm_s:
                continue
            log.warning("replica: %s[%d] high watermark %d is below the %d records already folded: the log "
                        "was truncated (broker came back empty / unclean leader election); re-reading it "
                        "from the start and keeping the fold", tp.topic, tp.partition, hw, applied)
            del self._past_end_since[tp]
            consumer.seek(tp, 0)
            self.repairer.gaps.forget({(tp.topic, tp.partition)})
            self._applied[tp] = 0
            if tp.topic == "billing":
                # the fold skips ledger lines below this mark; the re-read must reach the new lines
                # (Ledger.apply ignores a click id already decided, so nothing is counted twice)
                self.state.ledger_applied.pop(tp.partition, None)
            self.truncations += 1

    def caught_up_to(self, targets: dict[TopicPartition, int]) -> bool:
        assert self._consumer is not None
        for tp, end in targets.items():
            hw = self._consumer.highwater(tp)
            if self._applied.get(tp, 0) < max(end, hw or 0):
                return False
        return True

    async def wait_caught_up(self, topics: Iterable[str] | None = None, *, partitions: dict[str, int] | None = None,
                             timeout_s: float = 30.0) -> bool:
        """Wait until everything written before this call to ``topics`` is folded in.

        ``partitions`` narrows a topic to one partition (``{"billing": 3}``). Returns False on timeout.
        """
        assert self._consumer is not None
        wanted = set(topics or self._topics)
        tps = [tp for tp in self._applied if tp.topic in wanted
               and (partitions is None or partitions.get(tp.topic, tp.partition) == tp.partition)]
        targets = await self._consumer.end_offsets(tps)
        truncations = self.truncations
        start_round = self._rounds
        deadline = time.monotonic() + timeout_s
        # two fetch rounds after the call guarantee a high watermark newer than the call
        while self._rounds < start_round + 2 or not self.caught_up_to(targets):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                behind = {f"{tp.topic}[{tp.partition}]": (self._applied.get(tp, 0), end, self._consumer.highwater(tp))
                          for tp, end in targets.items()}
                log.warning("replica not caught up after %.0fs: (folded, end, high watermark) %s", timeout_s, behind)
                return False
            if self.truncations != truncations:  # the old ends belong to a log that is gone
                truncations = self.truncations
                targets = await self._consumer.end_offsets(tps)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._round_event.wait(), timeout=remaining)
        return True

    @property
    def rounds(self) -> int:
        """Fetch rounds completed (each a ``getmany``, then the flush of what it took)."""
        return self._rounds

    @property
    def records(self) -> int:
        """Records folded since the start."""
        return sum(self.records_by_topic.values())

    def fetches(self) -> int:
        """Fetch requests sent to the broker since the start (each carries every assigned partition)."""
        return 0 if self._consumer is None else fetches_sent(self._consumer)

    def seconds_since_round(self) -> float:
        """How long since the fetch loop last completed (a stuck consumer stops completing)."""
        return time.monotonic() - self._last_round

    def lag(self) -> int:
        """Records known to exist but not yet folded (by the last fetch's high watermarks)."""
        if self._consumer is None:
            return 0
        return sum(max((self._consumer.highwater(tp) or 0) - n, 0) for tp, n in self._applied.items())
