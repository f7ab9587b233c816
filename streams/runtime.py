"""What the agents of one worker process share: its settings and state, the replica, the hot path and the
models serving now, its outputs and monitors, and the records a fetch skipped (read again here)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np

from bidder.clicks.click_token import ClickSigner
from bidder.decoding import Limits, Rejection, decode
from bidder.events import Query
from bidder.query.features import DEVICES, PAGES, QueryContext
from bidder.query.microbatch import MicroBatcher
from bidder.query.pipeline import BidPipeline
from bidder.query.scoring import Models
from bidder.replica.state import BidderState
from bidder.settings import Settings
from bidder.topics import TOPICS
from streams.aggregator import Aggregator
from streams.gap_repair import GapRepairer, Repair, RepairedEvent, RepairedMessage
from streams.metrics import WorkerMetrics
from streams.monitors import Monitors
from streams.outputs import Outputs
from streams.replicator import Replicator
from streams.serving import Serving
from streams.workarounds import exit_for_restart

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

_LEAVE_S = 3.0
"""how long an exit for a restart waits for the consumers outside Faust to leave their groups"""


@dataclass
class Runtime:
    """What the agents share in one worker process."""

    settings: Settings
    state: BidderState
    replica: Replicator
    pipeline: BidPipeline
    limits: Limits
    out: Outputs
    """sends, dead letters and poison-record isolation (``streams/outputs.py``)"""
    monitors: Monitors
    """drift and calibration watching (``streams/monitors.py``)"""
    serving: Serving | None = None
    """the models serving now and every place that scores with them (``streams/serving.py``)"""
    clock: Callable[[], float] = time.time
    billing_ready: set[int] = field(default_factory=set)
    """partitions of ``clicks`` and ``purchases`` whose ledger and orders this worker rebuilt since it was assigned
    them (``streams.agents.own_caught_up``)"""
    committed_of: Callable[[str, int], int] = lambda topic, partition: 0
    """the worker group's committed offset of a partition as this worker knows it (0: none)"""
    repairer: GapRepairer | None = None
    """re-reads what a fetch skipped for the Faust group consumer (``with_skipped``)"""
    aggregator: Aggregator | None = None
    """this worker's member of the aggregator group (``settings.aggregator_embedded``), or None"""
    leave_on_exit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """how each group consumer outside Faust leaves its group (:meth:`exit_for_restart` awaits them)"""

    signer: ClickSigner = field(init=False)
    """signs each winner's click token and verifies clicks (``settings.click_token_key``)"""
    clicks_done_to: dict[int, int] = field(default_factory=dict)
    """per ``clicks`` partition, the offset after the last click the bill agent finished with (:meth:`clicks_done`)"""
    _progress: asyncio.Event = field(init=False)

    def __post_init__(self) -> None:
        self._progress = asyncio.Event()
        self.signer = self.settings.click_signer()
        if self.repairer is not None:
            self.repairer.on_repair = functools.partial(self.count_repair, consumer="group")

    async def exit_for_restart(self, message: str, *args: object, exc_info: bool = False) -> NoReturn:
        """Leave the groups of the consumers outside Faust (the aggregator's, the catalog check's: waiting at
        most ``_LEAVE_S``), then exit (70) for a restart.

        The exit is ``os._exit`` (``streams.workarounds.exit_for_restart``): without leaving, those members
        would stay in their groups until their sessions time out on Kafka, and for ever on the embedded
        noida, which never evicts a member that exited without leaving (the restarted worker's aggregator
        then never got an assignment: chaos t2). The Faust consumer is left as it is: it may be what is
        stuck."""
        if self.leave_on_exit:
            try:
                await asyncio.wait_for(asyncio.gather(*(leave() for leave in self.leave_on_exit)), _LEAVE_S)
            except Exception:  # exiting anyway: the groups evict them after their sessions
                log.warning("leaving the groups before the exit failed", exc_info=True)
        exit_for_restart(message, *args, exc_info=exc_info)

    @property
    def metrics(self) -> WorkerMetrics:
        return self.out.metrics

    @property
    def counts(self) -> Counter[str]:
        return self.out.counts

    # -- the models serving now (all owned by ``self.serving``) --------------------------------------
    @property
    def models(self) -> Models:
        assert self.serving is not None
        return self.serving.champion

    @property
    def shadow(self) -> Models | None:
        """a challenger scoring the winners beside the champion (``bidder/query/shadow.py``), or None"""
        return None if self.serving is None else self.serving.shadow

    @property
    def batcher(self) -> MicroBatcher | None:
        return None if self.serving is None else self.serving.batcher

    def swap_models(self, models: Models) -> None:
        """Serve ``models`` from the next batch on, everywhere (called on the event loop, between batches)."""
        assert self.serving is not None
        self.serving.swap(models)

    def set_shadow(self, models: Models | None) -> None:
        """Start (or stop, with None) shadow scoring from the next batch on."""
        assert self.serving is not None
        self.serving.set_shadow(models)

    def warm_up(self, *, rounds: int = 20) -> int:
        """Run the hot path on synthetic queries over the catalog before the worker says it is ready, so
        that the first ONNX Runtime calls (which allocate their arenas) and the first touches of the
        catalog and rolling arrays happen here rather than on the first real queries. Nothing is sent
        and no state changes (the pipeline only reads); returns the queries run (0 without a catalog)."""
        cat = self.state.catalog
        n = cat.n_listings
        if n == 0:
            return 0
        rng = np.random.default_rng(0)
        ids = cat.listing_ids[:n]
        size = min(n, self.settings.max_candidates, 600)
        for i in range(rounds):
            q = Query(query_id=f"warm-up-{i}", ts=self.clock(), user_id=0,
                      context=QueryContext(device=DEVICES[0], page=PAGES[0], hour=12, category=0), text="",
                      listing_ids=rng.choice(ids, size=size, replace=False),
                      relevance=rng.random(size), latency_budget_ms=None)
            self.pipeline.process([q], score=self.batch_score if self.batcher is not None else None)
        self.pipeline.last_scored = None
        return rounds

    # -- what the agents finished -------------------------------------------------------------------------
    def clicks_done(self, events: Sequence[Any]) -> None:
        """The bill agent finished with a batch of ``clicks`` (decided, written, acknowledged or dead-lettered):
        a purchase waiting on an undecided click (``streams.agents.await_decided_clicks``) looks again."""
        marks = self.clicks_done_to
        for ev in events:
            m = ev.message
            marks[int(m.partition)] = max(marks.get(int(m.partition), 0), int(m.offset) + 1)
        self._progress.set()
        self._progress = asyncio.Event()

    def clicks_decided(self, partition: int) -> int:
        """The offset of ``clicks[partition]`` below which every click is decided: what this worker's bill agent
        finished, or what the group committed (decided by this worker or the partition's earlier owner)."""
        return max(self.clicks_done_to.get(partition, 0), self.committed_of("clicks", partition))

    async def wait_clicks_decided(self, *, timeout_s: float) -> None:
        """Until the bill agent finishes a batch, at most ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), timeout_s)

    # -- records a fetch skipped ---------------------------------------------------------------------
    async def with_skipped(self, events: Sequence[Any]) -> list[Any]:
        """``events`` with, before each one that reveals an offset gap, the records of that gap fetched
        again (``bidder.replica.offset_gaps``). Faust itself treats a gap as done (``Consumer._add_gap`` commits
        past it), so without this a record the broker skipped in a fetch (the embedded Tansu broker
        does under concurrent producers) was never processed: a click never billed. On Kafka the inputs
        have no gaps (not compacted, no transactions) and this is one dict lookup per event."""
        if self.repairer is None:
            return list(events)
        out: list[Any] = []
        for ev in events:
            m = ev.message
            out.extend(RepairedEvent(RepairedMessage.of(r))
                       for r in await self.repairer.missed_before(m.topic, m.partition, m.offset))
            out.append(ev)
        return out

    def count_repair(self, repair: Repair, *, consumer: str) -> None:
        self.counts[f"{consumer}_skipped_repaired"] += len(repair.records)
        self.counts[f"{consumer}_skipped_absent"] += repair.absent
        self.metrics.skipped_records.labels(consumer=consumer, outcome="repaired").inc(len(repair.records))
        self.metrics.skipped_records.labels(consumer=consumer, outcome="absent").inc(repair.absent)

    # -- inputs and scoring ---------------------------------------------------------------------------
    def decode(self, message: Any, now: float, limits: Limits | None = None) -> Any:
        """The record's event, or why it has none (``bidder.decoding``, and ``wrong_key`` for a record key
        other than the event's own id)."""
        ev = decode(message.topic, message.value, now=now, limits=limits or self.limits)
        if isinstance(ev, Rejection):
            return ev
        want = str(getattr(ev, TOPICS[message.topic].key))
        if message.key is None or message.key != want.encode():
            got = None if message.key is None else message.key[:64]
            return Rejection("wrong_key", f"record key {got!r}, expected {want!r}")
        return ev

    def batch_score(self, x: Any, spans: Sequence[tuple[Query, int, int]]) -> tuple[Any, Any, dict[str, str]]:
        """Score through the micro-batcher: deadline order, split, shed (see bidder/query/microbatch.py)."""
        assert self.batcher is not None
        now = self.clock()
        for q, off, n in spans:
            self.batcher.submit(q.query_id, x[off : off + n],
                                budget_ms=q.latency_budget_ms or self.settings.latency_budget_ms,
                                elapsed_ms=max(0.0, (now - q.ts) * 1000.0))
        results = {r.key: r for r in self.batcher.flush()}
        pctr = np.zeros(len(x), np.float32)
        pcvr = np.zeros(len(x), np.float32)
        shed: dict[str, str] = {}
        for q, off, n in spans:
            r = results[q.query_id]
            if r.route == "rejected":
                shed[q.query_id] = r.reason
                self.counts["queries_shed"] += 1
                continue
            pctr[off : off + n], pcvr[off : off + n] = r.scores[0], r.scores[1]
            if r.route == "fallback":
                self.counts["queries_fallback"] += 1
        return pctr, pcvr, shed

