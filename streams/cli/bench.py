"""``bidder bench``: the kernel benchmark (in process) and the end-to-end one (through Kafka)."""

from __future__ import annotations

from pathlib import Path

import click

from bidder.settings import Settings
from streams.cli.cluster import kafka_bootstrap, stop_children_on_signals
from streams.cli.options import IntList

__all__ = ["bench", "kernel"]

_MODEL_DIR = Path(__file__).resolve().parents[2] / "onnx_models"
"""the benchmark's default models (``streams.harness.bench_kernel.DEFAULT_MODEL_DIR``, not imported here)"""


@click.group()
def bench() -> None:
    """Benchmarks."""


@bench.command("kernel")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--candidates", type=int, default=600, show_default=True)
@click.option("--family", type=click.Choice(["mlp", "gbdt", "lr", "mlp_int8"]), default="mlp", show_default=True)
@click.option("--iterations", type=int, default=3000, show_default=True)
@click.option("--warmup", type=int, default=200, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="intra_op_num_threads")
@click.option("--model-dir", type=click.Path(path_type=Path), default=_MODEL_DIR, show_default="onnx_models/")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--queries-per-batch", type=IntList(), default=None,
              help="batch mode: queries per scoring call, e.g. 1,8,16,32 (CPU baseline always runs too)")
@click.option("--calls", type=int, default=300, show_default=True, help="batch mode: timed calls per variant and K")
@click.option("--no-cuda-graphs", is_flag=True, help="batch mode: skip the CUDA-graph variant")
@click.option("--gpu-mem-limit-bytes", type=int, default=None)
def kernel(provider: str, candidates: int, family: str, iterations: int, warmup: int, threads: int, model_dir: Path,
           seed: int, as_json: bool, queries_per_batch: list[int] | None, calls: int, no_cuda_graphs: bool,
           gpu_mem_limit_bytes: int | None) -> None:
    """Hot-path kernel benchmark: the pipeline beside bare ONNX Runtime calls; exit 2 if a batch-mode
    provider or variant failed."""
    import json

    from streams.harness import bench_kernel as b

    if queries_per_batch is None:
        result = b.run_bench(provider=provider, candidates=candidates, family=family, iterations=iterations,
                             warmup=warmup, intra_op_threads=threads, model_dir=model_dir, seed=seed)
        if as_json:
            click.echo(json.dumps(result))
        else:
            b.print_report(result)
        return
    batch = b.run_batch_bench(provider=provider, queries_per_batch=queries_per_batch, candidates=candidates,
                              family=family, calls=calls, warmup=min(warmup, 50), intra_op_threads=threads,
                              model_dir=model_dir, seed=seed, cuda_graphs=not no_cuda_graphs,
                              gpu_mem_limit_bytes=gpu_mem_limit_bytes)
    if as_json:
        click.echo(json.dumps(batch))
    else:
        b.print_batch_report(batch)
    if b.batch_failed(batch):
        raise SystemExit(2)


@bench.command("e2e")
@click.option("--rate", type=float, default=50.0, show_default=True, help="queries/s offered (open loop)")
@click.option("--seconds", type=float, default=20.0, show_default=True, help="seconds per rate")
@click.option("--sweep", is_flag=True, help="also try rising rates; report the highest with p99 <= 50 ms")
@click.option("--rates", default="25,75,100,150,200,300", show_default=True, help="rates for --sweep")
@click.option("--json", "as_json", is_flag=True)
@click.option("--replica-probe", is_flag=True,
              help="also run a replica alone beside the workers: what replicating the topics costs one worker, "
                   "and how fresh its copy of the aggregated features is")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="worker processes in the group (traffic once all are ready and the group has settled)")
@click.pass_obj
def bench_e2e(settings: Settings, rate: float, seconds: float, sweep: bool, rates: str, as_json: bool,
              replica_probe: bool, workers: int) -> None:
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
                           progress=console.log, replica_probe=replica_probe, workers=workers)
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"bench e2e (ms, {workers} worker{'s' if workers > 1 else ''})")
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
    for r in result["runs"]:
        fresh = (r.get("replica") or {}).get("freshness")
        if fresh is not None:
            click.echo(f"freshness at {r['rate_offered']:g} q/s (click -> another worker's copy): {fresh['count']} "
                       f"clicks, p50 / p99 / max {fresh['p50_ms']} / {fresh['p99_ms']} / {fresh['max_ms']} ms, "
                       f"{fresh['pending']} pending")
    click.echo(f"kernel ({result['kernel']['family']}, one core): {result['kernel_qps']} q/s; "
               f"highest rate with p99 <= 50 ms and nothing lost: {result['max_rate_p99_le_50ms']}; "
               f"(e2e p99 - model p99) / echo p99 = {result['overhead_vs_echo']}")
