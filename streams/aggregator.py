"""The aggregator: folds ``auctions``, ``billing`` and ``labels`` once and publishes ``listing-stats``.

A plain aiokafka consumer group (``<app_id>-aggregator``) splits the source partitions between its members;
each member keeps one :class:`~bidder.replica.aggregation.SourceFold` per source partition it owns and, at most
every ``aggregate_interval_ms``, writes the listings each fold changed to ``listing-stats``, columnar
(:class:`~bidder.replica.aggregation.SnapshotBatch`: one record per fold and interval, in parts of ``MAX_ROWS``).

**Compaction.** A record per listing made each outcome of 24 winners over a large catalog ~23 records (the
aggregator spent ~0.54 ms of CPU per outcome writing them, and every worker read them all). Batches are few
records, but a compacted topic keeps the last record per key, and a batch holds only what changed. So every
``checkpoint_every`` batches (``aggregate_checkpoint_s``) a fold writes all its listings, in parts keyed by
``listing_id`` modulo a power of two (``auctions:2:c4.1``: the next checkpoint replaces each part), and
between checkpoints its batches go to a ring of ``2 * checkpoint_every + 1`` keys (``auctions:2:d17.0``): a
batch is replaced only after a complete checkpoint that holds its listings was written. A fold's first batch
(new, or restored) is a checkpoint, so a new owner's ring never replaces its predecessor's batches before that.
What a reader finds, compacted or not, holds the latest state of every listing.

The snapshots are the state: no offsets are committed, a member that is
given a partition rebuilds its fold from ``listing-stats`` by the resume protocol of
:mod:`bidder.replica.aggregation` (read the topic back, ``SourceFold.restore``, ``remember`` a window of records
before ``resume_from()``, fold on from there).

**Where restores run.** aiokafka stops the member's heartbeats while ``on_partitions_assigned`` runs (they
restart after the callback), so a restore there that outlasts ``session_timeout_ms`` (reading a large
``listing-stats``) would get the member evicted and the group would rebalance again. The listener only notes the
new partitions and pauses them; the fetch loop restores them (one read of ``listing-stats`` for all of them),
seeks each to its ``resume_from()`` and resumes it. ``ready`` is set once the first assignment is restored.

**Rebalances while a batch is in flight.** Folding and publishing run under one lock, which both listener
callbacks take too. ``on_partitions_revoked`` publishes what the folds hold (and waits for the acknowledgements)
and parks them; ``on_partitions_assigned`` takes back a parked fold of a partition it gets again (eager
rebalancing: no one else folded it meanwhile) and seeks it to the fold's mark. A batch fetched before a
rebalance is dropped (every partition assigned is sought again, so its records come back).

**Acknowledged batches.** Each publish sends a fold's batch and waits for every acknowledgement before that
fold sends again: only the last batch written can be incomplete, as the protocol requires. A batch that fails
(an error from ``send`` or from an acknowledgement) leaves the fold ahead of the topic, and the fold's dirty set
is gone with the batch: the fold is dropped, its partition paused, and it is restored from ``listing-stats``
like a newly assigned one (the failed batch is the newest on the topic, so the restore resumes at its ``since``
and ``applied`` skips what did land). A restore that fails is retried every second, the partition paused.

**Skipped records.** A record a fetch skipped (the embedded Tansu broker does under concurrent producers) and
fetched later would be below the fold's mark and lost, so every record is first checked with
:meth:`streams.gap_repair.GapRepairer.missed_before` and what was skipped is folded before it.

**Limits.** One writer per source partition is assumed: a member evicted while still running (a long pause)
keeps writing until it notices, beside the new owner (fencing would need transactions). A snapshot write that
the broker appends after its send was reported failed (it cannot, once aiokafka has given up on the batch)
would land after the restored fold's newer one and win compaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord

from bidder.replica.aggregation import AGGREGATED_TOPICS, ListingSnapshot, SnapshotBatch, Source, SourceFold
from bidder.settings import Settings
from streams.gap_repair import GapRepairer
from streams.kafka_config import aiokafka_consumer_kwargs, aiokafka_producer_kwargs
from streams.tail import group_less_consumer, partitions_of
from streams.workarounds import pace_consumer

__all__ = ["STATS_TOPIC", "Aggregator", "run_aggregator"]

log = logging.getLogger(__name__)

STATS_TOPIC = "listing-stats"
_FETCH_RECORDS = 256
"""records per fetch round: folding is synchronous and the aggregator may share the event loop with queries"""
_RESTORE_RETRY_S = 1.0
MAX_ROWS = 2_000
"""listings per ``listing-stats`` record (72 bytes each: 144 kB, under every broker's default message limit)"""


def checkpoint_every(settings: Settings) -> int:
    """Batches between two checkpoints of a fold (``aggregate_checkpoint_s`` over the publish interval)."""
    return max(1, math.ceil(settings.aggregate_checkpoint_s * 1000.0 / settings.aggregate_interval_ms))


def record_keys(batch: SnapshotBatch, *, slot: int | None, max_rows: int = MAX_ROWS
                ) -> list[tuple[bytes, SnapshotBatch]]:
    """The records a batch is written as. A checkpoint (``slot`` None) in parts by ``listing_id`` modulo a
    power of two, each keyed by that part (``auctions:2:c4.1``): the next checkpoint replaces it under
    compaction. A batch between checkpoints in parts of ``max_rows``, keyed by its ``slot`` of the ring
    (``auctions:2:d17.0``): the batch ``2 * checkpoint_every`` later replaces it, after a checkpoint holds it.

    >>> import numpy as np
    >>> b = SnapshotBatch("auctions", 2, 60.0, 9, 4, np.arange(5), np.arange(5), np.zeros((5, 7)))
    >>> [k.decode() for k, _ in record_keys(b, slot=None, max_rows=2)]
    ['auctions:2:c4.0', 'auctions:2:c4.1', 'auctions:2:c4.2', 'auctions:2:c4.3']
    >>> [k.decode() for k, _ in record_keys(b, slot=7, max_rows=2)]
    ['auctions:2:d7.0', 'auctions:2:d7.1', 'auctions:2:d7.2']
    """
    head = f"{batch.topic}:{batch.partition}"
    if slot is not None:
        return [(f"{head}:d{slot}.{j}".encode(), part) for j, part in enumerate(batch.parts(max_rows))]
    n = 1
    while n * max_rows < len(batch):
        n *= 2
    by_part = batch.listing_ids % n
    return [(f"{head}:c{n}.{i}".encode(), batch.take(by_part == i)) for i in range(n) if (by_part == i).any()]


class Aggregator:
    """One member of the aggregator group: folds the source partitions it owns into ``listing-stats``.

    ``counts``: ``records`` folded, ``publish_rounds`` (what was folded before one began is written when it
    is counted, or its fold is being restored), ``repaired`` (skipped by a fetch, fetched again), ``discarded`` (fetched
    across a rebalance or for a partition being restored: fetched again), ``batches`` and ``snapshots_sent``
    (acknowledged), ``send_failures`` (batches), ``restores`` (source partitions rebuilt from ``listing-stats``),
    ``refolds`` (rebuilt from offset 0: snapshots of another half-life), ``restore_failures``,
    ``stats_read``, ``stats_unreadable``, ``stats_tombstones`` (``listing-stats`` records read by restores),
    ``remembered`` (records re-read only for their keys). The folds' own counts (repeats, unreadable records)
    are in :attr:`fold_counts`.
    """

    def __init__(self, settings: Settings, *, bootstrap: str | None, clock: Callable[[], float] = time.time,
                 stats_topic: str = STATS_TOPIC, max_rows: int = MAX_ROWS) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._clock = clock
        self.stats_topic = stats_topic
        self.group_id = f"{settings.app_id}-aggregator"
        self.interval_s = settings.aggregate_interval_ms / 1000.0
        self.checkpoint_every = checkpoint_every(settings)
        self.max_rows = max_rows
        self._batches_since_checkpoint: dict[TopicPartition, int] = {}
        """per fold: batches written since its last checkpoint (absent: its next batch is one)"""
        self._ring: dict[TopicPartition, int] = {}
        """per fold: the ring slot of its last batch between checkpoints"""
        self.remember_records = settings.aggregate_remember_records
        self.counts: Counter[str] = Counter()
        self.ready = asyncio.Event()
        """set once the partitions of the first assignment are restored"""
        self.repairer = GapRepairer(settings, bootstrap=bootstrap, name="aggregator")
        self._folds: dict[TopicPartition, SourceFold] = {}
        self._parked: dict[TopicPartition, SourceFold] = {}
        """folds published and set aside by a revoke, taken back if the assignment that follows gives them back"""
        self._truncated: set[TopicPartition] = set()
        """source partitions found truncated below their fold's mark (logged once)"""
        self._unrestored: set[TopicPartition] = set()
        """assigned partitions without a fold yet (paused)"""
        self._retired: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        self._generation = 0
        """bumped by each rebalance callback: a batch fetched before one is dropped"""
        self._last_publish = -math.inf
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        """what ended the fold loop other than :meth:`stop` (a defect), once stopped"""

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start joining the group and folding; returns before the first assignment (``ready`` says when it is
        restored)."""
        settings = self._settings
        # not idempotent, like the worker's Faust producer: a batch written twice by a retry changes nothing (the
        # newest offset per listing wins), and the embedded Tansu refuses aiokafka's InitProducerId
        self._producer = AIOKafkaProducer(acks="all", enable_idempotence=False,
                                          **aiokafka_producer_kwargs(settings, bootstrap=self._bootstrap))
        await self._producer.start()
        consumer = AIOKafkaConsumer(group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                                    **aiokafka_consumer_kwargs(settings, bootstrap=self._bootstrap))
        self._consumer = consumer
        await consumer.start()
        # subscribed after the start: aiokafka's ``start`` waits for the first assignment of a consumer
        # subscribed before it, and a group that cannot assign (the embedded noida never evicts a member that
        # exited without leaving: chaos t2) would hold the worker's start, its replica and every agent
        # waiting on it, until the commit-stall watchdog restarted the worker, in a loop. The fold loop
        # waits for the assignment instead (``ready``).
        consumer.subscribe(list(AGGREGATED_TOPICS), listener=_Listener(self))
        # what is folded waits for the next publish anyway: fetching more often than twice an interval only costs
        # fetch rounds (the embedded noida answers every fetch at once)
        pace_consumer(consumer, floor_s=max(settings.replica_fetch_floor_ms / 1000.0, self.interval_s / 2))
        self._task = asyncio.create_task(self._run(), name="aggregator")

    async def stop(self) -> None:
        """Publish what the folds hold (waiting for the acknowledgements), leave the group, close."""
        if self._task is not None:
            async with self._lock:  # not in the middle of a batch
                self._task.cancel()
            await self._reap()
            async with self._lock:
                for tp in await self._publish(self._folds):
                    log.error("aggregator: the last snapshots of %s[%d] were not all written; the next owner "
                              "resumes before them", tp.topic, tp.partition)
        await self._close()

    async def abort(self) -> None:
        """Stop at once, publishing nothing more, and leave the group: on ``listing-stats`` what a crash leaves behind
        (tests model one with it); the group reassigns at once (a worker exiting for a restart)."""
        if self._task is not None:
            self._task.cancel()
            await self._reap()
        await self._close()

    async def _reap(self) -> None:
        assert self._task is not None
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        except Exception as e:
            log.exception("aggregator: the fold loop had failed")
            self.failure = e
        self._task = None

    async def _close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        await self.repairer.stop()

    @property
    def running(self) -> bool:
        """False once the fold loop has ended (it only ends by :meth:`stop` or by a defect: :attr:`failure`)."""
        return self._task is not None and not self._task.done()

    @property
    def ended(self) -> bool:
        """The fold loop ended without :meth:`stop` (a defect)."""
        return self._task is not None and self._task.done() and not self._task.cancelled()

    def ended_by(self) -> BaseException | None:
        """What ended the fold loop (None: cancelled, or still running)."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    async def wait(self) -> None:
        """Until the fold loop ends (what ended it is kept in :attr:`failure` by :meth:`stop`)."""
        if self._task is not None:
            await asyncio.wait([self._task])

    # -- what it holds -----------------------------------------------------------------------------
    @property
    def fold_counts(self) -> Counter[str]:
        """The folds' counts (``<topic>_repeated``, ``<topic>_unreadable``, ``below_mark``), dropped folds too."""
        total = Counter(self._retired)
        for fold in self._folds.values():
            total.update(fold.counts)
        return total

    @property
    def repeats(self) -> int:
        return sum(n for k, n in self.fold_counts.items() if k.endswith("_repeated"))

    @property
    def unreadable(self) -> int:
        return sum(n for k, n in self.fold_counts.items() if k.endswith("_unreadable"))

    def marks(self) -> dict[TopicPartition, int]:
        """Per source partition owned and restored: every offset below this is folded."""
        return {tp: fold.mark for tp, fold in self._folds.items()}

    def lag(self) -> int:
        """Records known to exist (by the last fetches' high watermarks) but not folded yet."""
        if self._consumer is None:
            return 0
        return sum(max((self._consumer.highwater(tp) or 0) - fold.mark, 0) for tp, fold in self._folds.items())

    def caught_up(self) -> bool:
        """Restored, every partition owned fetched at least once and folded to its last known end."""
        if self._consumer is None or not self.ready.is_set() or self._unrestored:
            return False
        ends = [(fold.mark, self._consumer.highwater(tp)) for tp, fold in self._folds.items()]
        return all(high is not None and mark >= high for mark, high in ends)

    async def wait_published(self, timeout_s: float = 60.0) -> bool:
        """Until the folds caught up with their partitions and a publish round after that wrote what they
        changed (a worker's start: its features complete before it says ready). False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.caught_up():
            if time.monotonic() > deadline or (self._task is not None and self._task.done()):
                return False
            await asyncio.sleep(0.05)
        rounds = self.counts["publish_rounds"]
        while self.counts["publish_rounds"] <= rounds:
            if time.monotonic() > deadline or not self.running:
                return False
            await asyncio.sleep(0.02)
        return True

    # -- rebalances --------------------------------------------------------------------------------
    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            folds = {tp: fold for tp in revoked if (fold := self._folds.pop(tp, None)) is not None}
            failed = await self._publish(folds)
            for tp in failed:
                self._retire(folds.pop(tp))
            self._parked = folds
            self._unrestored.clear()
            self.repairer.gaps.forget({(tp.topic, tp.partition) for tp in revoked})

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            for tp in assigned:
                fold = self._parked.pop(tp, None)
                if fold is None:
                    self._unrestored.add(tp)
                else:
                    self._folds[tp] = fold
                    self._seek(tp, fold.mark)
            for fold in self._parked.values():  # another member owns these now
                self._retire(fold)
            self._parked = {}
            if self._unrestored:
                self._pause(self._unrestored)
            else:
                self.ready.set()

    def _retire(self, fold: SourceFold) -> None:
        self._retired.update(fold.counts)
        tp = TopicPartition(fold.topic, fold.partition)
        self._batches_since_checkpoint.pop(tp, None)  # whoever folds it next starts with a checkpoint
        self._ring.pop(tp, None)

    def _pause(self, tps: Iterable[TopicPartition]) -> None:
        assert self._consumer is not None
        with contextlib.suppress(IllegalStateError):  # a rebalance under way: its callbacks come next
            self._consumer.pause(*tps)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        """Fold ``tp`` on from ``offset`` (a record after it revealing a gap is fetched again from there)."""
        assert self._consumer is not None
        self._consumer.seek(tp, offset)
        self.repairer.gaps.forget({(tp.topic, tp.partition)})
        if offset > 0:
            self.repairer.gaps.expect(tp.topic, tp.partition, offset)

    # -- the fold loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            if self._unrestored:
                try:
                    await self._restore_unrestored()
                except (KafkaError, OSError, RuntimeError):  # RuntimeError: no metadata for listing-stats yet
                    self.counts["restore_failures"] += 1
                    log.exception("aggregator: restoring %s failed; trying again", sorted(self._unrestored))
                    await asyncio.sleep(_RESTORE_RETRY_S)
                    continue
            generation = self._generation
            try:
                batch = await consumer.getmany(timeout_ms=max(int(self.interval_s * 1000), 1),
                                               max_records=_FETCH_RECORDS)
            except KafkaError:  # a broker restart, a group error: the consumer recovers (rejoins, refetches)
                self.counts["fetch_errors"] += 1
                log.exception("aggregator: fetching failed; trying again")
                await asyncio.sleep(_RESTORE_RETRY_S)
                continue
            self._check_truncation(consumer)
            async with self._lock:
                if generation == self._generation:
                    await self._fold_or_restore(batch)
                else:
                    self.counts["discarded"] += sum(map(len, batch.values()))
                if self._clock() - self._last_publish >= self.interval_s:
                    self._last_publish = self._clock()
                    for tp in await self._publish(self._folds):
                        self._refold(tp)
                    self.counts["publish_rounds"] += 1

    def _check_truncation(self, consumer: AIOKafkaConsumer) -> None:
        """Count (and log, once per partition) a source log truncated below a fold's mark: a memory-only broker
        that came back empty, an unclean leader election. The fold counts nothing of the new log until its
        offsets pass the old mark (no double count, but that partition's features stand still): offsets are
        the fold's versions, and a truncated log reuses them (``docs/capacity.md``, what is left)."""
        for tp, fold in self._folds.items():
            high = consumer.highwater(tp)
            if high is not None and high < fold.mark and tp not in self._truncated:
                self._truncated.add(tp)
                self.counts["truncations"] += 1
                log.error("aggregator: %s[%d] high watermark %d is below the %d records folded: the log was "
                          "truncated; nothing of it is counted until its offsets pass %d", tp.topic, tp.partition,
                          high, fold.mark, fold.mark)

    async def _fold_or_restore(self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Fold ``batch``; if fetching a skipped record again fails half-way (a broker restart), the partitions of
        the batch are restored from ``listing-stats`` instead (their position is past records not folded)."""
        try:
            await self._fold(batch)
        except (KafkaError, OSError):
            self.counts["fold_failures"] += 1
            log.exception("aggregator: folding a fetch failed; restoring its partitions from %s", self.stats_topic)
            for tp in batch:
                if tp in self._folds:
                    self._refold(tp)

    async def _fold(self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for tp, records in batch.items():
            fold = self._folds.get(tp)
            if fold is None:  # being restored: sought back to its resume point afterwards
                self.counts["discarded"] += len(records)
                continue
            for r in records:
                for missed in await self.repairer.missed_before(tp.topic, tp.partition, r.offset):
                    fold.fold(missed.offset, missed.value)
                    self.counts["repaired"] += 1
                fold.fold(r.offset, r.value)
            self.counts["records"] += len(records)

    def _refold(self, tp: TopicPartition) -> None:
        """A batch of ``tp`` failed: the fold is ahead of the topic; rebuild it from the topic."""
        self._retire(self._folds.pop(tp))
        self._unrestored.add(tp)
        self._pause([tp])

    # -- publishing --------------------------------------------------------------------------------
    async def _send(self, key: bytes, batch: SnapshotBatch) -> asyncio.Future[Any]:
        """Queue one record of a batch; the future is its acknowledgement."""
        assert self._producer is not None
        fut: asyncio.Future[Any] = await self._producer.send(self.stats_topic, value=batch.encode(), key=key)
        return fut

    def _next_batch(self, tp: TopicPartition, fold: SourceFold) -> list[tuple[bytes, SnapshotBatch]]:
        """The records of the fold's next batch: a checkpoint of every listing after ``checkpoint_every`` batches
        (and as a fold's first batch, so that a restored fold's ring may overwrite older batches), else what
        changed. Nothing when nothing changed."""
        done = self._batches_since_checkpoint.get(tp)
        if done is None or done >= self.checkpoint_every:
            batch, slot = fold.batch(every_listing=True), None
            if not len(batch):  # an empty fold: nothing to write, its first batch with listings is the checkpoint
                return []
            self._batches_since_checkpoint[tp] = 0
            self.counts["checkpoints"] += 1
        else:
            batch = fold.batch()
            if not len(batch):
                return []
            slot = self._ring[tp] = (self._ring.get(tp, -1) + 1) % (2 * self.checkpoint_every + 1)
            self._batches_since_checkpoint[tp] = done + 1
        return record_keys(batch, slot=slot, max_rows=self.max_rows)

    async def _publish(self, folds: Mapping[TopicPartition, SourceFold]) -> set[TopicPartition]:
        """Send each fold's changed listings and wait for every acknowledgement; the partitions whose batch
        was not written whole."""
        failed: set[TopicPartition] = set()
        sent: list[tuple[TopicPartition, list[asyncio.Future[Any]]]] = []
        records_of: dict[TopicPartition, list[tuple[bytes, SnapshotBatch]]] = {}
        for tp, fold in folds.items():
            records = records_of[tp] = self._next_batch(tp, fold)
            if not records:
                continue
            acks: list[asyncio.Future[Any]] = []
            sent.append((tp, acks))
            try:
                for key, part in records:
                    acks.append(await self._send(key, part))
            except KafkaError:
                failed.add(tp)
                log.exception("aggregator: sending the snapshots of %s[%d] failed", tp.topic, tp.partition)
        for tp, acks in sent:
            errors = [r for r in await asyncio.gather(*acks, return_exceptions=True) if isinstance(r, BaseException)]
            if errors or tp in failed:
                failed.add(tp)
                self.counts["send_failures"] += 1
                if errors:
                    log.error("aggregator: %d of %d snapshots of %s[%d] were not written (%r); restoring its fold "
                              "from %s", len(errors), len(acks), tp.topic, tp.partition, errors[0], self.stats_topic)
            else:
                self.counts["batches"] += 1
                self.counts["records_sent"] += len(acks)
                self.counts["snapshots_sent"] += sum(len(part) for _, part in records_of[tp])
        return failed

    # -- restoring ---------------------------------------------------------------------------------
    async def _restore_unrestored(self) -> None:
        assert self._consumer is not None
        async with self._lock:
            tps = self._unrestored & self._consumer.assignment()  # the others: a rebalance under way
            if tps:
                snapshots = await self._read_snapshots({(tp.topic, tp.partition) for tp in tps})
                folds = {tp: self._restored(tp, snapshots.get((tp.topic, tp.partition), [])) for tp in tps}
                await self._remember(folds)
                for tp, fold in folds.items():
                    try:
                        self._seek(tp, fold.resume_from())
                        self._consumer.resume(tp)
                    except IllegalStateError:  # revoked meanwhile: the callbacks to come decide
                        continue
                    self._folds[tp] = fold
                    self._unrestored.discard(tp)
                log.info("aggregator: restored %s", {f"{tp.topic}[{tp.partition}]": f.resume_from()
                                                     for tp, f in folds.items()})
            if not self._unrestored:
                self.ready.set()

    def _restored(self, tp: TopicPartition, snapshots: list[ListingSnapshot]) -> SourceFold:
        half_life_s = self._settings.feature_half_life_s
        self.counts["restores"] += 1
        try:
            return SourceFold.restore(tp.topic, tp.partition, snapshots, half_life_s=half_life_s)
        except ValueError:
            self.counts["refolds"] += 1
            log.warning("aggregator: %s holds snapshots of %s[%d] with another half-life than %gs; folding it "
                        "again from offset 0", self.stats_topic, tp.topic, tp.partition, half_life_s)
            return SourceFold(tp.topic, tp.partition, half_life_s=half_life_s)

    def _reader(self) -> AIOKafkaConsumer:
        """A consumer without a group (started by the caller)."""
        return group_less_consumer(self._settings, self._bootstrap, auto_offset_reset="earliest")

    async def _read_snapshots(self, sources: set[Source]) -> dict[Source, list[ListingSnapshot]]:
        """Every snapshot of ``sources`` on ``listing-stats``, read from its beginning to its end."""
        prefixes = {f"{topic}:{partition}:".encode() for topic, partition in sources}
        out: dict[Source, list[ListingSnapshot]] = {source: [] for source in sources}
        consumer = self._reader()
        await consumer.start()
        try:
            # metadata right after a broker restart may take a moment (RuntimeError: the restore is tried again)
            parts = [TopicPartition(self.stats_topic, p) for p in await partitions_of(consumer, self.stats_topic)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            rounds = 0
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                rounds += 1
                for records in batch.values():
                    self.counts["stats_read"] += len(records)
                    for r in records:
                        key = r.key or b""
                        if key[: key.rfind(b":") + 1] not in prefixes:  # another source's (or no key)
                            continue
                        if r.value is None:
                            self.counts["stats_tombstones"] += 1
                            continue
                        try:
                            b = SnapshotBatch.decode(r.value)
                        except (ValueError, KeyError, TypeError):
                            self.counts["stats_unreadable"] += 1
                            continue
                        if b.source in out:
                            out[b.source] += b.snapshots()
                # the larger of ListOffsets and the fetch high watermark (the embedded Tansu answers the first
                # wrongly after multi-record batches; see streams.replicator), after two rounds at least
                if rounds >= 2 and await _read_to(consumer, {tp: max(ends[tp], consumer.highwater(tp) or 0)
                                                             for tp in parts}):
                    return out
        finally:
            await consumer.stop()

    async def _remember(self, folds: Mapping[TopicPartition, SourceFold]) -> None:
        """Re-read up to ``aggregate_remember_records`` records before each fold's resume point, for their keys."""
        window = {tp: (max(fold.resume_from() - self.remember_records, 0), fold.resume_from())
                  for tp, fold in folds.items() if fold.resume_from() > 0 and self.remember_records > 0}
        if not window:
            return
        consumer = self._reader()
        await consumer.start()
        try:
            tps = list(window)
            consumer.assign(tps)
            starts = await consumer.beginning_offsets(tps)
            pending: set[TopicPartition] = set()
            for tp, (lo, hi) in window.items():
                first = max(lo, starts[tp])
                if first < hi:
                    consumer.seek(tp, first)
                    pending.add(tp)
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
                for tp, records in batch.items():
                    fold, resume = folds[tp], window[tp][1]
                    for r in records:
                        if r.offset < resume:
                            fold.remember(r.offset, r.value)
                            self.counts["remembered"] += 1
                for tp in list(pending):
                    position, hw = await consumer.position(tp), consumer.highwater(tp)
                    if position >= window[tp][1] or (hw is not None and position >= hw):
                        pending.discard(tp)
        finally:
            await consumer.stop()


async def _read_to(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int]) -> bool:
    """Whether ``consumer`` is at or past ``ends`` on every partition."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._aggregator._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._aggregator._assigned(set(assigned))


async def run_aggregator(settings: Settings, *, bootstrap: str | None) -> Counter[str]:
    """Run one aggregator until SIGTERM or SIGINT (or a defect ends its fold loop); its counts."""
    aggregator = Aggregator(settings, bootstrap=bootstrap)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await aggregator.start()
    log.info("aggregator %s started", aggregator.group_id)
    stopped = asyncio.create_task(stop.wait())
    ended = asyncio.create_task(aggregator.wait())
    try:
        await asyncio.wait([stopped, ended], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        ended.cancel()
        await aggregator.stop()
    log.info("aggregator stopped: %s %s", dict(aggregator.counts), dict(aggregator.fold_counts))
    if aggregator.failure is not None:
        raise RuntimeError("the aggregator's fold loop failed") from aggregator.failure
    return aggregator.counts
