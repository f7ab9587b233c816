"""Drives the marketplace simulator over Kafka: catalog, open-loop queries, clicks and purchases.

Open loop: query ``i`` is sent at ``t0 + i / rate`` whatever the bidder is doing, so queueing delay
shows up in the latency instead of slowing the sender down. Outcomes are read from ``auctions``
(every partition, no consumer group) and answered with clicks and, later, purchases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bidder.events import encode
from bidder.replica.history import HISTORY_TOPIC, ListingHistory, shipped_history, world_key
from bidder.settings import Settings
from streams.harness.market import World, WorldConfig
from streams.harness.simulator import Simulator
from streams.producer import EventProducer, key_of, topic_of
from streams.tail import tail_consumer

__all__ = ["HistoryExistsError", "SimulationReport", "malformed_query", "run_simulation", "tail_consumer",
           "world_history", "write_history"]


class HistoryExistsError(RuntimeError):
    """``listing-history`` already holds records: a second history would be counted on top of the first."""


@dataclass
class SimulationReport:
    """What the simulator sent and saw; ``latencies_ms`` is query sent -> outcome read."""

    sent: dict[str, int] = field(default_factory=dict)
    outcomes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    sent_at_s: list[float] = field(default_factory=list)
    """for each latency, when its query was sent (seconds after traffic started)"""
    pipeline_ms: list[float] = field(default_factory=list)
    """in-worker pipeline time of each outcome (``timings_ms.total``)"""
    send_errors: int = 0
    elapsed_s: float = 0.0
    """from the first query to the end of the run, the drain included (purchases due after the traffic)"""
    sending_s: float = 0.0
    """from the first query to the last one sent"""
    answered_until_s: float = 0.0
    """from the first query to the last outcome answered"""
    simulator: Simulator | None = None

    @property
    def rate_offered_qps(self) -> float:
        """Queries sent per second while sending."""
        n = self.sent.get("queries", 0)
        return n / self.sending_s if self.sending_s > 0 else float("nan")

    @property
    def rate_achieved_qps(self) -> float:
        """Outcomes per second up to the last one: the offered rate when the worker kept up, lower when the
        answers trailed behind (not diluted by the drain's wait for purchases due after the traffic)."""
        n = len(self.latencies_ms)
        return n / max(self.answered_until_s, self.sending_s, 1e-9) if n else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def window(self, start_s: float, end_s: float) -> list[float]:
        """Latencies of the queries sent between ``start_s`` and ``end_s`` after traffic started."""
        return [lat for lat, at in zip(self.latencies_ms, self.sent_at_s, strict=True) if start_s <= at < end_s]


def malformed_query(query: Any, i: int) -> tuple[str, bytes]:
    """A broken version of a query (the kinds rotate), for demos of the dead-letter path."""
    good = encode(query)
    kinds = [
        ("invalid_json", good[: len(good) // 2]),
        ("out_of_range", good.replace(b'"relevance":[', b'"relevance":[-1.0,', 1)
         .replace(b'"listing_id":[', b'"listing_id":[1,', 1)),
        ("duplicate_candidates", good.replace(b'"listing_id":[', b'"listing_id":[7,7,', 1)
         .replace(b'"relevance":[', b'"relevance":[0.5,0.5,', 1)),
        ("missing_field", good.replace(b'"user_id":', b'"user":', 1)),
    ]
    return kinds[i % len(kinds)]


def world_history(settings: Settings, *, world: WorldConfig, seed: int, hours: float | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ListingHistory | None:
    """The past of the seeded ``world`` for a live run: ``hours`` of it simulated offline, or (``None``) the
    history shipped beside the models when it is this world's and has this worker's half-life, else two
    hours simulated. ``hours=0``: no past."""
    if hours is None:
        shipped = shipped_history(settings.model_dir, world=world_key(world, seed))
        if shipped is not None and shipped.half_life_s == settings.feature_half_life_s:
            return shipped
        hours = 2.0
    if hours <= 0:
        return None
    from onnx_models.traffic import SimConfig, simulate  # the offline world: numpy only

    cfg = SimConfig(world_seed=seed, world=world, n_warmup=int(hours * 3600 * world.query_rate_qps), n_log=0,
                    rate_qps=world.query_rate_qps, half_life_s=settings.feature_half_life_s,
                    prior_ctr=settings.prior_ctr, prior_cvr=settings.prior_cvr,
                    prior_strength=settings.prior_strength)
    return simulate(cfg, seed=seed, progress=progress).history


async def write_history(settings: Settings, bootstrap: str | None, history: ListingHistory, *, end: float) -> int:
    """Write ``history`` (the past ending at ``end``) to ``listing-history``, one record per listing; returns
    how many. Refuses a topic that holds records already (workers add every record they read)."""
    probe = await tail_consumer(settings, bootstrap, [HISTORY_TOPIC])
    try:
        ends = await probe.end_offsets(list(probe.assignment()))
    finally:
        await probe.stop()
    if any(ends.values()):
        raise HistoryExistsError(f"{HISTORY_TOPIC} already holds {sum(ends.values())} records; a history is "
                                 "written once, before live traffic (recreate the topic to write another)")
    producer = EventProducer(settings, bootstrap=bootstrap)
    await producer.start()
    try:
        acks = [await producer.send_nowait(HISTORY_TOPIC, str(r["listing_id"]).encode(), orjson.dumps(r))
                for r in history.records(end=end)]
        await producer.flush()
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return len(acks)


async def run_simulation(
    settings: Settings,
    *,
    bootstrap: str | None,
    rate: float,
    duration_s: float,
    seed: int = 7,
    world: WorldConfig | None = None,
    n_candidates: int = 600,
    purchase_delay_mean_s: float | None = None,
    drain_s: float = 10.0,
    send_catalog: bool = True,
    after_catalog: Callable[[], Awaitable[None]] | None = None,
    invalid_every: int = 0,
    on_tick: Callable[[SimulationReport], None] | None = None,
    clock: Callable[[], float] = time.time,
    history: ListingHistory | None = None,
    traffic_seed: int | None = None,
) -> SimulationReport:
    """Run the simulator for ``duration_s`` seconds at ``rate`` queries/s, then drain.

    ``seed`` draws the world (its catalog); ``traffic_seed`` (default ``seed + 1``) the queries and the
    buyers' answers, query ids included: runs against the same topics need different ones, or a later
    run's query ids repeat an earlier run's outcomes.

    ``after_catalog`` runs once the catalog is acknowledged (the demo starts its worker there);
    ``invalid_every=k`` replaces every k-th query with a malformed one (kept in ``sent``); ``history`` (the
    world's past, :func:`write_history`) is written after the catalog, ending when the traffic starts.
    """
    rng = np.random.default_rng(seed + 1 if traffic_seed is None else traffic_seed)
    sim = Simulator(World.generate(world or WorldConfig(), seed=seed), rng=rng,
                    n_candidates=n_candidates, purchase_delay_mean_s=purchase_delay_mean_s)
    report = SimulationReport(simulator=sim)
    sent_at: dict[str, float] = {}
    t_traffic = {"t0": 0.0}
    producer = EventProducer(settings, bootstrap=bootstrap)
    await producer.start()
    consumer = await tail_consumer(settings, bootstrap, ["auctions"])
    acks: list[asyncio.Future[Any]] = []

    async def send(event: Any) -> None:
        acks.append(await producer.send_nowait(topic_of(event), key_of(event), encode(event)))

    async def answer_outcomes() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=50)
            now = clock()
            for records in batches.values():
                for r in records:
                    outcome = orjson.loads(r.value)
                    t_sent = sent_at.pop(str(outcome.get("query_id")), None)
                    if t_sent is None:
                        continue
                    t_now = time.perf_counter()
                    report.latencies_ms.append((t_now - t_sent) * 1000.0)
                    report.answered_until_s = t_now - t_traffic["t0"]
                    report.sent_at_s.append(t_sent - t_traffic["t0"])
                    report.pipeline_ms.append(float(outcome.get("timings_ms", {}).get("total", 0.0)))
                    report.outcomes += 1
                    for click in sim.answer(outcome, now=now):
                        await send(click)
            for purchase in sim.due_purchases(now=clock()):
                await send(purchase)

    try:
        if send_catalog:
            shops, listings = sim.catalog(now=clock())
            for ev in [*shops, *listings]:
                await send(ev)
            await producer.flush()
            await asyncio.gather(*acks)
        if history is not None:
            sim.sent["listing_history"] = await write_history(settings, bootstrap, history, end=clock())
        if after_catalog is not None:
            await after_catalog()
        answering = asyncio.create_task(answer_outcomes())
        t0 = t_traffic["t0"] = time.perf_counter()
        n = int(rate * duration_s)
        next_tick = t0
        for i in range(n):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            query = sim.next_query(now=clock())
            if invalid_every and i % invalid_every == invalid_every - 1:
                kind, raw = malformed_query(query, i)
                sim.sent["queries"] -= 1
                sim.sent[f"invalid_queries:{kind}"] += 1
                acks.append(await producer.send_nowait("queries", query.query_id.encode(), raw))
                continue
            sent_at[query.query_id] = time.perf_counter()
            await send(query)
            if on_tick is not None and time.perf_counter() >= next_tick:
                report.sent = dict(sim.sent)
                report.elapsed_s = time.perf_counter() - t0
                on_tick(report)
                next_tick += 0.5
            if len(acks) > 2000:
                done = [a for a in acks if a.done()]
                report.send_errors += sum(1 for a in done if a.exception() is not None)
                acks[:] = [a for a in acks if not a.done()]
        report.sending_s = time.perf_counter() - t0
        # drain: outcomes still in flight, then purchases still due
        deadline = time.perf_counter() + drain_s
        while (sent_at or sim.pending_purchases) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            if on_tick is not None:
                report.sent = dict(sim.sent)
                on_tick(report)
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
        await producer.flush()
        results = await asyncio.gather(*acks, return_exceptions=True)
        report.send_errors += sum(1 for r in results if isinstance(r, BaseException))
        report.elapsed_s = time.perf_counter() - t0
        report.sent = dict(sim.sent)
        report.sent["queries_unanswered"] = len(sent_at)
        return report
    finally:
        await consumer.stop()
        await producer.stop()
