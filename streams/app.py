"""The Faust app: thin agents that decode, batch, call the pure core and send.

=================  =============  ==========================================================  ===========
agent              topic in       does                                                         out
=================  =============  ==========================================================  ===========
``bid``            queries        batches(batch_max) -> decode -> BidPipeline.process         auctions, labels
``bill``           clicks         charge once by click_id, clamp to budget (concurrency=1)     billing, labels
``attribute``      purchases      last click by buyer on listing within the window             labels
(catalog check)     listings/shops validate, outside Faust (``streams/catalog_check.py``)        dead-letters
=================  =============  ==========================================================  ===========

Every rejected record goes to ``dead-letters`` and its delivery is awaited before the agent moves on,
so its offset is never committed first. Outputs are sent with ``force=True`` (immediately, not held
until the source event is acked) and their deliveries awaited at the end of each batch.
Effects are idempotent (click ids, order ids, query ids) because Faust reprocesses up to one commit
interval after every rebalance (faust-streaming #502).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NoReturn

import faust
import mode
import numpy as np
import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from bidder.attribution import label_update, provisional_labels
from bidder.billing import LedgerEntry
from bidder.budget import LedgerBudget
from bidder.calibration import CalibrationAlert, CalibrationMonitor
from bidder.click_decisions import ClickBatch, ClickDecision
from bidder.decoding import Limits, Rejection, decode
from bidder.drift import DriftMonitor
from bidder.events import Click, Purchase, Query, to_json
from bidder.features import DEVICES, PAGES, Priors, QueryContext
from bidder.microbatch import MicroBatcher
from bidder.pipeline import BidPipeline
from bidder.purchase_decisions import Conversion, PurchaseBatch, Repeated
from bidder.scoring import Models, load_models
from bidder.settings import Settings
from bidder.shadow import shadow_outcomes
from bidder.state import BidderState
from bidder.topics import ALL_TOPICS, TOPICS
from streams.batching import batches
from streams.catalog_check import CatalogChecker
from streams.deadletter import dead_letter_record
from streams.gap_repair import GapRepairer, Repair, RepairedEvent, RepairedMessage
from streams.kafka_config import faust_app_kwargs
from streams.metrics import STAGES, WorkerMetrics
from streams.model_watch import ModelWatcher, champion_dir
from streams.replicator import Replicator
from streams.serving import Serving
from streams.watchdogs import GroupWatchdog
from streams.workarounds import aiokafka_producer, exit_for_restart, use_fetch_max_wait

__all__ = ["Runtime", "build_app"]

log = logging.getLogger(__name__)

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
"""refusals of a record for its size: sending it again cannot help"""


class WorkerNotReadyError(RuntimeError):
    """This process cannot go on (its state did not catch up): not a poison record; the agent exits."""


class InjectedFaultError(RuntimeError):
    """Raised for records holding ``fault_marker`` (reliability tests of the poison-record path)."""


@dataclass
class Runtime:
    """What the agents share in one worker process."""

    settings: Settings
    state: BidderState
    replica: Replicator
    pipeline: BidPipeline
    limits: Limits
    topics: dict[str, faust.TopicT]
    serving: Serving | None = None
    """the models serving now and every place that scores with them (``streams/serving.py``)"""
    clock: Callable[[], float] = time.time
    calibration: CalibrationMonitor = field(default_factory=lambda: CalibrationMonitor(window_s=3600.0))
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    counts: Counter[str] = field(default_factory=Counter)
    billing_ready: set[int] = field(default_factory=set)
    repairer: GapRepairer | None = None
    """re-reads what a fetch skipped for the Faust group consumer (``with_skipped``)"""
    _roles: dict[tuple[str, str], str] = field(default_factory=dict)
    _dead_lettered: OrderedDict[tuple[str, int, int, int], None] = field(default_factory=OrderedDict)
    """(topic, partition, offset, hash of the value) of the last 10,000 records dead-lettered: each is
    written once"""
    warmed: bool = False
    """start-up work done (replica recovered, catalog checked, hot path warmed): part of readiness"""
    _warm_up_episodes: set[tuple[str, str]] = field(default_factory=set)
    """(feature, statistic) of drift episodes opened while the features were warming up"""

    def __post_init__(self) -> None:
        if self.repairer is not None:
            self.repairer.on_repair = functools.partial(self.count_repair, consumer="group")

    # -- the models serving now (all owned by ``self.serving``) --------------------------------------
    @property
    def models(self) -> Models:
        assert self.serving is not None
        return self.serving.champion

    @property
    def shadow(self) -> Models | None:
        """a challenger scoring the winners beside the champion (``bidder/shadow.py``), or None"""
        return None if self.serving is None else self.serving.shadow

    @property
    def batcher(self) -> MicroBatcher | None:
        return None if self.serving is None else self.serving.batcher

    @property
    def drift(self) -> DriftMonitor | None:
        return None if self.serving is None else self.serving.drift

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

    # -- records a fetch skipped ---------------------------------------------------------------------
    async def with_skipped(self, events: Sequence[Any]) -> list[Any]:
        """``events`` with, before each one that reveals an offset gap, the records of that gap fetched
        again (``bidder.offset_gaps``). Faust itself treats a gap as done (``Consumer._add_gap`` commits
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

    # -- health --------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the event loop answers (this runs on it), the replica consumer is not stuck and no
        group partition stayed past its log's end after a reset (the ``consumer_lag`` timer resets a
        truncated partition to its beginning; ``group_past_end`` counts partitions that did not
        recover, and the timer exits the process right after failing this)."""
        age = self.replica.seconds_since_round()
        stuck = self.counts["group_past_end"] + self.counts["commit_stalled"]
        ok = age < 30.0 and not stuck
        return ok, {"event_loop": "responsive", "replica_round_age_s": round(age, 3),
                    "replica_truncations": self.replica.truncations,
                    "group_truncations": self.counts["group_truncations"], "group_past_end": stuck,
                    "skipped_records": {c: {o: self.counts[f"{c}_skipped_{o}"] for o in ("repaired", "absent")}
                                        for c in ("group", "replica")}}

    def warming(self, now: float) -> str | None:
        """Why the rolling features are not warm yet (their history shorter than ``warm_history_s``), or
        None. A worker serves while warming: a new deployment's features really are colder than the
        training data's, and the drift episodes that open meanwhile are marked ``warm_up``."""
        need = self.settings.warm_history_s
        span = now - self.state.history_from
        if need <= 0 or span >= need:
            return None
        if self.state.history_from == float("inf"):
            return f"no auction history yet (features are warm after {need:.0f} s of it)"
        return f"rolling features span {max(span, 0.0):.0f} s of auction history of the {need:.0f} s they need"

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: models loaded on the requested provider, broker reachable, replica recovered."""
        providers = {k: m.providers[0] for k, m in (("ctr", self.models.ctr), ("cvr", self.models.cvr))}
        want = "CUDAExecutionProvider" if self.settings.provider == "cuda" else "CPUExecutionProvider"
        checks = {
            "models": all(p == want for p in providers.values()),
            "broker": self.replica.seconds_since_round() < 10.0,
            "recovered": self.replica.ready.is_set(),
            "warmed": self.warmed,
        }
        consistent = self.serving.check() if self.serving is not None else {}
        checks["models_consistent"] = all(consistent.values())
        return all(checks.values()), {**checks, "warming": self.warming(self.clock()),
                                      "providers": providers, "model_versions": self.models.versions,
                                      "serving": consistent,
                                      "replica_lag": self.replica.lag()}

    # -- helpers -------------------------------------------------------------------------------------
    async def send(self, topic: str, key: bytes | None, value: bytes, *, partition: int | None = None,
                   give_up: bool = False) -> Any:
        """Queue a record now (not attached to the current event); returns its delivery future.

        ``give_up``: raise instead of exiting when the record cannot be delivered, at once for a record
        the producer or broker refuses for its size (sending it again cannot help); dead letters use it.

        A failed delivery is sent again with the same bytes for about 40 s (the broker restarting,
        Tansu answering ``UnknownError`` after its restart): outcomes, labels, dead letters and drift
        alerts are idempotent by their ids, so a repeat is harmless, and an exception out of an agent
        would crash it (faust-streaming's ``Agent._execute_actor`` marks the actor crashed; the batch
        was already taken from the stream and is never answered). Past that the process exits (70)
        and its supervisor restarts it. The ledger (``billing``) is not retried here: a line the broker
        wrote but did not acknowledge would come back as a second line for the same click;
        ``handle_clicks`` exits on a failed write and the fold is rebuilt from the ledger."""
        first = await self.topics[topic].send(key=key, value=value, partition=partition, force=True)
        if topic == "billing":
            return first

        async def delivered() -> Any:
            fut = first
            for attempt in range(1, 41):
                try:
                    return await fut
                except Exception as exc:  # any failed delivery is retried the same way
                    if give_up and isinstance(exc, _TOO_LARGE):
                        raise
                    log.warning("send to %s failed (%r); sending the same bytes again (%d)", topic, exc, attempt)
                    self.metrics.send_retries.labels(topic=topic).inc()
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                    fut = await self.topics[topic].send(key=key, value=value, partition=partition, force=True)
            try:
                return await fut
            except Exception:
                if give_up:
                    raise
                exit_for_restart("send to %s still failing after 40 tries; exiting so the worker is restarted",
                                 topic, exc_info=True)

        return asyncio.ensure_future(delivered())

    async def dead_letter(self, message: Any, rejection: Rejection) -> None:
        """Write the record's dead letter and wait for it (so its offset is never committed first).

        Once per record: a handler tried again after it raised (``handle_isolating``) may refuse the same
        record again. A dead letter that cannot be written (the producer or broker refuses it, or the
        broker does not take it for ~40 s) does not stop the agent: it is counted
        (``bidder_dead_letter_failures_total``), logged with the record's topic, partition and offset,
        and the agent moves on."""
        # the value's hash too: a memory-only broker that came back empty hands the same offsets out again
        where = (message.topic, int(message.partition), int(message.offset), hash(message.value))
        if where in self._dead_lettered:
            self.counts["dead_letter_repeats"] += 1
            return
        s = self.settings
        record = dead_letter_record(
            rejection, topic=message.topic, partition=message.partition, offset=message.offset,
            key=message.key, value=message.value, ts=self.clock(), max_bytes=s.dead_letter_max_bytes,
            keep_bytes=s.dead_letter_keep_bytes)
        try:
            await (await self.send("dead-letters", message.topic.encode(), record, give_up=True))
        except Exception as exc:
            self.counts["dead_letter_failed"] += 1
            self.metrics.dead_letter_failures.labels(topic=message.topic).inc()
            log.critical("dead letter of %s[%d]@%d (%s: %s) could not be written (%r, %d bytes); the record is "
                         "skipped", message.topic, message.partition, message.offset, rejection.reason,
                         rejection.detail[:200], exc, len(record))
            return
        self._dead_lettered[where] = None
        while len(self._dead_lettered) > 10_000:
            self._dead_lettered.popitem(last=False)
        self.counts[f"dead_letter:{rejection.reason}"] += 1
        self.metrics.dead_letters.labels(topic=message.topic, reason=rejection.reason).inc()
        log.warning("dead-lettered %s[%d]@%d: %s (%s)", message.topic, message.partition, message.offset,
                    rejection.reason, rejection.detail[:500])

    # -- poison records ------------------------------------------------------------------------------
    async def handle_isolating(self, topic: str, handler: Callable[[Sequence[Any]], Awaitable[None]],
                               events: Sequence[Any]) -> None:
        """``handler(events)``; if it raises, each record alone, up to ``poison_attempts`` times.

        A record whose handling raises every time (a poison record) is dead-lettered with the
        exception (``handler_error``) and the agent goes on with the next; its offset is then
        committed like any other, so a restarted worker does not meet it again. Only the handlers'
        decision code can raise here: sends retry by themselves or exit (``send``), and
        :class:`WorkerNotReadyError` (this process cannot go on) is raised through. Effects of a batch that
        raised half-way are made again for the records tried alone: outputs are idempotent by their
        ids, dead letters are written once per record, and ``handle_clicks`` writes nothing until
        every decision of its batch is made."""
        try:
            await handler(events)
            return
        except WorkerNotReadyError:
            raise
        except Exception as exc:
            log.warning("%s: a batch of %d records raised %r; trying each alone", topic, len(events), exc)
        attempts = self.settings.poison_attempts
        for ev in events:
            for attempt in range(1, attempts + 1):
                try:
                    await handler([ev])
                    break
                except WorkerNotReadyError:
                    raise
                except Exception as exc:
                    self.metrics.handler_retries.labels(topic=topic).inc()
                    if attempt < attempts:
                        await asyncio.sleep(0.05 * attempt)
                        continue
                    m = ev.message
                    log.error("%s[%d]@%d raised on each of %d tries alone; dead-lettering it", m.topic,
                              m.partition, m.offset, attempts, exc_info=True)
                    self.counts["poison_records"] += 1
                    await self.dead_letter(m, Rejection(
                        "handler_error", f"{type(exc).__name__}: {exc} (raised on each of {attempts} tries)"))

    def with_fault_marker(self, handler: Callable[[Sequence[Any]], Awaitable[None]], *, topic: str = ""
                          ) -> Callable[[Sequence[Any]], Awaitable[None]]:
        """``handler``, raising :class:`InjectedFaultError` for a batch holding a record whose value contains
        ``fault_marker``, and waiting before each record when ``fault_slow`` names ``topic`` (reliability
        tests only; the handler itself when neither is set)."""
        marker = self.settings.fault_marker.encode()
        slow_topic, _, delay = self.settings.fault_slow.partition(":")
        slow_s = float(delay) if slow_topic == topic and topic else 0.0
        if not marker and not slow_s:
            return handler

        async def faulty(events: Sequence[Any]) -> None:
            for ev in events:
                m = ev.message
                if marker and marker in (m.value or b""):
                    raise InjectedFaultError(f"{m.topic}[{m.partition}]@{m.offset} holds the fault marker")
            if slow_s:
                await asyncio.sleep(slow_s * len(events))
            await handler(events)

        return faulty

    def decode(self, message: Any, now: float, limits: Limits | None = None) -> Any:
        ev = decode(message.topic, message.value, now=now, limits=limits or self.limits)
        if isinstance(ev, Rejection):
            return ev
        want = str(getattr(ev, TOPICS[message.topic].key))
        if message.key is None or message.key != want.encode():
            got = None if message.key is None else message.key[:64]
            return Rejection("wrong_key", f"record key {got!r}, expected {want!r}")
        return ev

    # -- queries -> auctions -----------------------------------------------------------------------
    async def handle_queries(self, events: Sequence[Any]) -> None:
        start = self.clock()
        queries: list[Query] = []
        sources: dict[str, Any] = {}
        for ev in events:
            q = self.decode(ev.message, start)
            if isinstance(q, Rejection):
                await self.dead_letter(ev.message, q)
            else:
                queries.append(q)
                sources[q.query_id] = ev.message
        if not queries:
            return
        outcomes = self.pipeline.process(queries, score=self.batch_score if self.batcher is not None else None)
        if self.shadow is not None:  # after the auctions: the shadow prices nothing
            t0 = time.perf_counter()
            outcomes = shadow_outcomes(self.shadow, outcomes)
            self.metrics.shadow_seconds.observe(time.perf_counter() - t0)
        pending = []
        answered = 0
        stage = self.metrics.stage_seconds
        for q, o in zip(queries, outcomes, strict=True):
            if o.n_unknown >= o.n_candidates:
                await self.dead_letter(sources[q.query_id], Rejection(
                    "no_known_candidates", f"none of {o.n_candidates} candidate listings is in the catalog"))
                continue
            timed = replace(o, timings_ms={**o.timings_ms, "queue": max(0.0, (start - q.ts) * 1000.0)})
            for name in STAGES:
                stage.labels(stage=name).observe(timed.timings_ms.get(name, 0.0) / 1000.0)
            data = to_json(timed)
            pending.append(await self.send("auctions", q.query_id.encode(), orjson.dumps(data, option=_NUMPY)))
            answered += 1
            # impressions become provisional negative examples right away (labels keyed by query)
            pending.append(await self.send("labels", q.query_id.encode(),
                                           orjson.dumps(provisional_labels(data), option=_NUMPY)))
        await asyncio.gather(*pending)
        await self.watch_drift(start)
        await self.watch_calibration()
        self.counts["queries"] += len(queries)
        self.metrics.queries.inc(answered)
        self.metrics.batch_size.observe(len(events))
        self.metrics.replica_lag.set(self.replica.lag())

    def batch_score(self, x: Any, spans: Sequence[tuple[Query, int, int]]) -> tuple[Any, Any, dict[str, str]]:
        """Score through the micro-batcher: deadline order, split, shed (see bidder/microbatch.py)."""
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

    async def watch_calibration(self) -> None:
        """Matured labels (``bidder/auction_log.py``: clicks final after the click window, conversions
        after the attribution window too) judge each model version that predicted them, the serving one
        and the shadow on the same impressions; alerts go to ``calibration-alerts``."""
        matured = self.state.auctions.take_matured()
        if not matured:
            return
        cal = self.calibration
        for m in matured:
            series = [("serving", m.version, m.p)]
            if m.shadow_version and len(m.shadow_p) == len(m.y):
                series.append(("shadow", m.shadow_version, m.shadow_p))
            for role, version, p in series:
                self._roles[(m.target, version)] = role
                for alert in cal.update(m.target, version, p=p, y=m.y, now=m.ts):
                    await self.calibration_alert(alert, role)
        now = max(m.ts for m in matured)
        for (target, version), g in cal.gauges(now=now).items():
            labels = {"target": target, "version": version, "role": self._roles.get((target, version), "serving")}
            if g.ratio == g.ratio:  # not NaN
                self.metrics.calibration.labels(**labels).set(g.ratio)
            if g.logloss == g.logloss:
                self.metrics.calibration_logloss.labels(**labels).set(g.logloss)

    async def calibration_alert(self, alert: CalibrationAlert, role: str) -> None:
        log.warning("calibration %s: %s %s (%s) ratio %.3f outside [%.2f, %.2f] over %d examples", alert.state,
                    alert.target, alert.version, role, alert.ratio, alert.low, alert.high, alert.n)
        record = {"v": 1, "type": "calibration_alert", **asdict(alert), "role": role}
        await (await self.send("calibration-alerts", alert.target.encode(), orjson.dumps(record)))
        self.metrics.calibration_alerting.labels(target=alert.target, version=alert.version, role=role).set(
            1.0 if alert.state == "out" else 0.0)
        self.counts[f"calibration_{alert.state}"] += 1

    async def watch_drift(self, now: float) -> None:
        """Feed what was just served to the drift monitor (after the outcomes are out)."""
        scored = self.pipeline.last_scored
        if self.drift is None or scored is None:
            return
        x, pctr, pcvr = scored
        warming = self.warming(now) is not None
        for event in self.drift.update(x, {"pctr": pctr, "pcvr": pcvr}, now):
            episode = (event.feature, event.statistic)
            if event.kind == "alert" and warming:
                self._warm_up_episodes.add(episode)
            if episode in self._warm_up_episodes:
                event = replace(event, warm_up=True)  # noqa: PLW2901 - the same event, marked
                if event.kind == "recovered":
                    self._warm_up_episodes.discard(episode)
            log.warning("%s", event.describe())
            await (await self.send("drift-alerts", event.feature.encode(), orjson.dumps(event.to_dict())))
            self.metrics.drift_alerts.labels(feature=event.feature, statistic=event.statistic).set(
                1.0 if event.kind == "alert" else 0.0)
            self.counts[f"drift_{event.kind}"] += 1
        self.counts["drift_batches"] += 1
        if self.counts["drift_batches"] % 50 == 1:
            for feature, stats in self.drift.gauges().items():
                for statistic, value in stats.items():
                    self.metrics.drift.labels(feature=feature, statistic=statistic).set(value)

    # -- clicks -> billing ---------------------------------------------------------------------------
    async def handle_clicks(self, events: Sequence[Any]) -> None:
        """Decide a batch of clicks in order (:class:`bidder.click_decisions.ClickBatch`: each sees the
        spend of those before it, not the ledger fold); write the ledger lines and label updates
        together, wait for every acknowledgement, and only then fold the lines in. A batch cut short (a
        failed write, a rebalance) leaves the fold untouched: the redelivered clicks are decided again
        against the ledger as the broker has it. If a write fails the process exits and rebuilds from
        the ledger."""
        state = self.state
        batch = ClickBatch(auctions=state.auctions, catalog=state.catalog, ledger=state.ledger,
                           click_window_s=self.settings.click_window_s)
        decisions: list[tuple[int, ClickDecision]] = []
        now = self.clock()
        decoded = [(ev.message, self.decode(ev.message, now)) for ev in events]  # each click parsed once
        # a click may arrive before this worker's replica has folded its auction (the buyer saw the
        # outcome first): catch up once for the whole batch rather than once per such click
        if any(isinstance(c, Click) and not state.auctions.knows(c.query_id) for _, c in decoded):
            await self.replica.wait_caught_up(["auctions"])
        for message, click in decoded:
            if isinstance(click, Rejection):
                await self.dead_letter(message, click)
                continue
            assert isinstance(click, Click)
            await self.billing_caught_up(message.partition)
            if not state.auctions.knows(click.query_id):
                await self.replica.wait_caught_up(["auctions"])
            decided = batch.decide(click)
            if isinstance(decided, Rejection):
                await self.dead_letter(message, decided)
            else:
                decisions.append((message.partition, decided))
        # nothing is written until every decision is made: the replica folds our own lines as soon as
        # the broker has them, and the batch's pending spend must not count them a second time. Nothing
        # after this point raises out of the handler (a failed write exits): a batch tried again record
        # by record (handle_isolating) never has half of its lines written.
        try:
            writes, labels = await self._write_click_decisions(decisions)
            metas = await asyncio.gather(*(f for _, f, _ in writes), *labels)
        except Exception:
            exit_for_restart("ledger write failed; exiting so the money state is rebuilt from the ledger",
                             exc_info=True)
        for (part, _, entry), meta in zip(writes, metas, strict=False):
            state.apply_own_ledger(entry, partition=part, offset=int(meta.offset))

    async def billing_caught_up(self, partition: int) -> None:
        """Rebuild a billing partition's ledger (the replica reaches its end) before deciding anything on it."""
        if partition not in self.billing_ready:
            if not await self.replica.wait_caught_up(["billing"], partitions={"billing": partition}):
                raise WorkerNotReadyError(f"billing partition {partition} did not catch up")
            self.billing_ready.add(partition)

    async def _write_click_decisions(self, decisions: list[tuple[int, ClickDecision]]
                                     ) -> tuple[list[tuple[int, Any, LedgerEntry]], list[Any]]:
        """Send each decision's ledger line (and its label update); returns (partition, delivery, entry)
        per line and the label deliveries, not awaited."""
        writes: list[tuple[int, Any, LedgerEntry]] = []
        labels: list[Any] = []
        for part, d in decisions:
            click, ad, entry = d.click, d.ad, d.entry
            writes.append((part, await self.send("billing", str(click.shop_id).encode(),
                                                 orjson.dumps(entry.to_dict()), partition=part), entry))
            self.counts[f"clicks_{entry.status}"] += 1
            self.metrics.clicks.labels(status=entry.status).inc()
            if entry.status == "charged":
                self.metrics.charged.inc(entry.amount)
                if entry.amount < entry.price:
                    self.metrics.budget_exhausted.inc()
            elif entry.status == "unbilled":
                self.metrics.unbilled.inc(entry.price)
            if entry.status != "duplicate":
                labels.append(await self.send("labels", click.query_id.encode(), orjson.dumps(label_update(
                    query_id=click.query_id, slot=ad.slot, listing_id=click.listing_id, ts=click.ts,
                    click_id=click.click_id))))
        return writes, labels

    # -- purchases -> labels -------------------------------------------------------------------------
    async def handle_purchase(self, message: Any) -> None:
        """Decide the purchase (:class:`bidder.purchase_decisions.PurchaseBatch`); a purchase whose click is
        not decided here yet is decided again after catching up on ``billing``, then after waiting for
        that click (``await_sent_click``); write its label update or its dead letter."""
        purchase = self.decode(message, self.clock())
        if isinstance(purchase, Rejection):
            await self.dead_letter(message, purchase)
            return
        assert isinstance(purchase, Purchase)
        state = self.state
        batch = PurchaseBatch(clicks=state.clicks, sent=state.clicks_sent, attributed=state.order_attributed)
        decision = batch.decide(purchase)
        if isinstance(decision, Rejection):
            await self.replica.wait_caught_up(["billing"])
            decision = batch.attribute(purchase)
        if isinstance(decision, Rejection):
            decision = await self.await_sent_click(batch, purchase, decision)
        if isinstance(decision, Repeated):
            self.counts["purchases_repeated"] += 1
        elif isinstance(decision, Rejection):
            await self.dead_letter(message, decision)
        else:
            await (await self.send("labels", decision.click.query_id.encode(), orjson.dumps(decision.label())))
            self.counts["purchases_attributed"] += 1
            self.metrics.conversions.inc()

    async def await_sent_click(self, batch: PurchaseBatch, purchase: Purchase, refused: Rejection
                               ) -> Conversion | Rejection:
        """The click a purchase belongs to may be on the ``clicks`` topic but not decided yet: clicks and
        purchases are two topics read by two agents (on any worker), and a buyer can buy within a second
        of clicking. Refusing the purchase then loses a real conversion (the labels' CVR would be biased
        low), so wait for that click's ledger line, at most ``purchase_click_wait_s``. A purchase
        with no such click sent is refused at once (``refused``)."""
        await self.replica.wait_caught_up(["clicks"])
        sent = batch.awaited_click(purchase)
        if sent is None:
            return refused
        self.counts["purchases_waited"] += 1
        deadline = time.monotonic() + self.settings.purchase_click_wait_s
        while True:
            decision = batch.attribute(purchase)
            remaining = deadline - time.monotonic()
            if isinstance(decision, Conversion) or remaining <= 0:
                return decision
            if self.state.ledger.seen(sent.click_id) is not None:
                return decision  # decided without a click to attribute to (e.g. a later, refused resend)
            await self.replica.wait_caught_up(["billing"], timeout_s=remaining)
            await asyncio.sleep(min(0.02, max(remaining, 0.0)))

    async def handle_catalog(self, message: Any) -> None:
        ev = self.decode(message, self.clock(), self.limits.for_catalog())
        if isinstance(ev, Rejection):
            await self.dead_letter(message, ev)


def build_app(settings: Settings, *, bootstrap: str | None, clock: Callable[[], float] = time.time,
              rng_seed: int | None = None) -> tuple[faust.App, Runtime]:
    """The Faust app and its runtime for one worker process."""
    use_fetch_max_wait(settings.fetch_max_wait_ms)
    app = faust.App(
        settings.app_id,
        **faust_app_kwargs(settings, bootstrap=bootstrap),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="0.0.0.0",  # noqa: S104 - probes and Prometheus scrape the pod IP
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        producer_acks=-1,
        stream_wait_empty=False,
    )
    topics = {t.name: app.topic(t.name, value_serializer="raw", key_serializer="raw") for t in ALL_TOPICS}
    limits = Limits(max_bytes=settings.max_message_bytes, max_candidates=settings.max_candidates,
                    max_age_s=settings.max_event_age_s, max_future_s=settings.max_event_future_s)
    state = BidderState(half_life_s=settings.feature_half_life_s, click_window_s=settings.click_window_s,
                        attribution_window_s=settings.attribution_window_s, limits=limits)
    model_dir, family, _ = champion_dir(settings.model_dir)
    models = load_models(model_dir, family or settings.model_family, settings.provider,
                         settings.intra_op_threads, settings.inter_op_threads)
    batcher = None
    fallback: Models | None = None
    if settings.microbatch_enabled:
        if settings.overload_policy == "fallback":
            fallback = load_models(settings.model_dir, settings.fallback_family, "cpu", settings.intra_op_threads,
                                   settings.inter_op_threads)
        batcher = MicroBatcher(primary=[models.ctr, models.cvr],
                               fallback=None if fallback is None else [fallback.ctr, fallback.cvr],
                               max_rows=settings.microbatch_max_rows,
                               max_wait_ms=settings.microbatch_max_wait_ms,
                               default_budget_ms=settings.latency_budget_ms, clock=time.perf_counter)
    pipeline = BidPipeline(
        catalog=state.catalog, stats=state.stats,
        priors=Priors(prior_ctr=settings.prior_ctr, prior_cvr=settings.prior_cvr,
                      strength=settings.prior_strength),
        ctr=models.ctr, cvr=models.cvr,
        budget=LedgerBudget(catalog=state.catalog, ledger=state.ledger, clock=clock),
        slots=settings.slots, reserve_price=settings.reserve_price, min_bid=settings.min_bid,
        max_bid=settings.max_bid, clock=clock, rng=np.random.default_rng(rng_seed),
        model_versions=models.versions,
    )
    replica = Replicator(state, settings, bootstrap=bootstrap, clock=clock)
    worker_metrics = WorkerMetrics()
    serving = Serving(settings=settings, pipeline=pipeline, champion=models, batcher=batcher, fallback=fallback,
                      model_info=worker_metrics.model, rng=np.random.default_rng(rng_seed))
    rt = Runtime(settings=settings, state=state, replica=replica, pipeline=pipeline, serving=serving,
                 limits=limits, topics=topics, clock=clock, metrics=worker_metrics,
                 calibration=CalibrationMonitor(
                     window_s=settings.calibration_window_s,
                     bucket_s=min(settings.calibration_bucket_s, settings.calibration_window_s),
                     low=settings.calibration_low, high=settings.calibration_high,
                     min_positives=settings.calibration_min_positives),
                 repairer=GapRepairer(settings, bootstrap=bootstrap, name="group"))
    replica.repairer.on_repair = functools.partial(rt.count_repair, consumer="replica")

    async def each_catalog(events: Sequence[Any]) -> None:
        for ev in events:
            await rt.handle_catalog(ev.message)

    catalog_handler = rt.with_fault_marker(each_catalog)

    async def check_catalog(record: Any) -> None:
        """The catalog check's records get the agents' poison-record handling too."""
        await rt.handle_isolating(record.topic, catalog_handler, [RepairedEvent(RepairedMessage.of(record))])

    checker = CatalogChecker(settings, bootstrap=bootstrap, check=check_catalog)

    async def warm_producer() -> None:
        """Fetch the output topics' metadata now: the first send to a topic waits for it otherwise."""
        producer = aiokafka_producer(app)
        for topic in ("auctions", "labels", "billing", "dead-letters", "drift-alerts", "calibration-alerts"):
            await producer.partitions_for(topic)
    watcher = ModelWatcher(rt, settings)

    @app.service
    class ReplicaService(mode.Service):
        """Starts the replica (and the catalog checker) before the agents run; stops them after."""

        async def on_start(self) -> None:
            await replica.start()
            await checker.start()
            await checker.wait_caught_up()
            await watcher.start()
            log.info("warm-up: %d synthetic queries through the hot path", rt.warm_up())
            await warm_producer()
            rt.warmed = True
            # the recovered state is long-lived: keep the cyclic GC from walking it on the hot path
            gc.freeze()

        async def on_stop(self) -> None:
            await watcher.stop()
            await checker.stop()
            await replica.stop()
            if rt.repairer is not None:
                await rt.repairer.stop()

    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        ok, body = rt.health()
        return view.json(body, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(view: Any, request: Any) -> Any:
        ok, body = rt.readiness()
        return view.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(view: Any, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return view.bytes(generate_latest(rt.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    app.timer(interval=5.0)(GroupWatchdog(app=app, rt=rt, replica=replica, stall_s=settings.commit_stall_s).check)

    async def _revoked(app_: Any, revoked: Any, **_: Any) -> None:
        rt.billing_ready.difference_update(tp.partition for tp in revoked if tp.topic == "clicks")
        # the next record of a partition assigned again starts at the committed offset, not after ours
        if rt.repairer is not None:
            rt.repairer.gaps.forget({(tp.topic, tp.partition) for tp in revoked})

    app.on_partitions_revoked.connect(_revoked)  # type: ignore[arg-type]

    async def ready() -> None:
        await replica.ready.wait()

    def crashed(topic: str) -> NoReturn:
        """An exception out of a handler (sends are already retried in ``Runtime.send``): exit (70).

        faust-streaming's ``Agent._execute_actor`` catches it, marks the actor crashed ("Agent crashed
        reason=...") and the worker process keeps running: the events taken for the batch are never
        answered and nothing outside the process sees it (seen in ``t2tansu_stay`` before sends were
        retried; faust-streaming #324 and #329 are about how hard it is to stop a worker from inside
        one). Exiting makes the pod (or the chaos harness) restart the worker, which resumes from the
        committed offsets; outputs are idempotent by their ids, as ``handle_clicks`` already assumes."""
        exit_for_restart("%s agent failed; exiting so the worker is restarted", topic, exc_info=True)

    def batch_agent(topic: str, size: int, within: float,
                    handler: Callable[[Sequence[Any]], Awaitable[None]]) -> None:
        handle = rt.with_fault_marker(handler, topic=topic)

        async def agent(stream: Any) -> None:
            async for events in batches(stream, size, within_s=within):
                await ready()
                try:
                    await rt.handle_isolating(topic, handle, await rt.with_skipped(events))
                except Exception:  # see crashed()
                    crashed(topic)

        agent.__name__ = f"{topic.replace('-', '_')}_agent"
        app.agent(topics[topic], name=f"bidder.{topic}", concurrency=1)(agent)

    def event_agent(topic: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        async def each(events: Sequence[Any]) -> None:
            for one in events:
                await handler(one.message)

        handle = rt.with_fault_marker(each, topic=topic)

        async def agent(stream: Any) -> None:
            async for ev in stream.events():
                await ready()
                try:
                    await rt.handle_isolating(topic, handle, await rt.with_skipped([ev]))
                except Exception:  # see crashed()
                    crashed(topic)

        agent.__name__ = f"{topic.replace('-', '_')}_agent"
        app.agent(topics[topic], name=f"bidder.{topic}", concurrency=1)(agent)

    batch_agent("queries", settings.batch_max, settings.batch_within_s, rt.handle_queries)
    batch_agent("clicks", 200, 0.0, rt.handle_clicks)
    event_agent("purchases", rt.handle_purchase)

    return app, rt

