"""``bidder demo``: broker, topics, a worker and the simulator, with a live table and a reconciled summary.

After the traffic stops the demo waits for the worker to drain: until nothing is left on the input
topics past the worker group's committed offsets and no output has arrived for a while, at most
``drain_timeout_s`` (stated, with a live count of what is still in flight). Then, for queries, clicks
(resends included) and purchases, read from the topics (``streams/accounting.py``)::

    sent = handled + dead-lettered + in flight + lost

handled: distinct auction outcomes; ledger lines (charged + unbilled + duplicate); conversions.
In flight: unhandled records the group's backlog explains (not yet taken by the agent). Lost: the
rest. The checks, each failing with a one-line reason (``failed_checks``, exit 1):

* ``nothing_lost``: lost = 0 everywhere, and no more outputs than records sent;
* ``no_double_charge``, ``within_budgets``: no click id charged twice; every shop's charges <= its budget;
* ``drained``: nothing still in flight once the drain ended (a worker that fell behind);
* ``kept_up``: the queries sent in the last 10 s of traffic were answered about as fast as those of the
  first 10 s (p50 at most 1.5x + 10 ms): a worker that falls behind builds a backlog, and its latency
  grows through the run;
* ``no_send_errors``: every record the simulator sent was acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import Progress
from rich.table import Table

from bidder.replica.history import ListingHistory
from bidder.settings import Settings
from streams.accounting import InputAccount, group_backlogs
from streams.cpu_meter import CpuMeter, local_broker_pid
from streams.harness.market import WorldConfig
from streams.harness.simulate import SimulationReport, run_simulation, world_history
from streams.monitor import OutputTally, TopicMonitor
from streams.process import WorkerProcess

__all__ = ["INPUTS", "DemoSummary", "run_demo"]

INPUTS = ("queries", "clicks", "purchases")
"""the input topics whose every record the summary accounts for"""


@dataclass
class DemoSummary:
    """The reconciled result of a demo run."""

    numbers: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


KEPT_UP_RATIO = 1.5
KEPT_UP_SLACK_MS = 10.0


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * q))], 2)


def kept_up(first_10s: list[float], last_10s: list[float]) -> tuple[bool, str]:
    """Whether the last 10 s of traffic were answered about as fast as the first 10 s, and why not.

    >>> kept_up([10.0] * 50, [12.0] * 50)
    (True, '')
    >>> kept_up([10.0] * 50, [900.0] * 50)[1]
    'fell behind: latency p50 of the last 10 s 900.0 ms > 1.5 x 10.0 ms of the first 10 s + 10 ms'
    """
    first, last = _p(first_10s, 0.5), _p(last_10s, 0.5)
    if first is None or last is None:
        return False, "fell behind: no query of the first or last 10 s was answered"
    if last > KEPT_UP_RATIO * first + KEPT_UP_SLACK_MS:
        return False, (f"fell behind: latency p50 of the last 10 s {last} ms > {KEPT_UP_RATIO} x {first} ms "
                       f"of the first 10 s + {KEPT_UP_SLACK_MS:.0f} ms")
    return True, ""


@dataclass
class Drain:
    """How the drain after the traffic went."""

    backlog: dict[str, int] = field(default_factory=dict)
    """records past the worker group's committed offsets when it ended, by input topic"""
    seconds: float = 0.0
    """from the simulator's last record until nothing was in flight (or the bound)"""
    bound_s: float = 60.0
    """the bound on the whole drain, counted from the end of the query traffic"""
    done: bool = True
    tail_s: float = 0.0
    """from the end of the query traffic until the simulator's last record (clicks on the last outcomes,
    purchases a few seconds after their clicks)"""


_ONE = {"queries": "query", "clicks": "click", "purchases": "purchase"}


def _count(n: int, topic: str) -> str:
    return f"{n} {_ONE.get(topic, topic) if n == 1 else topic}"


def calibration(tally: OutputTally) -> dict[str, dict[str, Any]]:
    """Mean prediction over observed rate (the calibration monitor's ratio; 1 = calibrated) on the demo's labels,
    every one matured once the demo drained: clicks are answered at once and every purchase is sent before
    the simulator stops. CTR over impressions, CVR over decided clicks; ``interval`` is the ratio's ~95 %
    range from the positives' count alone (Poisson), so a reader can tell noise from miscalibration."""
    out: dict[str, dict[str, Any]] = {}
    clicks = tally.clicks_decided
    for target, predicted, positives, n in (
            ("ctr", tally.pctr_sum, clicks, tally.impressions),
            ("cvr", tally.pcvr_clicked_sum, len(tally.conversions), clicks)):
        if n == 0 or positives == 0:
            continue
        ratio = predicted / positives
        spread = 1.96 / positives ** 0.5
        out[target] = {"ratio": round(ratio, 4), "predicted": round(predicted / n, 5),
                       "observed": round(positives / n, 5), "positives": positives, "n": n,
                       "interval": [round(ratio / (1 + spread), 3), round(ratio / max(1 - spread, 1e-9), 3)]}
    return out


def summarize(report: SimulationReport, tally: OutputTally, budgets: dict[int, float],
              seconds: float | None = None, drain: Drain | None = None) -> DemoSummary:
    sent = report.sent
    invalid_queries = sum(v for k, v in sent.items() if k.startswith("invalid_queries"))
    queries_sent = sent.get("queries", 0) + invalid_queries
    clicks_sent = sent.get("clicks", 0) + sent.get("clicks_resent", 0)
    overspend = {s: round(c - budgets.get(s, 0.0), 6) for s, c in tally.charged_by_shop.items()
                 if c > budgets.get(s, 0.0) + 1e-6}
    lat = sorted(report.latencies_ms)
    impressions = max(tally.impressions, 1)
    span = seconds if seconds is not None else max(report.sent_at_s, default=0.0)
    first_10s, last_10s = report.window(0.0, 10.0), report.window(span - 10.0, span)
    up, behind = kept_up(first_10s, last_10s)
    n: dict[str, Any] = {
        "queries_sent": queries_sent,
        "queries_invalid_sent": invalid_queries,
        "outcomes": len(tally.outcome_ids),
        "outcomes_repeated": tally.outcomes_repeated,
        "queries_dead_lettered": tally.dead_lettered("queries"),
        "clicks_sent": clicks_sent,
        "clicks_charged": tally.ledger["charged"],
        "clicks_unbilled": tally.ledger["unbilled"],
        "clicks_duplicate_ignored": tally.ledger["duplicate"],
        "clicks_double_entries": tally.ledger["double_entry"],
        "clicks_dead_lettered": tally.dead_lettered("clicks"),
        "purchases_sent": sent.get("purchases", 0),
        "conversions": len(tally.conversions),
        "purchases_dead_lettered": tally.dead_lettered("purchases"),
        "revenue": round(tally.revenue, 4),
        "unbilled_value": round(tally.unbilled_value, 4),
        "budget_total": round(sum(budgets.values()), 2),
        "shops_over_budget": len(overspend),
        "ctr": round(tally.clicks_decided / impressions, 5),
        "cvr": round(len(tally.conversions) / max(tally.clicks_decided, 1), 5),
        "mean_pctr": round(tally.pctr_sum / impressions, 5),
        "mean_pcvr_clicked": round(tally.pcvr_clicked_sum / max(tally.clicks_decided, 1), 5),
        "calibration": calibration(tally),
        "latency_p50_ms": _p(lat, 0.5),
        "latency_p99_ms": _p(lat, 0.99),
        "rate_offered_qps": round(report.rate_offered_qps, 1),
        "rate_achieved_qps": round(report.rate_achieved_qps, 1),
        "latency_first_10s_p50_ms": _p(first_10s, 0.5),
        "latency_first_10s_p99_ms": _p(first_10s, 0.99),
        "latency_last_10s_p50_ms": _p(last_10s, 0.5),
        "latency_last_10s_p99_ms": _p(last_10s, 0.99),
        "dead_letters": {f"{t}:{r}": c for (t, r), c in sorted(tally.dead_letters.items())},
        "model_versions": dict(tally.model_versions),
        "drift_alerts_open": sorted(k for k, v in tally.drift_alerts.items() if v > 0),
        "drift_alerts_open_from_warm_up": sorted(k for k, v in tally.drift_alerts_warm_up.items() if v > 0),
        "drift_events": tally.drift_events,
        "calibration_alerts_open": sorted(k for k, v in tally.calibration_alerts.items() if v > 0),
        "send_errors": report.send_errors,
    }
    drain = drain if drain is not None else Drain()
    handled = {"queries": n["outcomes"],
               "clicks": n["clicks_charged"] + n["clicks_unbilled"] + n["clicks_duplicate_ignored"],
               "purchases": n["conversions"]}
    sent_by = {"queries": queries_sent, "clicks": clicks_sent, "purchases": n["purchases_sent"]}
    accounts = {t: InputAccount.of(t, sent=sent_by[t], handled=handled[t], dead_lettered=n[f"{t}_dead_lettered"],
                                   backlog=drain.backlog.get(t, 0)) for t in INPUTS}
    n["accounting"] = {t: {k: v for k, v in a.as_dict().items() if k != "topic"} for t, a in accounts.items()}
    n["drain_s"] = round(drain.seconds, 1)
    n["traffic_tail_s"] = round(drain.tail_s, 1)
    n["drain_bound_s"] = drain.bound_s
    lost = {t: a.lost for t, a in accounts.items() if a.lost}
    excess = {t: a.excess for t, a in accounts.items() if a.excess}
    in_flight = {t: a.in_flight for t, a in accounts.items() if a.in_flight}
    checks = {
        "nothing_lost": not lost and not excess,
        "no_double_charge": n["clicks_double_entries"] == 0,
        "within_budgets": not overspend,
        "drained": not in_flight,
        "kept_up": up,
        "no_send_errors": report.send_errors == 0,
    }
    reasons = {
        "nothing_lost": "; ".join(
            [*(f"lost: {_count(k, t)} neither handled, dead-lettered nor waiting on '{t}'"
               for t, k in lost.items()),
             *(f"{t}: {k} more handled or dead-lettered than sent" for t, k in excess.items())]),
        "no_double_charge": f"{n['clicks_double_entries']} clicks charged twice",
        "within_budgets": f"{len(overspend)} shops over budget",
        "drained": "fell behind: " + ", ".join(_count(k, t) for t, k in in_flight.items())
                   + " still in flight (on their topics, not yet taken by the worker) after draining "
                     f"{drain.tail_s + drain.seconds:.1f} s (bound {drain.bound_s:g} s)",
        "no_send_errors": f"{report.send_errors} sends failed",
        "kept_up": behind,
    }
    n["failed_checks"] = [reasons[k] for k, ok in checks.items() if not ok]
    return DemoSummary(numbers=n, checks=checks)


def live_table(report: SimulationReport, tally: OutputTally, started: float,
               budgets: dict[int, float] | None = None, status: str | None = None) -> Table:
    t = Table(title="bidder demo (live)", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    elapsed = max(time.monotonic() - started, 1e-9)
    lat = sorted(report.latencies_ms[-2000:])
    impressions = max(tally.impressions, 1)
    rows = [
        ("queries/s (outcomes)", f"{len(tally.outcome_ids) / elapsed:.1f}"),
        ("latency p50 / p99 ms", f"{lat[len(lat) // 2]:.1f} / {lat[int(len(lat) * 0.99)]:.1f}" if lat else "-"),
        ("queries sent", str(report.sent.get("queries", 0))),
        ("auction outcomes", str(len(tally.outcome_ids))),
        ("CTR (clicks / impressions)", f"{tally.clicks_decided / impressions:.4f}"),
        ("CVR (purchases / clicks)", f"{len(tally.conversions) / max(tally.clicks_decided, 1):.4f}"),
        ("calibration ctr / cvr (predicted / observed)",
         " / ".join(f"{c[t]['ratio']:.2f}" if t in c else "-" for c in [calibration(tally)] for t in ("ctr", "cvr"))),
        ("revenue", f"{tally.revenue:.2f}"),
        ("spend / total daily budget", f"{tally.revenue:.2f} / {sum((budgets or {}).values()):.0f}"),
        ("shops at budget", str(sum(1 for s, c in tally.charged_by_shop.items()
                                    if budgets and c >= budgets.get(s, 0.0) - 0.01))),
        ("unbilled (past budget)", f"{tally.unbilled_value:.2f}"),
        ("dead letters", str(sum(tally.dead_letters.values()))),
        ("drift alerts open", ", ".join(k for k, v in tally.drift_alerts.items() if v > 0) or "none"),
        ("drift alerts opened in warm-up", str(sum(1 for v in tally.drift_alerts_warm_up.values() if v > 0))),
        ("calibration alerts open", ", ".join(k for k, v in tally.calibration_alerts.items() if v > 0) or "none"),
        ("model versions", ", ".join(tally.model_versions) or "-"),
    ]
    if status is not None:
        rows.insert(0, ("status", status))
    for k, v in rows:
        t.add_row(k, v)
    return t


def summary_table(summary: DemoSummary) -> Table:
    t = Table(title="demo summary (from the topics)")
    t.add_column("number")
    t.add_column("value", justify="right")
    for k, v in summary.numbers.items():
        if k != "accounting":
            t.add_row(k, str(v))
    for k, ok in summary.checks.items():
        t.add_row(f"check {k}", "[green]ok[/]" if ok else "[red]FAILED[/]")
    return t


def accounting_table(summary: DemoSummary) -> Table:
    """Where every input record went: sent = handled + dead-lettered + in flight + lost."""
    n = summary.numbers
    t = Table(title=f"every input record (simulator's tail {n.get('traffic_tail_s')} s, then the worker drained in "
                    f"{n.get('drain_s')} s; bound {n.get('drain_bound_s')} s)")
    cols = ("sent", "handled", "dead_lettered", "in_flight", "lost")
    t.add_column("topic")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    for topic, a in n.get("accounting", {}).items():
        t.add_row(topic, *(f"[red]{a[c]}[/]" if c in ("in_flight", "lost") and a[c] else str(a[c]) for c in cols))
    return t


async def drain_inputs(settings: Settings, bootstrap: str, monitor: TopicMonitor, *, traffic_end: float,
                       bound_s: float, quiet_s: float,
                       progress: Callable[[dict[str, int], float], None] | None = None) -> Drain:
    """Wait until the worker group has committed every input record and no output arrived for
    ``quiet_s``, at most until ``traffic_end + bound_s``; ``progress(backlog, seconds)`` meanwhile.
    Called once the simulator sent its last record."""
    start = time.monotonic()
    tail_s = max(start - traffic_end, 0.0)
    drained_at: float | None = None
    while True:
        backlog = await group_backlogs(settings, bootstrap, group=settings.app_id, topics=INPUTS)
        now = time.monotonic()
        if any(backlog.values()):
            drained_at = None
        elif drained_at is None:
            drained_at = now
        if drained_at is not None and now - monitor.tally.last_record_at >= quiet_s:
            return Drain(backlog=backlog, seconds=drained_at - start, bound_s=bound_s, tail_s=tail_s)
        if now >= traffic_end + bound_s:
            return Drain(backlog=backlog, seconds=now - start, bound_s=bound_s, done=False, tail_s=tail_s)
        if progress is not None:
            progress(backlog, now - traffic_end)
        await asyncio.sleep(0.5)


async def _run(settings: Settings, *, bootstrap: str, seconds: float, rate: float, seed: int,
               world: WorldConfig, workdir: Path, console: Console | None, drain_timeout_s: float,
               history: ListingHistory | None) -> DemoSummary:
    monitor = TopicMonitor(settings, bootstrap=bootstrap)
    await monitor.start()
    workers: list[WorkerProcess] = []
    started = time.monotonic()

    meter: dict[str, CpuMeter] = {}
    traffic: dict[str, float] = {}
    warming: dict[str, str | None] = {"reason": None}
    pollers: list[asyncio.Task[None]] = []

    async def poll_warming(w: WorkerProcess) -> None:
        """The worker's /readyz says whether its rolling features are still warming up, and why."""
        while w.process.poll() is None:
            try:
                _, body = await asyncio.to_thread(w.get, "/readyz")
            except OSError:  # stopping, or busy past the request's timeout: ask again
                body = None
            if isinstance(body, dict):
                warming["reason"] = body.get("warming")
            await asyncio.sleep(2.0)

    async def start_worker() -> None:
        w = WorkerProcess.start(bootstrap=bootstrap, log_path=workdir / "worker-1.log")
        workers.append(w)
        info = await asyncio.to_thread(w.wait_ready)
        meter["m"] = CpuMeter({"worker": w.process.pid, "broker": local_broker_pid(bootstrap),
                               "demo": os.getpid()}).start()
        traffic["start"] = time.monotonic()
        warming["reason"] = info.get("warming")
        if live is not None:
            pollers.append(asyncio.create_task(poll_warming(w)))
        if console is not None:
            console.log(f"worker ready: {info.get('model_versions')} on {info.get('providers')}")

    report_box: dict[str, SimulationReport] = {}
    live = Live(console=console, refresh_per_second=4) if console is not None else None

    budgets: dict[int, float] = {}

    def tick(r: SimulationReport) -> None:
        report_box["r"] = r
        if r.simulator is not None and not budgets:
            w = r.simulator.world
            budgets.update({int(s): float(b) for s, b in zip(w.shop_ids, w.shop_budget, strict=True)})
        if live is not None:
            reason = warming["reason"]
            live.update(live_table(r, monitor.tally, started, budgets,
                                   status=None if reason is None else f"warming: {reason}"))

    try:
        if live is not None:
            live.start()
        report = await run_simulation(settings, bootstrap=bootstrap, rate=rate, duration_s=seconds, seed=seed,
                                      world=world, after_catalog=start_worker, invalid_every=97, on_tick=tick,
                                      drain_s=drain_timeout_s, history=history)
        if "m" in meter:
            meter["m"].stop()

        def progress(backlog: dict[str, int], waited_s: float) -> None:
            if live is not None:
                waiting = ", ".join(f"{t} {k}" for t, k in backlog.items() if k) or "outputs settling"
                live.update(live_table(report, monitor.tally, started, budgets, status=(
                    f"draining {waited_s:.0f} s of at most {drain_timeout_s:.0f} s; in flight: {waiting}")))

        # a purchase may wait up to purchase_click_wait_s for its click's ledger line before its label is
        # written: a quieter spell than that is not the end of the output
        drain = await drain_inputs(settings, bootstrap, monitor,
                                   traffic_end=traffic.get("start", started) + seconds, bound_s=drain_timeout_s,
                                   quiet_s=settings.purchase_click_wait_s + 2.0, progress=progress)
        if live is not None:
            live.update(live_table(report, monitor.tally, started, budgets, status=(
                f"drained in {drain.seconds:.1f} s after the simulator's last record" if drain.done else
                f"not drained at the {drain_timeout_s:.0f} s bound: {drain.backlog}")))
    finally:
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        if live is not None:
            live.stop()
        for w in workers:
            await asyncio.to_thread(w.stop, timeout_s=10.0)
        await monitor.stop()
    assert report.simulator is not None
    wd = report.simulator.world
    budgets = {int(s): float(b) for s, b in zip(wd.shop_ids, wd.shop_budget, strict=True)}
    summary = summarize(report, monitor.tally, budgets, seconds, drain)
    if "m" in meter:  # CPU of each process over the traffic and its drain: the demo must leave the worker a core
        summary.numbers["cpu_share_of_core"] = meter["m"].share_of_core()
        summary.numbers["cpu_ms_per_query"] = meter["m"].ms_per(summary.numbers["outcomes"])
    return summary


def run_demo(settings: Settings, *, bootstrap: str, seconds: float, rate: float, seed: int = 7,
             world: WorldConfig | None = None, console: Console | None = None,
             drain_timeout_s: float = 60.0, history_hours: float | None = None) -> DemoSummary:
    """Run a worker and the simulator against ``bootstrap``, drain (at most ``drain_timeout_s`` after the
    traffic) and account for every input record from the topics.

    The world starts with its past (``streams.harness.simulate.world_history``: the shipped one unless
    ``history_hours`` says how many hours to simulate; 0 starts cold), so the worker serves warm features."""
    world = world or WorldConfig()
    with Progress(console=console, disable=console is None, transient=True) as bar:
        task = bar.add_task("simulating the world's past", total=None)
        history = world_history(settings, world=world, seed=seed, hours=history_hours,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
    workdir = Path(tempfile.mkdtemp(prefix="bidder-demo-"))
    try:
        return asyncio.run(_run(settings, bootstrap=bootstrap, seconds=seconds, rate=rate, seed=seed,
                                world=world, workdir=workdir, console=console,
                                drain_timeout_s=drain_timeout_s, history=history))
    finally:  # the worker's log; everything the demo prints comes from the topics
        shutil.rmtree(workdir, ignore_errors=True)
