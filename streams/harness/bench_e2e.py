"""``bidder bench e2e``: open-loop latency of the whole loop, beside an echo agent with the same settings.

For each offered rate: queries are produced at fixed times (open loop), the workers price them, and the
time from produce to the outcome being consumed is measured (``e2e``). In the same run, an echo agent
with the bidder's exact client settings moves same-sized messages through Kafka and back (``echo``):
the floor the Kafka path sets. ``model`` is the in-worker pipeline time from each outcome.
``--sweep`` repeats at rising rates and reports the highest whose e2e p99 stays <= 50 ms with nothing lost.

``workers`` (``--workers N``, default 1) worker processes share the queries as one consumer group (each with
its own web port and log). Traffic starts once every one is ready and the group has settled: stable, every
worker a member, every ``queries`` partition assigned (the group rebalances as each one joins).

Each rate also reports where every query went, read from the topics (``accounting``: answered,
dead-lettered, still in flight behind the worker group's committed offsets, lost) and the CPU each
process spent per answered query over the traffic window (``cpu_ms_per_query``: worker, broker, and
the driver, this process; ``worker`` is all the workers together, and ``per_worker`` has each one's
``cpu_share_of_core`` and ``cpu_ms_per_query``, its CPU per query the group answered). ``kernel`` is
``bidder bench kernel`` of the worker's family, run in the same invocation before any traffic:
``kernel_qps`` = 1000 / pipeline p50 is what one core does in-process.

With ``replica_probe`` a replica runs alone beside the workers (:mod:`streams.harness.replica_probe`), started
and caught up before each rate's traffic: ``replica`` is what replicating the topics costs one worker at
that rate (records folded per second, CPU per record, and ``cpu_ms_per_query["replica"]``), owning the
partition numbers one of the ``workers`` owns (``own_share``: its ``billing``, ``orders`` and ``labels``). As
"another worker", it also reports how fresh its copy of the aggregated features is (``replica["freshness"]``:
a billed click until a ``listing-stats`` snapshot covering it is in the copy; null while the features are
folded from the raw records).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bidder.events import encode
from bidder.settings import Settings
from streams.accounting import account_queries, topic_marks
from streams.cpu_meter import CpuMeter, local_broker_pid
from streams.echo import ECHO_IN, ECHO_OUT
from streams.harness.bench_kernel import run_bench as run_kernel_bench
from streams.harness.market import World, WorldConfig
from streams.harness.replica_probe import ProbeProcess, own_share
from streams.harness.simulate import run_simulation
from streams.harness.simulator import Simulator
from streams.process import WorkerProcess, stop_process
from streams.producer import EventProducer
from streams.tail import tail_consumer

__all__ = ["percentiles", "run_bench", "wait_group_settled"]

P99_LIMIT_MS = 50.0
log = logging.getLogger(__name__)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    a = np.asarray(values)
    return {f"p{k}_ms": round(float(np.percentile(a, q)), 3) for k, q in (("50", 50), ("99", 99), ("999", 99.9))}


async def _ensure_echo_topics(settings: Settings, bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.kafka_config import aiokafka_admin_kwargs

    admin = AIOKafkaAdminClient(**aiokafka_admin_kwargs(settings, bootstrap=bootstrap))
    await admin.start()
    try:
        have = set(await admin.list_topics())
        new = [NewTopic(t, settings.topic_partitions, settings.topic_replication) for t in (ECHO_IN, ECHO_OUT)
               if t not in have]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def _group_members(settings: Settings, bootstrap: str, group: str) -> tuple[str, list[set[int]]] | None:
    """The group's state and each member's ``queries`` partitions (None: the broker did not say)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    from streams.kafka_config import aiokafka_admin_kwargs

    admin = AIOKafkaAdminClient(**aiokafka_admin_kwargs(settings, bootstrap=bootstrap))
    await admin.start()
    try:
        for response in await admin.describe_consumer_groups([group]):
            for error, name, state, *_, members in (tuple(g)[:6] for g in response.groups):
                if name != group or error:
                    continue
                owned = []
                for member in members:
                    assigned = ConsumerProtocolMemberAssignment.decode(member[4]) if member[4] else None
                    owned.append({p for topic, parts in (assigned.assignment if assigned else [])
                                  if topic == "queries" for p in parts})
                return str(state), owned
        return None
    finally:
        await admin.close()


async def wait_group_settled(settings: Settings, bootstrap: str, *, group: str, members: int,
                             timeout_s: float = 120.0, hold_s: float = 1.0) -> bool:
    """Wait until ``group`` is stable with ``members`` members that own every ``queries`` partition, twice
    ``hold_s`` apart (a worker that joins late starts another rebalance). False on timeout."""
    consumer = await tail_consumer(settings, bootstrap, ["queries"])
    try:
        partitions = set(consumer.partitions_for_topic("queries") or ())
    finally:
        await consumer.stop()
    deadline = time.monotonic() + timeout_s
    seen: Any = None
    settled_once = False
    while time.monotonic() < deadline:
        try:
            seen = await _group_members(settings, bootstrap, group)
        except Exception as err:  # a broker that cannot describe groups: retried until the timeout
            seen = repr(err)
        settled = (isinstance(seen, tuple) and seen[0] == "Stable" and len(seen[1]) == members
                   and set().union(*seen[1]) >= partitions)
        if settled and settled_once:
            return True
        settled_once = settled
        await asyncio.sleep(hold_s)
    log.warning("group %s not settled with %d members after %.0fs: %s", group, members, timeout_s, seen)
    return False


async def _echo(settings: Settings, bootstrap: str, *, rate: float, seconds: float, payload: bytes) -> dict[str, Any]:
    consumer = await tail_consumer(settings, bootstrap, [ECHO_OUT])
    sent_at: dict[bytes, float] = {}
    lat: list[float] = []

    async def receive() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=20)).values():
                for r in records:
                    t = sent_at.pop(r.key, None)
                    if t is not None:
                        lat.append((time.perf_counter() - t) * 1000.0)

    task = asyncio.create_task(receive())
    try:
        async with EventProducer(settings, bootstrap=bootstrap) as producer:
            deadline = time.monotonic() + 90  # warm-up: the echo worker has joined once a probe returns
            i = 0
            while not lat and time.monotonic() < deadline:
                key = f"warm-{i}".encode()
                sent_at[key] = time.perf_counter()
                await producer.send_raw(ECHO_IN, key, payload)
                i += 1
                await asyncio.sleep(0.2)
            if not lat:
                raise RuntimeError("echo agent never answered")
            lat.clear()
            sent_at.clear()
            t0 = time.perf_counter()
            n = int(rate * seconds)
            for j in range(n):
                delay = t0 + j / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                key = f"e-{j}".encode()
                sent_at[key] = time.perf_counter()
                await producer.send_nowait(ECHO_IN, key, payload)
            await producer.flush()
            end = time.perf_counter() + 5
            while sent_at and time.perf_counter() < end:  # noqa: ASYNC110 - polling a dict
                await asyncio.sleep(0.05)
        return {**percentiles(lat), "sent": n, "received": len(lat)}
    finally:
        task.cancel()
        await consumer.stop()


async def _bidder(settings: Settings, bootstrap: str, *, rate: float, seconds: float, run: int,
                  start_workers: Callable[[], Any], worker_pids: Callable[[], list[int]],
                  probe: ProbeProcess | None = None) -> dict[str, Any]:
    first = run == 0
    marks = await topic_marks(settings, bootstrap)
    meter: dict[str, CpuMeter] = {}

    async def traffic_starts() -> None:
        if first:
            await start_workers()
        pids: dict[str, int | list[int] | None] = {"worker": worker_pids(), "broker": local_broker_pid(bootstrap),
                                                   "driver": os.getpid()}
        if probe is not None:
            pids["replica"] = await asyncio.to_thread(probe.start)
        meter["m"] = CpuMeter(pids).start()

    try:
        # one world (its catalog is sent once), new traffic per rate: query ids must not repeat across rates
        r = await run_simulation(settings, bootstrap=bootstrap, rate=rate, duration_s=seconds, seed=7,
                                 traffic_seed=8 + 1000 * run, send_catalog=first, after_catalog=traffic_starts,
                                 drain_s=10.0)
    finally:
        cpu = meter.get("m")
        if cpu is not None:
            cpu.stop()
        replica = await asyncio.to_thread(probe.stop) if probe is not None else None
    assert cpu is not None
    sent = r.sent.get("queries", 0)
    acct = await account_queries(settings, bootstrap, marks=marks, sent=sent, group=settings.app_id)
    return {
        "e2e": percentiles(r.latencies_ms),
        "model": percentiles(r.pipeline_ms),
        "rate_offered": rate,
        "rate_achieved": round(r.rate_achieved_qps, 1),
        "sent": sent,
        "received": len(r.latencies_ms),
        "first_10s": percentiles(r.window(0.0, 10.0)),
        "last_10s": percentiles(r.window(seconds - 10.0, seconds)),
        "accounting": acct.as_dict(),
        "cpu_ms_per_query": cpu.ms_per(acct.answered),
        "cpu_share_of_core": cpu.share_of_core(),
        "per_worker": [{"cpu_share_of_core": share, "cpu_ms_per_query": ms} for share, ms in
                       zip(cpu.part_shares("worker"), cpu.part_ms_per("worker", acct.answered), strict=True)],
        **({} if replica is None else {"replica": replica}),
    }


def run_bench(settings: Settings, *, bootstrap: str, rates: list[float], seconds: float,
              echo_rate: float | None = None, workdir: Path | None = None,
              progress: Any = None, replica_probe: bool = False, workers: int = 1) -> dict[str, Any]:
    """Echo floor, then the bidder (``workers`` worker processes) at each rate; one dict per rate plus the
    summary."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bidder-bench-"))
    try:
        return _run_bench(settings, bootstrap=bootstrap, rates=rates, seconds=seconds, echo_rate=echo_rate,
                          workdir=workdir, progress=progress, replica_probe=replica_probe, workers=workers)
    finally:  # logs of the echo agent and the worker
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_bench(settings: Settings, *, bootstrap: str, rates: list[float], seconds: float,
               echo_rate: float | None, workdir: Path, progress: Any, replica_probe: bool,
               workers: int) -> dict[str, Any]:
    if progress:
        progress(f"kernel ({settings.model_family}, in-process, one core)")
    kernel = run_kernel_bench(family=settings.model_family, iterations=1000, warmup=100,
                              intra_op_threads=settings.intra_op_threads,
                              inter_op_threads=settings.inter_op_threads)
    kernel_qps = round(1000.0 / kernel["pipeline"]["p50_ms"], 1)
    env = {**os.environ, "BIDDER_KAFKA_BOOTSTRAP": bootstrap}
    asyncio.run(_ensure_echo_topics(settings, bootstrap))
    world = World.generate(WorldConfig(), seed=7)
    payload = encode(Simulator(world, rng=np.random.default_rng(0)).next_query(now=time.time()))
    with (workdir / "echo.log").open("ab") as log:
        echo_proc = subprocess.Popen([sys.executable, "-m", "streams.echo"], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
    try:
        if progress:
            progress("echo agent")
        echo = asyncio.run(_echo(settings, bootstrap, rate=echo_rate or rates[0], seconds=seconds, payload=payload))
    finally:
        stop_process(echo_proc, timeout_s=10.0)
    procs: list[WorkerProcess] = []

    async def start_workers() -> None:
        names = ["worker.log"] if workers == 1 else [f"worker-{i}.log" for i in range(workers)]
        procs.extend(WorkerProcess.start(bootstrap=bootstrap, log_path=workdir / name) for name in names)
        await asyncio.gather(*(asyncio.to_thread(w.wait_ready) for w in procs))
        if workers > 1:  # the group rebalanced as they joined: traffic once every one of them owns its share
            if progress:
                progress(f"{workers} workers ready; waiting for the group to settle")
            t0 = time.monotonic()
            if not await wait_group_settled(settings, bootstrap, group=settings.app_id, members=workers):
                raise RuntimeError(f"the worker group did not settle with {workers} members; logs in {workdir}")
            if progress:
                progress(f"group settled after {time.monotonic() - t0:.1f} s")

    runs = []
    try:
        for i, rate in enumerate(rates):
            if progress:
                progress(f"bidder at {rate:g} q/s")
            probe = (ProbeProcess(bootstrap, workdir / f"replica-{i}.json",
                                  own=own_share(settings.topic_partitions, workers)) if replica_probe else None)
            runs.append(asyncio.run(_bidder(settings, bootstrap, rate=rate, seconds=seconds, run=i,
                                            start_workers=start_workers,
                                            worker_pids=lambda: [w.process.pid for w in procs], probe=probe)))
    finally:
        for w in procs:
            w.stop(timeout_s=10.0)
    ok = [r["rate_offered"] for r in runs if r["e2e"]["p99_ms"] is not None
          and r["e2e"]["p99_ms"] <= P99_LIMIT_MS and r["accounting"]["lost"] == 0
          and r["accounting"]["in_flight"] == 0 and r["received"] >= 0.99 * r["sent"]]
    head = runs[0]
    e2e_p99, model_p99, echo_p99 = head["e2e"]["p99_ms"], head["model"]["p99_ms"], echo["p99_ms"]
    return {
        **head,
        "echo": echo,
        "runs": runs,
        "max_rate_p99_le_50ms": max(ok) if ok else None,
        "kernel": {"family": kernel["family"], "pipeline_p50_ms": kernel["pipeline"]["p50_ms"],
                   "pipeline_p99_ms": kernel["pipeline"]["p99_ms"], "bare_p50_ms": kernel["bare"]["p50_ms"]},
        "kernel_qps": kernel_qps,
        "overhead_vs_echo": (None if None in (e2e_p99, model_p99, echo_p99)
                             else round((e2e_p99 - model_p99) / echo_p99, 3)),
        "load_average": list(os.getloadavg()),
        "workers": workers,
    }
