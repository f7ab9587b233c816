"""Commands that run the streaming system: an embedded broker, topics, the simulator, a worker, the demo.

:func:`kafka_bootstrap` and :func:`stop_children_on_signals` serve every command that starts a cluster
(``bench e2e`` and ``chaos`` too)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bidder.settings import Settings

__all__ = ["aggregate", "broker", "demo", "kafka_bootstrap", "produce", "simulate", "stop_children_on_signals",
           "topics", "worker"]


@contextlib.contextmanager
def kafka_bootstrap(settings: Settings, *, override: str | None = None, create: bool = True) -> Iterator[str]:
    """The cluster to use: ``override``, else ``BIDDER_KAFKA_BOOTSTRAP``, else a fresh embedded broker
    (with the topics created when ``create``)."""
    bootstrap = override or settings.kafka_bootstrap
    if bootstrap:
        yield bootstrap
        return
    from streams.admin import create_topics
    from streams.broker import embedded_broker

    with embedded_broker(settings.broker_kind) as broker:
        click.echo(f"embedded {broker.kind} broker at {broker.bootstrap}", err=True)
        if create:
            asyncio.run(create_topics(settings, bootstrap=broker.bootstrap))
        yield broker.bootstrap


def stop_children_on_signals() -> None:
    """SIGTERM and SIGHUP stop this command the way Ctrl-C does: ``KeyboardInterrupt`` unwinds every
    ``finally`` and context manager, which stop the worker and broker processes it started and remove
    their temporary data. ``timeout``, CI runners, systemd and Kubernetes send SIGTERM; without this the
    default action ended the process at once and left its children running."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)


@click.command()
@click.option("--port", type=int, default=None, help="loopback port (default: a free one)")
@click.option("--kind", type=click.Choice(["noida", "tansu"]), default=None, help="default: BIDDER_BROKER_KIND")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="noida data directory")
@click.pass_obj
def broker(settings: Settings, port: int | None, kind: str | None, data_dir: Path | None) -> None:
    """Run an embedded Kafka-protocol broker until Ctrl-C / SIGTERM."""
    from streams.broker import EmbeddedBroker

    b = EmbeddedBroker.start(kind or settings.broker_kind, port=port, data_dir=data_dir)  # type: ignore[arg-type]
    click.echo(f"bootstrap: {b.bootstrap}")
    click.echo(f"export BIDDER_KAFKA_BOOTSTRAP={b.bootstrap}")
    click.echo(b.describe())
    sys.stdout.flush()
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        while not stop["now"]:
            time.sleep(0.2)
            if b.process.poll() is not None:
                raise click.ClickException(f"broker exited with {b.process.returncode}; log: {b.log_path}")
    finally:
        # within 2 s of the signal: 1.5 s for a clean exit, then SIGKILL (an idle broker exits in ~10 ms)
        b.stop(timeout_s=1.5)
        b.cleanup(keep_log=b.process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL))
        click.echo("broker stopped")


@click.group()
def topics() -> None:
    """Topic administration."""


@topics.command("create")
@click.option("--bootstrap", default=None, help="default: BIDDER_KAFKA_BOOTSTRAP")
@click.pass_obj
def topics_create(settings: Settings, bootstrap: str | None) -> None:
    """Create every topic the bidder uses (idempotent)."""
    from streams.admin import create_topics

    target = bootstrap or settings.kafka_bootstrap
    if not target:
        raise click.UsageError("set BIDDER_KAFKA_BOOTSTRAP (or --bootstrap); `bidder broker` prints one")
    for name, status in asyncio.run(create_topics(settings, bootstrap=target)).items():
        click.echo(f"{name:14s} {status}")


@click.command()
@click.option("--rate", type=float, default=50.0, show_default=True, help="queries per second (open loop)")
@click.option("--duration", type=float, default=10.0, show_default=True, help="seconds of traffic")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--candidates", type=int, default=600, show_default=True)
@click.option("--bootstrap", default=None, help="default: BIDDER_KAFKA_BOOTSTRAP, else an embedded broker")
@click.option("--drain", type=float, default=5.0, show_default=True, help="seconds to wait for outcomes")
@click.option("--history", "history_hours", type=float, default=0.0, show_default=True,
              help="first write this many hours of the world's past to listing-history (simulated offline in "
                   "compressed time), so workers start warm; -1: the past shipped with the models")
@click.pass_obj
def simulate(settings: Settings, rate: float, duration: float, seed: int, candidates: int,
             bootstrap: str | None, drain: float, history_hours: float) -> None:
    """Run the marketplace simulator: catalog, (the world's past,) queries, clicks and purchases."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from streams.harness.market import WorldConfig
    from streams.harness.simulate import run_simulation, world_history

    console = Console()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("simulating the world's past", total=None)
        history = world_history(settings, world=WorldConfig(), seed=seed,
                                hours=None if history_hours < 0 else history_hours,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
    with kafka_bootstrap(settings, override=bootstrap) as target, console.status("simulating") as status:
        def tick(r: Any) -> None:
            status.update(f"{r.elapsed_s:5.1f}s  queries {r.sent.get('queries', 0)}  outcomes {r.outcomes}"
                          f"  clicks {r.sent.get('clicks', 0)}")

        report = asyncio.run(run_simulation(settings, bootstrap=target, rate=rate, duration_s=duration,
                                            seed=seed, n_candidates=candidates, drain_s=drain, on_tick=tick,
                                            history=history))
    table = Table(title=f"simulator, seed {seed}, {rate:g} q/s for {duration:g} s")
    table.add_column("event")
    table.add_column("sent", justify="right")
    for k, v in sorted(report.sent.items()):
        table.add_row(k, str(v))
    table.add_row("outcomes received", str(report.outcomes))
    table.add_row("send errors", str(report.send_errors))
    console.print(table)


@click.command()
@click.argument("file", type=click.File("rb"))
@click.option("--topic", required=True, help="topic to write every line to")
@click.option("--bootstrap", default=None, help="default: BIDDER_KAFKA_BOOTSTRAP")
@click.pass_obj
def produce(settings: Settings, file: Any, topic: str, bootstrap: str | None) -> None:
    """Publish each line of a JSONL file to a topic, as is (invalid lines too: the worker dead-letters them)."""
    from streams.produce import produce_lines

    target = bootstrap or settings.kafka_bootstrap
    if not target:
        raise click.UsageError("set BIDDER_KAFKA_BOOTSTRAP (or --bootstrap)")
    n = asyncio.run(produce_lines(settings, bootstrap=target, topic=topic, lines=file.read().splitlines()))
    click.echo(f"produced {n} records to {topic}")


@click.command()
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run one bidder worker (production entry point; needs BIDDER_KAFKA_BOOTSTRAP)."""
    from streams.worker import run_worker

    if not settings.kafka_bootstrap:
        raise click.UsageError("set BIDDER_KAFKA_BOOTSTRAP; `bidder demo` runs everything on an embedded broker")
    run_worker(settings)


@click.command()
@click.option("--bootstrap", default=None, help="default: BIDDER_KAFKA_BOOTSTRAP")
@click.pass_obj
def aggregate(settings: Settings, bootstrap: str | None) -> None:
    """Run one aggregator (rolling features folded once into listing-stats) until Ctrl-C / SIGTERM."""
    import logging

    from streams.aggregator import run_aggregator

    target = bootstrap or settings.kafka_bootstrap
    if not target:
        raise click.UsageError("set BIDDER_KAFKA_BOOTSTRAP (or --bootstrap)")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    counts = asyncio.run(run_aggregator(settings, bootstrap=target))
    click.echo(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))


@click.command()
@click.option("--seconds", type=float, default=60.0, show_default=True, help="seconds of traffic")
@click.option("--rate", type=float, default=50.0, show_default=True,
              help="queries per second (open loop); what 2 cores sustain with broker, worker and simulator")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--drain-s", "drain_s", type=float, default=60.0, show_default=True,
              help="after the traffic, wait at most this long for the worker to take what is left")
@click.option("--json", "as_json", is_flag=True, help="print the reconciled summary as JSON")
@click.option("--history-hours", type=float, default=None,
              help="hours of the world's past to simulate before live traffic (default: the past shipped with "
                   "the models, where their training traffic ended; 0: start cold)")
@click.pass_obj
def demo(settings: Settings, seconds: float, rate: float, seed: int, drain_s: float, as_json: bool,
         history_hours: float | None) -> None:
    """Broker, topics, a worker and the simulator, with a live table and a reconciled summary."""
    stop_children_on_signals()
    import orjson
    from rich.console import Console

    from streams.demo import accounting_table, run_demo, summary_table

    console = Console(stderr=as_json)
    with kafka_bootstrap(settings) as bootstrap:
        summary = run_demo(settings, bootstrap=bootstrap, seconds=seconds, rate=rate, seed=seed,
                           console=None if as_json else console, drain_timeout_s=drain_s,
                           history_hours=history_hours)
    if as_json:
        click.echo(orjson.dumps({"numbers": summary.numbers, "checks": summary.checks, "ok": summary.ok},
                                option=orjson.OPT_INDENT_2).decode())
    else:
        console.print(summary_table(summary))
        console.print(accounting_table(summary))
    if not summary.ok:
        for reason in summary.numbers.get("failed_checks", []):
            click.echo(f"demo failed: {reason}", err=True)
        raise SystemExit(1)
