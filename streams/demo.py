"""``bidder demo``: broker, topics, a worker and the simulator, with a live table and a reconciled summary.

The summary's checks, all read from the topics:

* queries sent = distinct auction outcomes + queries dead-lettered
* clicks sent (resends included) = ledger lines (charged + unbilled + duplicate) + clicks dead-lettered
* no click id is charged twice; every shop's charges <= its daily budget
* purchases sent = conversions attributed + purchases dead-lettered
* kept up: the queries sent in the last 10 s of traffic were answered about as fast as those of the
  first 10 s (p50 at most 1.5x + 10 ms): a worker that falls behind builds a backlog, and its latency
  grows through the run. A failed check is named in one line (``failed_checks``) and exits 1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from bidder.market import WorldConfig
from bidder.settings import Settings
from streams.cpu_meter import CpuMeter, local_broker_pid
from streams.monitor import OutputTally, TopicMonitor
from streams.process import WorkerProcess
from streams.simulate import SimulationReport, run_simulation

__all__ = ["DemoSummary", "run_demo"]


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


def summarize(report: SimulationReport, tally: OutputTally, budgets: dict[int, float],
              seconds: float | None = None) -> DemoSummary:
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
        "latency_p50_ms": _p(lat, 0.5),
        "latency_p99_ms": _p(lat, 0.99),
        "rate_achieved_qps": round(len(lat) / max(report.elapsed_s, 1e-9), 1),
        "latency_first_10s_p50_ms": _p(first_10s, 0.5),
        "latency_first_10s_p99_ms": _p(first_10s, 0.99),
        "latency_last_10s_p50_ms": _p(last_10s, 0.5),
        "latency_last_10s_p99_ms": _p(last_10s, 0.99),
        "dead_letters": {f"{t}:{r}": c for (t, r), c in sorted(tally.dead_letters.items())},
        "model_versions": dict(tally.model_versions),
        "drift_alerts_open": sorted(k for k, v in tally.drift_alerts.items() if v > 0),
        "drift_events": tally.drift_events,
        "calibration_alerts_open": sorted(k for k, v in tally.calibration_alerts.items() if v > 0),
        "send_errors": report.send_errors,
    }
    checks = {
        "queries_reconcile": queries_sent == n["outcomes"] + n["queries_dead_lettered"],
        "clicks_reconcile": clicks_sent == (n["clicks_charged"] + n["clicks_unbilled"]
                                            + n["clicks_duplicate_ignored"] + n["clicks_dead_lettered"]),
        "no_double_charge": n["clicks_double_entries"] == 0,
        "within_budgets": not overspend,
        "purchases_reconcile": n["purchases_sent"] == n["conversions"] + n["purchases_dead_lettered"],
        "no_send_errors": report.send_errors == 0,
        "kept_up": up,
    }
    reasons = {
        "queries_reconcile": f"queries: {queries_sent} sent != {n['outcomes']} outcomes + "
                             f"{n['queries_dead_lettered']} dead-lettered",
        "clicks_reconcile": f"clicks: {clicks_sent} sent != {n['clicks_charged']} charged + {n['clicks_unbilled']} "
                            f"unbilled + {n['clicks_duplicate_ignored']} duplicates + {n['clicks_dead_lettered']} "
                            "dead-lettered",
        "no_double_charge": f"{n['clicks_double_entries']} clicks charged twice",
        "within_budgets": f"{len(overspend)} shops over budget",
        "purchases_reconcile": f"purchases: {n['purchases_sent']} sent != {n['conversions']} conversions + "
                               f"{n['purchases_dead_lettered']} dead-lettered",
        "no_send_errors": f"{report.send_errors} sends failed",
        "kept_up": behind,
    }
    n["failed_checks"] = [reasons[k] for k, ok in checks.items() if not ok]
    return DemoSummary(numbers=n, checks=checks)


def live_table(report: SimulationReport, tally: OutputTally, started: float,
               budgets: dict[int, float] | None = None) -> Table:
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
        ("revenue", f"{tally.revenue:.2f}"),
        ("spend / total daily budget", f"{tally.revenue:.2f} / {sum((budgets or {}).values()):.0f}"),
        ("shops at budget", str(sum(1 for s, c in tally.charged_by_shop.items()
                                    if budgets and c >= budgets.get(s, 0.0) - 0.01))),
        ("unbilled (past budget)", f"{tally.unbilled_value:.2f}"),
        ("dead letters", str(sum(tally.dead_letters.values()))),
        ("drift alerts open", ", ".join(k for k, v in tally.drift_alerts.items() if v > 0) or "none"),
        ("calibration alerts open", ", ".join(k for k, v in tally.calibration_alerts.items() if v > 0) or "none"),
        ("model versions", ", ".join(tally.model_versions) or "-"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    return t


def summary_table(summary: DemoSummary) -> Table:
    t = Table(title="demo summary (from the topics)")
    t.add_column("number")
    t.add_column("value", justify="right")
    for k, v in summary.numbers.items():
        t.add_row(k, str(v))
    for k, ok in summary.checks.items():
        t.add_row(f"check {k}", "[green]ok[/]" if ok else "[red]FAILED[/]")
    return t


async def _run(settings: Settings, *, bootstrap: str, seconds: float, rate: float, seed: int,
               world: WorldConfig, workdir: Path, console: Console | None) -> DemoSummary:
    monitor = TopicMonitor(settings, bootstrap=bootstrap)
    await monitor.start()
    workers: list[WorkerProcess] = []
    started = time.monotonic()

    meter: dict[str, CpuMeter] = {}

    async def start_worker() -> None:
        w = WorkerProcess.start(bootstrap=bootstrap, log_path=workdir / "worker-1.log")
        workers.append(w)
        info = await asyncio.to_thread(w.wait_ready)
        meter["m"] = CpuMeter({"worker": w.process.pid, "broker": local_broker_pid(bootstrap),
                               "demo": os.getpid()}).start()
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
            live.update(live_table(r, monitor.tally, started, budgets))

    try:
        if live is not None:
            live.start()
        report = await run_simulation(settings, bootstrap=bootstrap, rate=rate, duration_s=seconds, seed=seed,
                                      world=world, after_catalog=start_worker, invalid_every=97, on_tick=tick,
                                      drain_s=45.0)
        if "m" in meter:
            meter["m"].stop()
        # a purchase may wait up to purchase_click_wait_s for its click's ledger line before its label is
        # written: a quieter spell than that is not the end of the output
        await monitor.settle(quiet_s=settings.purchase_click_wait_s + 2.0, timeout_s=60.0)
        if live is not None:
            live.update(live_table(report, monitor.tally, started, budgets))
    finally:
        if live is not None:
            live.stop()
        for w in workers:
            await asyncio.to_thread(w.stop, timeout_s=10.0)
        await monitor.stop()
    assert report.simulator is not None
    wd = report.simulator.world
    budgets = {int(s): float(b) for s, b in zip(wd.shop_ids, wd.shop_budget, strict=True)}
    summary = summarize(report, monitor.tally, budgets, seconds)
    if "m" in meter:  # CPU of each process over the traffic and its drain: the demo must leave the worker a core
        summary.numbers["cpu_share_of_core"] = meter["m"].share_of_core()
        summary.numbers["cpu_ms_per_query"] = meter["m"].ms_per(summary.numbers["outcomes"])
    return summary


def run_demo(settings: Settings, *, bootstrap: str, seconds: float, rate: float, seed: int = 7,
             world: WorldConfig | None = None, console: Console | None = None) -> DemoSummary:
    """Run a worker and the simulator against ``bootstrap`` and reconcile the topics."""
    workdir = Path(tempfile.mkdtemp(prefix="bidder-demo-"))
    try:
        return asyncio.run(_run(settings, bootstrap=bootstrap, seconds=seconds, rate=rate, seed=seed,
                                world=world or WorldConfig(), workdir=workdir, console=console))
    finally:  # the worker's log; everything the demo prints comes from the topics
        shutil.rmtree(workdir, ignore_errors=True)
