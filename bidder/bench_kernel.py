"""Kernel benchmark: the in-process bidding pipeline beside bare ``InferenceSession.run``, same run.

    python -m bidder.bench_kernel [--provider cpu|cuda] [--candidates 600] [--family mlp|gbdt|lr] [--json]

Setup (untimed): a seeded :class:`bidder.market.World` loaded into a catalog, rolling stats warmed
with synthetic history, a set of prepared queries, and for each query its gathered feature matrix.
Then, for each iteration, one query goes through :meth:`bidder.pipeline.BidPipeline.process` and,
interleaved in the same loop (alternating which goes first), the same CTR and CVR sessions run bare on
that query's prepared matrix. Per query we report p50/p99/p999 latency, queries/s and candidates/s for
both, and ``ratio = pipeline / bare``: what catalog lookup, gathering, bidding, the auction and building
the outcome add on top of the model calls.

Only numpy, onnxruntime and this package need to be importable (the GPU machine has nothing else):
no faust, aiokafka, pydantic or orjson. ``bidder.events`` imports orjson for ``encode``, which the
benchmark never calls; when orjson is absent a stand-in module that refuses to encode is registered.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["main", "run_bench", "summarize"]

F32 = npt.NDArray[np.float32]
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "onnx_models"
SIM_NOW = 1_767_272_400.0
"""2026-01-01T13:00:00Z: the benchmark's fixed clock"""


def _ensure_orjson() -> None:
    try:
        import orjson  # noqa: F401
    except ModuleNotFoundError:
        stub = types.ModuleType("orjson")

        def dumps(*_a: object, **_k: object) -> bytes:
            raise RuntimeError("orjson is not installed: the benchmark does not encode events")

        stub.dumps = dumps  # type: ignore[attr-defined]
        stub.OPT_SERIALIZE_NUMPY = 0  # type: ignore[attr-defined]
        sys.modules["orjson"] = stub


def summarize(ns: list[int] | npt.NDArray[np.int64], candidates: int) -> dict[str, float]:
    """Latency percentiles (ms) and throughput of per-query timings in nanoseconds.

    >>> s = summarize([1_000_000] * 10, candidates=600)
    >>> s["p50_ms"], s["qps"], s["candidates_per_s"]
    (1.0, 1000.0, 600000.0)
    """
    a = np.asarray(ns, np.float64) / 1e6
    mean = float(a.mean())
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "p999_ms": round(float(np.percentile(a, 99.9)), 4),
        "mean_ms": round(mean, 4),
        "max_ms": round(float(a.max()), 4),
        "qps": round(1e3 / mean, 1),
        "candidates_per_s": round(candidates * 1e3 / mean, 1),
    }


def run_bench(
    *,
    provider: str = "cpu",
    candidates: int = 600,
    family: str = "mlp",
    iterations: int = 3000,
    warmup: int = 200,
    n_queries: int = 256,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    model_dir: Path = DEFAULT_MODEL_DIR,
    seed: int = 7,
) -> dict[str, Any]:
    """Run the interleaved benchmark and return the result object printed by ``--json``."""
    _ensure_orjson()
    import onnxruntime as ort

    from bidder.events import Query
    from bidder.features import FEATURE_SPEC, Priors, QueryContext, gather
    from bidder.market import World, WorldConfig
    from bidder.pipeline import BidPipeline, UnlimitedBudget
    from bidder.rolling import RollingStats
    from bidder.scoring import load_models
    from onnx_models.traffic import build_catalog

    models = load_models(model_dir, family, provider, intra_op_threads, inter_op_threads)
    rng = np.random.default_rng(seed)
    world = World.generate(WorldConfig(), seed=seed)
    catalog = build_catalog(world)
    n_listings = len(world.listing_ids)
    stats = RollingStats(half_life_s=3600.0, capacity=n_listings)
    # synthetic history: impressions spread over the last two hours, clicks and sales in proportion
    all_rows = np.arange(n_listings, dtype=np.int64)
    seen = rng.random(n_listings) < 0.8
    t_hist = SIM_NOW - rng.uniform(0, 7200, n_listings)
    imps = rng.lognormal(2.5, 1.0, n_listings) * seen
    clicks = imps * np.clip(rng.normal(0.04, 0.02, n_listings), 0.0, 1.0)
    stats.record(all_rows, kind="impressions", now=t_hist, amount=imps)
    stats.record(all_rows, kind="clicks", now=t_hist, amount=clicks)
    stats.record(all_rows, kind="conversions", now=t_hist, amount=clicks * 0.1)
    stats.record(all_rows, kind="spend", now=t_hist, amount=clicks * 0.3)
    priors = Priors()
    queries = []
    for i in range(n_queries):
        d = world.draw_query(rng, now=SIM_NOW, n_candidates=candidates)
        ctx = QueryContext(device=d.device, page=d.page, hour=d.hour, category=d.category)
        queries.append(
            Query(
                query_id=f"q{i}", ts=SIM_NOW, user_id=d.user_id, context=ctx, text=d.query_text,
                listing_ids=d.listing_ids, relevance=d.relevance,
            )
        )
    prepared: list[F32] = []
    for q in queries:
        rows, _ = catalog.rows(q.listing_ids)
        prepared.append(
            gather(rows=rows, relevance=q.relevance, context=q.context, catalog=catalog, stats=stats,
                   priors=priors, now=SIM_NOW)
        )
    pipe = BidPipeline(
        catalog=catalog, stats=stats, priors=priors, ctr=models.ctr, cvr=models.cvr,
        budget=UnlimitedBudget(), slots=24, reserve_price=0.05, min_bid=0.02, max_bid=3.0,
        clock=lambda: SIM_NOW, rng=np.random.default_rng(seed + 1), model_versions=models.versions,
    )
    ctr_run, cvr_run = models.ctr.session.run, models.cvr.session.run
    ctr_io = ([models.ctr.output_name], models.ctr.input_name)
    cvr_io = ([models.cvr.output_name], models.cvr.input_name)

    def bare(x: F32) -> None:
        ctr_run(ctr_io[0], {ctr_io[1]: x})
        cvr_run(cvr_io[0], {cvr_io[1]: x})

    pipe_ns = np.zeros(iterations, np.int64)
    bare_ns = np.zeros(iterations, np.int64)
    stages: dict[str, list[float]] = {k: [] for k in ("gather", "score", "bid", "auction", "total")}
    n_winners = 0
    perf = time.perf_counter_ns
    # Long-lived setup objects (catalog dict, 30k-row arrays' owners, queries) go to the permanent
    # generation, as a worker does after loading, so full collections do not rescan them mid-query.
    gc.collect()
    gc.freeze()
    for i in range(-warmup, iterations):
        j = i % n_queries
        batch, x = [queries[j]], prepared[j]
        if i % 2 == 0:
            t0 = perf()
            outs = pipe.process(batch)
            t1 = perf()
            bare(x)
            t2 = perf()
            p_ns, b_ns = t1 - t0, t2 - t1
        else:
            t0 = perf()
            bare(x)
            t1 = perf()
            outs = pipe.process(batch)
            t2 = perf()
            b_ns, p_ns = t1 - t0, t2 - t1
        if i >= 0:
            pipe_ns[i], bare_ns[i] = p_ns, b_ns
            for k, v in stages.items():
                v.append(outs[0].timings_ms[k])
            n_winners += len(outs[0].winners)
    gc.unfreeze()
    pipe_s, bare_s = summarize(pipe_ns, candidates), summarize(bare_ns, candidates)
    return {
        "family": family,
        "provider": provider,
        "session_providers": {"ctr": models.ctr.providers, "cvr": models.cvr.providers},
        "model_versions": models.versions,
        "candidates": candidates,
        "features": FEATURE_SPEC.n_features,
        "iterations": iterations,
        "intra_op_threads": intra_op_threads,
        "inter_op_threads": inter_op_threads,
        "pipeline": pipe_s,
        "bare": bare_s,
        "ratio_p50": round(pipe_s["p50_ms"] / bare_s["p50_ms"], 4),
        "ratio_p99": round(pipe_s["p99_ms"] / bare_s["p99_ms"], 4),
        "ratio_p999": round(pipe_s["p999_ms"] / bare_s["p999_ms"], 4),
        "stages_p50_ms": {k: round(float(np.median(v)), 4) for k, v in stages.items()},
        "mean_winners": round(n_winners / iterations, 2),
        "onnxruntime": ort.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }


def _print_text(r: dict[str, Any]) -> None:
    print(
        f"family={r['family']} provider={r['provider']} sessions={r['session_providers']['ctr'][0]} "
        f"candidates={r['candidates']} iterations={r['iterations']} threads={r['intra_op_threads']}"
    )
    print(f"{'':10s} {'p50 ms':>9s} {'p99 ms':>9s} {'p999 ms':>9s} {'q/s':>9s} {'cand/s':>12s}")
    for k in ("pipeline", "bare"):
        s = r[k]
        print(
            f"{k:10s} {s['p50_ms']:9.4f} {s['p99_ms']:9.4f} {s['p999_ms']:9.4f} {s['qps']:9.1f} "
            f"{s['candidates_per_s']:12.0f}"
        )
    print(f"ratio      {r['ratio_p50']:9.4f} {r['ratio_p99']:9.4f} {r['ratio_p999']:9.4f}")
    print("pipeline stages p50 ms: " + ", ".join(f"{k}={v:.4f}" for k, v in r["stages_p50_ms"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bidder bench kernel", description=__doc__.split("\n")[0])
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--candidates", type=int, default=600)
    ap.add_argument("--family", choices=["mlp", "gbdt", "lr", "mlp_int8"], default="mlp")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="intra_op_num_threads")
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = run_bench(
        provider=args.provider,
        candidates=args.candidates,
        family=args.family,
        iterations=args.iterations,
        warmup=args.warmup,
        intra_op_threads=args.threads,
        model_dir=args.model_dir,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(result))
    else:
        _print_text(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
