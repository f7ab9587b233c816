"""The ``bidder`` command line (click). Each command is a thin shell over a library function."""

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

__all__ = ["kafka_bootstrap", "main", "stop_children_on_signals"]


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Streaming real-time ad bidder. Settings come from BIDDER_* environment variables."""
    ctx.obj = Settings()


@main.command()
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


@main.group()
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


@main.command()
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


@main.command()
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


@main.command()
@click.pass_obj
def worker(settings: Settings) -> None:
    """Run one bidder worker (production entry point; needs BIDDER_KAFKA_BOOTSTRAP)."""
    from streams.worker import run_worker

    if not settings.kafka_bootstrap:
        raise click.UsageError("set BIDDER_KAFKA_BOOTSTRAP; `bidder demo` runs everything on an embedded broker")
    run_worker(settings)


@main.group()
def bench() -> None:
    """Benchmarks."""


_ARGPARSE = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
"""a command whose options (and --help) belong to an argparse ``main(argv)``"""


@bench.command("kernel", context_settings=_ARGPARSE)
@click.pass_context
def bench_kernel(ctx: click.Context) -> None:
    """Hot-path kernel benchmark: the pipeline beside bare ONNX Runtime calls (--help for options)."""
    from streams.harness.bench_kernel import main as kernel_main

    ctx.exit(kernel_main(list(ctx.args)))


@main.command()
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


@main.group()
def drift() -> None:
    """Feature drift: reports and live alerts."""


@drift.command("report", context_settings=_ARGPARSE)
@click.pass_context
def drift_report(ctx: click.Context) -> None:
    """Reference vs live distributions as a picture (--help for options)."""
    from bidder.lifecycle.drift_report import main as report_main

    ctx.exit(report_main(list(ctx.args)))


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


@bench.command("e2e")
@click.option("--rate", type=float, default=50.0, show_default=True, help="queries/s offered (open loop)")
@click.option("--seconds", type=float, default=20.0, show_default=True, help="seconds per rate")
@click.option("--sweep", is_flag=True, help="also try rising rates; report the highest with p99 <= 50 ms")
@click.option("--rates", default="25,75,100,150,200,300", show_default=True, help="rates for --sweep")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def bench_e2e(settings: Settings, rate: float, seconds: float, sweep: bool, rates: str, as_json: bool) -> None:
    """Query produced -> outcome consumed, open loop, beside an echo agent with the same client settings."""
    stop_children_on_signals()
    import orjson
    from rich.console import Console
    from rich.table import Table

    from streams.harness.bench_e2e import run_bench

    console = Console(stderr=True)
    plan = [rate] + ([float(r) for r in rates.split(",") if float(r) != rate] if sweep else [])
    with kafka_bootstrap(settings) as bootstrap:
        result = run_bench(settings, bootstrap=bootstrap, rates=plan, seconds=seconds,
                           progress=console.log)
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title="bench e2e (ms)")
    for col in ("run", "offered q/s", "achieved q/s", "p50", "p99", "p999", "model p99", "received/sent",
                "in flight", "lost", "CPU ms/query worker/broker/driver"):
        table.add_column(col, justify="right")
    echo = result["echo"]
    table.add_row("echo", f"{rate:g}", "-", str(echo["p50_ms"]), str(echo["p99_ms"]), str(echo["p999_ms"]), "-",
                  f"{echo['received']}/{echo['sent']}", "-", "-", "-")
    for r in result["runs"]:
        a, cpu = r["accounting"], r["cpu_ms_per_query"]
        table.add_row("bidder", f"{r['rate_offered']:g}", f"{r['rate_achieved']:g}", str(r["e2e"]["p50_ms"]),
                      str(r["e2e"]["p99_ms"]), str(r["e2e"]["p999_ms"]), str(r["model"]["p99_ms"]),
                      f"{r['received']}/{r['sent']}", str(a["in_flight"]), str(a["lost"]),
                      " / ".join("-" if cpu[k] is None else f"{cpu[k]:.1f}" for k in ("worker", "broker", "driver")))
    Console().print(table)
    click.echo(f"kernel ({result['kernel']['family']}, one core): {result['kernel_qps']} q/s; "
               f"highest rate with p99 <= 50 ms and nothing lost: {result['max_rate_p99_le_50ms']}; "
               f"(e2e p99 - model p99) / echo p99 = {result['overhead_vs_echo']}")


@main.command("chaos", context_settings=_ARGPARSE)
@click.pass_context
def chaos(ctx: click.Context) -> None:
    """Run one fault scenario (t1 worker kill, t2 broker restart, t4 hostile, t5 clicks, t6 redelivery)
    and print its figure table (--help for options)."""
    from streams.harness.chaos import main as chaos_main

    stop_children_on_signals()

    ctx.exit(chaos_main(list(ctx.args)))


def _passthrough(name: str, module: str, doc: str) -> None:
    """A command whose options belong to an argparse ``main(argv)`` in ``module``."""

    @main.command(name, help=doc, context_settings=_ARGPARSE)
    @click.pass_context
    def command(ctx: click.Context) -> None:
        import importlib

        ctx.exit(importlib.import_module(module).main(list(ctx.args)))


_passthrough("dataset", "bidder.lifecycle.dataset",
             "Frozen, content-hashed datasets from matured labels: freeze | list | verify ID (--help for more).")
_passthrough("train", "onnx_models.lifecycle",
             "Train CTR+CVR of a family on a frozen dataset, record the run, optional --trials N (Optuna TPE).")
_passthrough("scoreboard", "bidder.lifecycle.scoreboard",
             "Every recorded run on a frozen test set, side by side, with the oracle; table and plot.")
_passthrough("promote", "bidder.lifecycle.promotion",
             "Gate a challenger against the serving champion; promote atomically or refuse with a report.")
_passthrough("shadow", "bidder.shadow",
             "Score live traffic with a challenger beside the champion: start MODEL | stop | status.")
