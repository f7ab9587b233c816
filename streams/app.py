"""The Faust app of one worker process: ``build_app`` wires the parts, each in its own module.

``streams/agents.py``    the agents (bid, bill, attribute): read, call the pure core to decide, write
``streams/runtime.py``   what the agents share (``Runtime``): state, replica, hot path, models serving now
``streams/outputs.py``   sends retried until delivered, dead letters, poison-record isolation
``streams/monitors.py``  drift and calibration watching, and their alerts
``streams/probes.py``    ``/healthz``, ``/readyz``, warming, ``/metrics``
``streams/watchdogs.py`` consumer lag, truncated logs, stalled commits
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import faust
import mode
import numpy as np

from bidder.clicks.click_token import DEV_KEY
from bidder.labels.calibration import CalibrationMonitor
from bidder.query.budget import LedgerBudget
from bidder.query.features import Priors
from bidder.query.microbatch import MicroBatcher
from bidder.query.pipeline import BidPipeline
from bidder.query.scoring import Models, load_models
from bidder.replica.state import BidderState
from bidder.settings import Settings
from bidder.topics import ALL_TOPICS
from streams.agents import add_agents, each_message, handle_catalog
from streams.aggregator import Aggregator
from streams.catalog_check import CatalogChecker
from streams.gap_repair import GapRepairer, RepairedEvent, RepairedMessage
from streams.kafka_config import faust_app_kwargs
from streams.metrics import WorkerMetrics
from streams.model_watch import ModelWatcher, champion_dir
from streams.monitors import Monitors
from streams.outputs import Outputs
from streams.probes import Probes, add_probe_pages
from streams.replicator import GROUP_INPUTS, Replicator, worker_state
from streams.runtime import Runtime
from streams.serving import Serving
from streams.watchdogs import GroupWatchdog
from streams.workarounds import aiokafka_producer, group_offsets, use_fetch_max_wait

__all__ = ["build_app"]

log = logging.getLogger(__name__)


def build_app(settings: Settings, *, bootstrap: str | None, clock: Callable[[], float] = time.time,
              rng_seed: int | None = None) -> tuple[faust.App, Runtime]:
    """The Faust app and its runtime for one worker process."""
    use_fetch_max_wait(settings.fetch_max_wait_ms)
    if settings.kafka_bootstrap and settings.click_token_key.get_secret_value() == DEV_KEY:
        log.warning("click tokens are signed with the built-in development key, which anyone can read in the source "
                    "and forge clicks with: set BIDDER_CLICK_TOKEN_KEY (the chart: clickToken.existingSecret)")
    app = _faust_app(settings, bootstrap)
    state = worker_state(settings)
    limits = state.limits
    metrics = WorkerMetrics()
    serving = _serving(settings, state, metrics, clock=clock, rng_seed=rng_seed)
    replica = Replicator(state, settings, bootstrap=bootstrap, clock=clock)
    topics = {t.name: app.topic(t.name, value_serializer="raw", key_serializer="raw") for t in ALL_TOPICS}
    out = Outputs(settings=settings, topics=topics, metrics=metrics, clock=clock)
    probes = Probes(settings=settings, state=state, replica=replica, serving=serving, counts=out.counts, clock=clock)
    monitors = Monitors(out=out, state=state, pipeline=serving.pipeline, serving=serving, warming=probes.warming,
                        calibration=_calibration(settings))
    rt = Runtime(settings=settings, state=state, replica=replica, pipeline=serving.pipeline, limits=limits, out=out,
                 monitors=monitors, serving=serving, clock=clock,
                 repairer=GapRepairer(settings, bootstrap=bootstrap, name="group"))
    replica.repairer.on_repair = functools.partial(rt.count_repair, consumer="replica")
    aggregator = Aggregator(settings, bootstrap=bootstrap, clock=clock) if settings.aggregator_embedded else None
    rt.aggregator = aggregator
    checker = _catalog_checker(rt, bootstrap)
    rt.leave_on_exit += [checker.stop, *([] if aggregator is None else [aggregator.abort])]
    app.service(_start_and_stop(app, rt, probes, checker=checker, aggregator=aggregator))
    add_probe_pages(app, probes, metrics)
    app.timer(interval=5.0)(GroupWatchdog(app=app, rt=rt, replica=replica, stall_s=settings.commit_stall_s).check)
    app.on_partitions_revoked.connect(functools.partial(_revoked, rt))
    app.on_partitions_assigned.connect(functools.partial(_assigned, rt))
    rt.committed_of = functools.partial(_committed_of, app)
    add_agents(app, rt)
    return app, rt


def _faust_app(settings: Settings, bootstrap: str | None) -> faust.App:
    return faust.App(
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


def _serving(settings: Settings, state: BidderState, metrics: WorkerMetrics, *, clock: Callable[[], float],
             rng_seed: int | None) -> Serving:
    """The champion (and its fallback under micro-batching), the hot path scoring with it, and the rest of
    what serves (``streams/serving.py``)."""
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
        budget=LedgerBudget(catalog=state.catalog, ledger=state.spend, clock=clock),
        slots=settings.slots, reserve_price=settings.reserve_price, min_bid=settings.min_bid,
        max_bid=settings.max_bid, clock=clock, rng=np.random.default_rng(rng_seed),
        model_versions=models.versions,
    )
    return Serving(settings=settings, pipeline=pipeline, champion=models, batcher=batcher, fallback=fallback,
                   model_info=metrics.model, rng=np.random.default_rng(rng_seed))


def _calibration(settings: Settings) -> CalibrationMonitor:
    return CalibrationMonitor(window_s=settings.calibration_window_s,
                              bucket_s=min(settings.calibration_bucket_s, settings.calibration_window_s),
                              low=settings.calibration_low, high=settings.calibration_high,
                              min_positives=settings.calibration_min_positives)


def _catalog_checker(rt: Runtime, bootstrap: str | None) -> CatalogChecker:
    """The catalog check (outside Faust), its records getting the agents' poison-record handling too."""
    handler = rt.out.with_fault_marker(each_message(rt, handle_catalog))

    async def check_catalog(record: Any) -> None:
        await rt.out.handle_isolating(record.topic, handler, [RepairedEvent(RepairedMessage.of(record))])

    return CatalogChecker(rt.settings, bootstrap=bootstrap, check=check_catalog)


def _start_and_stop(app: faust.App, rt: Runtime, probes: Probes, *, checker: CatalogChecker,
                    aggregator: Aggregator | None) -> type[mode.Service]:
    """The service that starts the aggregator (when embedded), the replica, the catalog checker and the model
    watcher before the agents run (then warms the hot path and the producer up), and stops them after."""
    watcher = ModelWatcher(rt, rt.settings)

    class ReplicaService(mode.Service):
        async def on_start(self) -> None:
            if aggregator is not None:
                await aggregator.start()
                self.add_future(_log_first_publish(aggregator))
            await rt.replica.start()
            await checker.start()
            await checker.wait_caught_up()
            await watcher.start()
            log.info("warm-up: %d synthetic queries through the hot path", rt.warm_up())
            await _warm_producer(app)
            probes.warmed = True
            # the recovered state is long-lived: keep the cyclic GC from walking it on the hot path
            gc.freeze()

        async def on_stop(self) -> None:
            await watcher.stop()
            await checker.stop()
            await rt.replica.stop()
            if aggregator is not None:
                await aggregator.stop()
            if rt.repairer is not None:
                await rt.repairer.stop()

    return ReplicaService


async def _log_first_publish(aggregator: Aggregator, *, timeout_s: float = 120.0) -> None:
    """Say when this worker's aggregator first caught up with its share and published it (or that it has not).

    Not awaited by the start: the features published so far are on ``listing-stats`` already (the replica
    reads them before the worker is ready), and a start that waited for the aggregator group could wait
    for long (the embedded noida never evicts a member that exited without leaving, so a restarted
    worker's aggregator waits for that member's session; the commit-stall watchdog then restarted the
    worker again, in a loop: chaos t2)."""
    t0 = time.monotonic()
    if await aggregator.wait_published(timeout_s=timeout_s):
        log.info("aggregator: %d source partitions folded and published %.1f s after the start (%s)",
                 len(aggregator.marks()), time.monotonic() - t0, dict(aggregator.counts))
    else:
        log.warning("aggregator: not caught up %.0f s after the start (lag %d); folding on", timeout_s,
                    aggregator.lag())


async def _warm_producer(app: faust.App) -> None:
    """Fetch the output topics' metadata now: the first send to a topic waits for it otherwise."""
    producer = aiokafka_producer(app)
    for topic in ("auctions", "impressions", "labels", "billing", "orders", "shop-spend", "dead-letters",
                  "drift-alerts", "calibration-alerts"):
        await producer.partitions_for(topic)


def _committed_of(app: faust.App, topic: str, partition: int) -> int:
    return group_offsets(app.consumer)[1].get((topic, partition), 0)  # Faust's TP is a tuple of the two


async def _assigned(rt: Runtime, app_: Any, assigned: Any, **_: Any) -> None:
    # the replica reads billing, orders and labels of the partition numbers the worker group assigned us (queries,
    # clicks and purchases have equal partition counts, so Faust assigns each number of them together)
    own = {tp.partition for tp in app_.consumer.assignment() if tp.topic in GROUP_INPUTS}
    await rt.replica.own(own)


async def _revoked(rt: Runtime, app_: Any, revoked: Any, **_: Any) -> None:
    rt.billing_ready.difference_update(tp.partition for tp in revoked if tp.topic in ("clicks", "purchases"))
    # the next record of a partition assigned again starts at the committed offset, not after ours
    if rt.repairer is not None:
        rt.repairer.gaps.forget({(tp.topic, tp.partition) for tp in revoked})
