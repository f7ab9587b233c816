"""``bidder drift``: the drift report (a picture of reference vs live) and the live alert feed."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Literal, get_args

import click

from bidder.settings import Settings
from streams.cli.options import one_of

__all__ = ["drift"]

Kind = Literal["scale", "shift", "missing", "remap"]
"""the drift the demo injects (``streams.harness.drift_demo.run_demo``'s ``kind``)"""
KINDS = get_args(Kind)


@click.group()
def drift() -> None:
    """Feature drift: reports and live alerts."""


@drift.command("report")
@click.option("--snapshot", type=click.Path(path_type=Path), default=None,
              help="JSON of DriftMonitor.snapshot() to render")
@click.option("--demo", is_flag=True, help="run the seeded injected-drift demo offline")
@click.option("--out", type=click.Path(path_type=Path), default=Path("docs/drift-report.png"), show_default=True,
              help="PNG to write")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="also write an HTML page here")
@click.option("--feature", default="relevance", show_default=True, help="demo: feature to drift ('none': no drift)")
@click.option("--kind", type=click.Choice(KINDS), default="scale", show_default=True)
@click.option("--amount", type=float, default=10.0, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--queries-after", type=int, default=600, show_default=True, help="demo: queries after the injection")
@click.option("--reference-queries", type=int, default=2000, show_default=True,
              help="demo: queries fitting the reference")
@click.option("--stationary-queries", type=int, default=2000, show_default=True,
              help="demo: watched before the drift")
@click.pass_context
def report(ctx: click.Context, snapshot: Path | None, demo: bool, out: Path, html_path: Path | None, feature: str,
           kind: Kind, amount: float, seed: int, queries_after: int, reference_queries: int,
           stationary_queries: int) -> None:
    """Reference vs live distributions as a picture: render --snapshot FILE, or run the --demo offline."""
    from bidder.lifecycle.drift_report import load_snapshot, write_report

    one_of(ctx.params, "snapshot", "demo")
    if snapshot is not None:
        monitor, title = load_snapshot(snapshot), ""
    else:
        from streams.harness.drift_demo import run_demo

        res = run_demo(injection_feature=None if feature == "none" else feature, kind=kind, amount=amount,
                       seed=seed, queries_after=queries_after, reference_queries=reference_queries,
                       stationary_queries=stationary_queries)
        for q, ev in res.events:
            click.echo(f"query {q:+d}: {ev.describe()}")
        monitor, inj = res.monitor, res.injection
        title = ("demo, no drift" if inj is None
                 else f"demo: {inj.feature} {inj.kind} {inj.amount:g}, {queries_after} queries after")
    written = write_report(monitor, out, html_path=html_path, title=title)
    click.echo(f"wrote {written}" + (f" and {html_path}" if html_path else ""))


@drift.command("watch")
@click.option("--bootstrap", default=None, help="default: BIDDER_KAFKA_BOOTSTRAP")
@click.option("--from-beginning", is_flag=True, help="replay past alerts first")
@click.option("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
@click.pass_obj
def drift_watch(settings: Settings, bootstrap: str | None, from_beginning: bool, seconds: float | None) -> None:
    """Follow the drift-alerts topic live."""
    from streams.watch import watch_drift_alerts

    target = bootstrap or settings.kafka_bootstrap
    if not target:
        raise click.UsageError("set BIDDER_KAFKA_BOOTSTRAP (or --bootstrap)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch_drift_alerts(settings, bootstrap=target, from_beginning=from_beginning,
                                       seconds=seconds, echo=click.echo))
