"""Every place the Faust layer reaches past faust-streaming's or aiokafka's public API, in one module.

Each function below exists because of a defect or a missing API of a library or a broker; the table says
which, how it was measured, and what removes the need. Nothing else in ``streams/`` touches a private
attribute of faust or aiokafka (``tests/test_workarounds.py`` checks that), so an upgrade is checked here
and a fixed upstream defect is deleted here.

=========================  ==============================================================================
function                   why (versions: faust-streaming 0.15.3, aiokafka 0.14.0)
=========================  ==============================================================================
use_fetch_max_wait         faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer
                           (``AIOKafkaConsumerThread._create_worker_consumer`` in
                           ``faust/transport/drivers/aiokafka.py``, no setting): a ~390 ms median per hop
                           through a broker that holds fetches (Tansu, measured). No upstream issue found
                           (searched 2026-12-06). Remove when faust takes the consumer setting.
aiokafka_producer          Faust has no public handle on the aiokafka producer it wraps; the worker asks it
                           for the output topics' metadata before the first query (else the first send to
                           each topic waits for it: docs/realtime.md, "readiness = start-up work done").
group_offsets, forget      faust's consumer keeps what it handed to streams (``_read_offset``) and what it
                           committed (``_committed_offset``) privately. The worker reads them for its lag
                           gauge, to notice a truncated log (Tansu restarted empty; an unclean leader
                           election) and a commit stall (aiokafka #1154: the group coordinator never
                           comes back after a broker restart), and drops a truncated partition's books as a
                           revoke would, so the agents read the new log (docs/reliability.md, t2tansu_stay).
refresh_metadata           ``AIOKafkaConsumer`` has no public metadata refresh; a just-created topic's
                           partitions are unknown to a consumer for a moment.
committed_offsets          a group's committed offsets asked by a consumer that never joins it (the chaos
                           harness's drain check): aiokafka's admin ``list_consumer_group_offsets`` fails to
                           decode Tansu's answer, and ``AIOKafkaConsumer.committed`` needs membership.
fail_queued                aiokafka has no public way to drop what a producer has queued: the chaos harness
                           holds a broker's traffic and fails the queued batches so its senders retry them
                           through the next producer instead of delivering them when a broker answers.
install_fetch_pacing,      the embedded default broker (noida-db 0.2.3) answers an empty fetch at once instead
pace_consumer,             of holding it for ``fetch.max.wait.ms``: an idle aiokafka consumer spun at ~95 % of
fetch_pacing_installed     a core. aiokafka's ``Fetcher._proc_fetch_request`` is wrapped to pause after an
                           empty, early answer by the rule of :mod:`bidder.replica.fetch_pacing`
                           (``pace_consumer(busy=True)``: also before a fetch sent sooner than a floor after
                           the last, for a tailing replica whose CPU is per fetch);
                           ``tests/test_fetch_pacing.py`` pins the broker's behaviour and says when this can
                           go. Installed by the client factories of :mod:`streams.kafka_config`.
fetches_sent               aiokafka counts no fetch requests; the paced fetch counts them (the replica
                           probe reports fetches a second: each is a round of every assigned partition).
exit_for_restart           a worker whose state can only be rebuilt from the topics (a failed ledger write,
                           a send failing for minutes, a stuck group, a crashed agent: faust-streaming
                           catches an agent's exception and keeps the process running, #324, #329) exits 70
                           so its supervisor (Kubernetes, the chaos harness) restarts it. ``os._exit``: a
                           clean shutdown can hang (40 s seen) and would commit offsets of unwritten work.
=========================  ==============================================================================

"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import replace
from typing import Any, NoReturn

from bidder.replica.fetch_pacing import FetchPacing

__all__ = ["EXIT_RESTART", "aiokafka_producer", "committed_offsets", "exit_for_restart", "fail_queued",
           "fetch_pacing_installed", "fetches_sent", "forget", "group_offsets", "install_fetch_pacing",
           "pace_consumer", "refresh_metadata", "use_fetch_max_wait"]

log = logging.getLogger(__name__)

EXIT_RESTART = 70
"""exit status of a worker that must be restarted to rebuild its state from the topics (EX_SOFTWARE)"""


def use_fetch_max_wait(ms: int) -> None:
    """Make faust's worker consumer use ``fetch_max_wait_ms=ms`` (idempotent; the last call wins)."""
    from faust.transport.drivers import aiokafka as driver

    thread_class: Any = driver.AIOKafkaConsumerThread
    original = getattr(thread_class, "_bidder_original_create", None)
    if original is None:
        original = thread_class._create_worker_consumer
        thread_class._bidder_original_create = original

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    thread_class._create_worker_consumer = create


def aiokafka_producer(app: Any) -> Any:
    """The aiokafka producer a Faust app sends with (started on first use)."""
    return app.producer._ensure_producer()


def group_offsets(consumer: Any) -> tuple[dict[Any, int], dict[Any, int]]:
    """``(read, committed)`` of a Faust consumer, by topic-partition (partitions without one left out).

    ``read`` is the least offset the next record handed to a stream can have, exact or one below:
    Faust's ``_read_offset`` holds the offset of the last record handed, but right after a seek (the one
    to the committed offset at every assignment included) the offset sought to, i.e. the *next* one,
    and nothing tells the two apart (``Consumer._drain_messages`` takes ``offset >= _read_offset``).
    Read as "last handed + 1", a partition given no record since its assignment looked one past its
    committed end: the truncation watchdog read the log as shortened and re-read it from the start
    (hostile records dead-lettered twice after a restart, T4), and the commit watchdog saw a record read
    and never committed. The lower bound errs the safe way for both: a truncation shorter by exactly the
    one record last read, and not yet committed, is missed until it is committed."""
    read = {tp: int(v) for tp, v in consumer._read_offset.items() if v is not None}
    committed = {tp: int(v) for tp, v in consumer._committed_offset.items() if v is not None}
    return read, committed


def forget(consumer: Any, tp: Any) -> None:
    """Drop a Faust consumer's bookkeeping of one partition, as a revoke does: it then hands records of
    that partition from whatever offset it is sought to, even below ones it read before."""
    for book in (consumer._gap, consumer._acked, consumer._acked_index, consumer._read_offset,
                 consumer._committed_offset):
        book.pop(tp, None)


async def refresh_metadata(consumer: Any) -> None:
    """Ask the broker for fresh metadata through an aiokafka consumer's client."""
    await consumer._client.force_metadata_update()


async def committed_offsets(consumer: Any, tps: list[Any]) -> dict[Any, Any]:
    """OffsetFetch for ``tps`` through a started consumer's group coordinator: ``{tp: OffsetAndMetadata}``."""
    got: dict[Any, Any] = await consumer._coordinator.fetch_committed_offsets(tps)
    return got


def fail_queued(producer: Any, exc: Exception) -> None:
    """Fail every batch an ``AIOKafkaProducer`` has queued and not sent, with ``exc``."""
    producer._message_accumulator.fail_all(exc)


def exit_for_restart(message: str, *args: object, exc_info: bool = False) -> NoReturn:
    """Log ``message`` as critical and end the process at once with :data:`EXIT_RESTART`."""
    log.critical(message, *args, exc_info=exc_info)
    os._exit(EXIT_RESTART)


_pacing: dict[str, Any] = {"policy": None}


def fetch_pacing_installed() -> FetchPacing | None:
    """The fetch pacing in force in this process, or None before :func:`install_fetch_pacing`."""
    policy: FetchPacing | None = _pacing["policy"]
    return policy


def fetches_sent(consumer: Any) -> int:
    """Fetch requests a started aiokafka consumer has sent since it started (0 before pacing is installed)."""
    return int(getattr(consumer._fetcher, "_bidder_fetches", 0))


def pace_consumer(consumer: Any, *, floor_s: float, busy: bool = False) -> None:
    """Give one started aiokafka consumer a higher floor than the process's policy: for readers that
    are not on a query's path (the replica, the catalog check), each poll of a busy broker is a fetch
    round of every assigned partition through aiokafka's Python protocol code. Measured at 50
    queries/s: a 100 ms replica floor used ~15 % less worker CPU than 20 ms (``docs/realtime.md``); 100 ms
    is the default (``BIDDER_REPLICA_FETCH_FLOOR_MS``).

    ``busy``: the floor holds after fetches that brought data too: a fetch is sent at least ``floor_s`` after
    the one before it (the pause comes before sending, so records already fetched are handed over at once).
    A tailing replica otherwise fetches again at once after each record, ~20 times a second at 100 queries/s
    whatever the floor, and its CPU is per fetch (``docs/capacity.md``). Not for catching up: a backlog is
    read one fetch per ``floor_s``."""
    consumer._fetcher._bidder_floor_s = floor_s
    consumer._fetcher._bidder_busy_floor_s = floor_s if busy else None


def install_fetch_pacing(policy: FetchPacing) -> None:
    """Pace every aiokafka consumer of this process with ``policy`` (the last call wins)."""
    _pacing["policy"] = policy
    if _pacing.get("wrapped"):
        return
    from aiokafka.consumer.fetcher import Fetcher

    original = Fetcher._proc_fetch_request

    async def paced(self: Any, assignment: Any, node_id: int, request: Any) -> bool:
        busy_floor = getattr(self, "_bidder_busy_floor_s", None)
        if busy_floor is not None:  # pace_consumer(busy=True): one fetch per floor, data or not
            wait = getattr(self, "_bidder_last_sent", 0.0) + busy_floor - time.monotonic()
            if wait > 0.0:
                try:
                    await asyncio.sleep(wait)
                except asyncio.CancelledError:
                    return False
        sent = time.monotonic()
        self._bidder_last_sent = sent
        got = bool(await original(self, assignment, node_id, request))
        now = time.monotonic()
        self._bidder_fetches = getattr(self, "_bidder_fetches", 0) + 1
        if got:
            self._bidder_last_data = now
            return got
        rule: FetchPacing | None = _pacing["policy"]
        if rule is None:
            return got
        floor = getattr(self, "_bidder_floor_s", None)
        if floor is not None:
            rule = replace(rule, floor_s=floor, ceiling_s=max(rule.ceiling_s, floor))
        pause = rule.pause_s(elapsed_s=now - sent, idle_s=now - getattr(self, "_bidder_last_data", 0.0))
        if pause > 0.0:
            # the fetcher sends nothing more to this broker until this task ends; a new assignment or
            # close() cancels the task, which then ends quietly as aiokafka's own fetch does
            try:
                await asyncio.sleep(pause)
            except asyncio.CancelledError:
                return False
        return got

    Fetcher._proc_fetch_request = paced
    _pacing["wrapped"] = True
