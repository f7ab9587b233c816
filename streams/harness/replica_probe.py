"""A replica alone: what replicating the topics costs one worker, apart from everything else it does.

A worker's replica reads every partition of the catalog and of what is published aggregated
(``bidder.replica.state.GLOBAL_TOPICS``) and its own partition numbers of ``billing``, ``orders`` and ``labels``.
This process runs the worker's :class:`streams.replicator.Replicator` and nothing else, with the worker's
settings, standing for a worker that owns the partition numbers ``own`` (:func:`own_share`: what one of N
workers gets), and reports the records it folded and the CPU it spent after catching up.
``bidder bench e2e --replica-probe`` runs it beside the workers under traffic (``docs/capacity.md``).

**Freshness.** The probe is "another worker": with the rolling features copied from ``listing-stats`` (the
state :func:`streams.replicator.worker_state` builds from the settings, as a worker's), it measures how long
a billed click takes to reach its copy (:class:`bidder.replica.freshness.FreshnessMeter`, fed each fetch
round after the state has taken the round in; the clicks are those of its own ``billing`` partitions, which
the aggregators of every worker fold): ``freshness`` = ``count`` clicks seen visible, ``p50_ms``,
``p99_ms``, ``max_ms`` of wall clock at visibility minus the click's event time, ``pending`` (never seen
visible), ``excluded`` (ledger lines that change no snapshot), ``cpu_s`` (the meter's own, left out of the
probe's ``cpu_s``). What was read while catching up does not count. With the features folded from the raw
records (``"fold"``) there is nothing to measure: ``freshness`` is null.

Run: ``python -m streams.harness.replica_probe --out FILE [--own 0,2]`` with ``BIDDER_KAFKA_BOOTSTRAP`` set; it writes
``FILE.ready`` once caught up and, on SIGTERM or SIGINT, ``FILE``: records folded and CPU seconds since
ready, by topic where the state counts them, and ``freshness``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bidder.replica.freshness import FreshnessMeter
from bidder.replica.state import SNAPSHOT_TOPIC
from bidder.settings import Settings
from streams.process import stop_process
from streams.replicator import Replicator, worker_state

__all__ = ["FreshnessTap", "ProbeProcess", "own_share", "probe_report", "run_probe"]


def own_share(partitions: int, workers: int) -> list[int]:
    """The partition numbers one of ``workers`` workers owns at most (every ``workers``-th, from 0).

    >>> own_share(4, 1), own_share(4, 2), own_share(4, 3)
    ([0, 1, 2, 3], [0, 2], [0, 3])
    """
    return list(range(0, partitions, max(workers, 1)))


class FreshnessTap:
    """A :class:`streams.replicator.RoundObserver`: keeps a round's ``billing`` and ``listing-stats`` records and
    feeds them to a :class:`FreshnessMeter` at the round's end (timing the meter's CPU apart)."""

    _TOPICS = frozenset(("billing", SNAPSHOT_TOPIC))

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.meter = FreshnessMeter()
        self.cpu_s = 0.0
        """CPU seconds the meter took since the last :meth:`restart`"""
        self._clock = clock
        self._round: list[tuple[str, int, int, bytes | None]] = []

    def record(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        if topic in self._TOPICS:
            self._round.append((topic, partition, offset, value))

    def round_end(self) -> None:
        t0 = time.process_time()
        records, self._round = self._round, []
        for r in records:
            self.meter.record(*r)
        self.meter.round_end(now=self._clock())
        self.cpu_s += time.process_time() - t0

    def restart(self) -> None:
        """Count from now on (what was read while catching up is history)."""
        self.meter.restart()
        self.cpu_s = 0.0

    def report(self) -> dict[str, Any]:
        return {**self.meter.report(), "cpu_s": round(self.cpu_s, 4)}


def probe_report(*, records: int, cpu_s: float, wall_s: float, counts: Counter[str],
                 freshness: dict[str, Any] | None = None, rounds: int = 0, fetches: int = 0,
                 value_bytes: int = 0) -> dict[str, Any]:
    """What the probe writes: records folded, CPU and wall seconds, CPU per record, fetch rounds and fetch requests
    a second, kilobytes of record values a second, state counts by kind, the freshness of the copied features
    (None: folded, nothing copied).

    >>> probe_report(records=1000, cpu_s=0.25, wall_s=10.0, counts=Counter(auctions=400))["cpu_us_per_record"]
    250.0
    """
    return {
        "records": records,
        "records_per_s": round(records / wall_s, 1) if wall_s > 0 else None,
        "cpu_s": round(cpu_s, 4),
        "wall_s": round(wall_s, 3),
        "cpu_share_of_core": round(cpu_s / wall_s, 4) if wall_s > 0 else None,
        "cpu_us_per_record": round(cpu_s / records * 1e6, 1) if records else None,
        "rounds_per_s": round(rounds / wall_s, 1) if wall_s > 0 else None,
        "fetches_per_s": round(fetches / wall_s, 1) if wall_s > 0 else None,
        "value_kb_per_s": round(value_bytes / 1000.0 / wall_s, 1) if wall_s > 0 else None,
        "counts": dict(counts),
        "freshness": freshness,
    }


async def run_probe(settings: Settings, *, bootstrap: str, out: Path, own: list[int] | None = None
                    ) -> dict[str, Any]:
    """Replicate (owning the partition numbers ``own``; None: all of them) until SIGTERM/SIGINT; write and return
    the report of what happened after catching up."""
    state = worker_state(settings)
    tap = FreshnessTap() if state.features is not None else None
    replica = Replicator(state, settings, bootstrap=bootstrap, observer=tap)
    await replica.own(range(settings.topic_partitions) if own is None else own)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await replica.start()
    if tap is not None:
        tap.restart()
    records0, counts0, rounds0, fetches0 = replica.records, Counter(state.counts), replica.rounds, replica.fetches()
    by_topic0 = Counter(replica.records_by_topic)
    bytes0 = replica.value_bytes
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.to_thread(out.with_suffix(out.suffix + ".ready").write_text, "ready\n")
    try:
        await stop.wait()
    finally:
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        await replica.stop()
    counts = Counter(state.counts)
    counts.subtract(counts0)
    meter_cpu = 0.0 if tap is None else tap.cpu_s
    report = probe_report(records=replica.records - records0, cpu_s=cpu - meter_cpu, wall_s=wall, counts=+counts,
                          freshness=None if tap is None else tap.report(), rounds=replica.rounds - rounds0,
                          fetches=replica.fetches() - fetches0, value_bytes=replica.value_bytes - bytes0)
    report["own_partitions"] = sorted(replica.own_partitions)
    by_topic = Counter(replica.records_by_topic)
    by_topic.subtract(by_topic0)
    report["records_per_s_by_topic"] = {t: round(n / wall, 2) for t, n in sorted((+by_topic).items()) if wall > 0}
    await asyncio.to_thread(out.write_bytes, orjson.dumps(report))
    return report


class ProbeProcess:
    """This module as a process: :meth:`start` returns its pid once it has caught up, :meth:`stop` its report."""

    def __init__(self, bootstrap: str, out: Path, *, own: list[int] | None = None) -> None:
        self.out = out
        self.own = own
        self._env = {**os.environ, "BIDDER_KAFKA_BOOTSTRAP": bootstrap}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> int:
        ready = self.out.with_suffix(self.out.suffix + ".ready")
        with self.out.with_suffix(".log").open("ab") as log:
            cmd = [sys.executable, "-m", "streams.harness.replica_probe", "--out", str(self.out),
                   *([] if self.own is None else ["--own", ",".join(map(str, self.own))])]
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the replica probe did not catch up; log: {self.out.with_suffix('.log')}")
            time.sleep(0.05)
        return self._proc.pid

    def stop(self) -> dict[str, Any] | None:
        """SIGTERM, then the report it wrote (None if it never started)."""
        if self._proc is None:
            return None
        stop_process(self._proc)
        report: dict[str, Any] = orjson.loads(self.out.read_bytes()) if self.out.exists() else {}
        return report

if __name__ == "__main__":
    import click

    @click.command()
    @click.option("--out", type=click.Path(path_type=Path), required=True, help="where to write the report (JSON)")
    @click.option("--own", default=None, help="the partition numbers the probe owns, comma-separated (default: all)")
    def _main(out: Path, own: str | None) -> None:
        settings = Settings()
        if not settings.kafka_bootstrap:
            raise click.UsageError("set BIDDER_KAFKA_BOOTSTRAP")
        parts = None if own is None else [int(p) for p in own.split(",") if p.strip()]
        asyncio.run(run_probe(settings, bootstrap=settings.kafka_bootstrap, out=out, own=parts))

    _main()
