"""Kernel benchmark: the in-process bidding pipeline beside bare ``InferenceSession.run``, same run.

    bidder bench kernel [--provider cpu|cuda] [--candidates 600] [--family mlp|gbdt|lr] [--json]
    bidder bench kernel --provider cuda --queries-per-batch 1,8,16,32 [--calls 300] [--json]

(``python -m streams.harness.bench_kernel`` is the same command.)

Setup (untimed): a seeded :class:`streams.harness.market.World` loaded into a catalog, rolling stats warmed
with synthetic history, a set of prepared queries, and for each query its gathered feature matrix.
Then, for each iteration, one query goes through :meth:`bidder.query.pipeline.BidPipeline.process` and,
interleaved in the same loop (alternating which goes first), the same CTR and CVR sessions run bare on
that query's prepared matrix. Per query we report p50/p99/p999 latency, queries/s and candidates/s for
both, and ``ratio = pipeline / bare``: what catalog lookup, gathering, bidding, the auction and building
the outcome add on top of the model calls.

With ``--queries-per-batch`` (batch mode) each call scores ``k`` queries' candidates at once, for each
``k``, and the CPU provider always runs first as the baseline of the same run; ``--provider cuda`` adds
the CUDA variants. Variants, interleaved call by call (rotating which goes first):

* ``bare``: ``InferenceSession.run`` for CTR and CVR on a prepared ``(k * candidates, d)`` matrix;
* ``scorer``: :meth:`OnnxScorer.score` on the same matrix (CPU: plain run; CUDA: IO binding with
  reused bucket buffers, ``iobinding``; and with captured CUDA graphs, ``cuda_graphs``);
* ``batcher``: the ``k`` per-query blocks through :class:`bidder.query.microbatch.MicroBatcher` (submit, flush:
  one call, concatenation and scatter included);
* ``pipeline``: :meth:`BidPipeline.process` on the ``k`` queries (gather, score, bid, auction: e2e kernel).

Per variant and ``k``: per-call p50/p99 ms, queries/s, candidates/s and host CPU per query
(``time.process_time`` deltas over the timed calls, all threads of this process, divided by queries).
A variant that fails to load or run (e.g. CUDA graphs on a model with CPU-only nodes) is reported under
``errors`` and the rest still runs.

The functions here need only numpy, onnxruntime and this package (the GPU machine has nothing else):
no faust, aiokafka, pydantic, orjson or click (``scripts/gpu_bench.sh`` calls :func:`run_batch_bench`
directly). ``bidder.events`` imports orjson for ``encode``, which the benchmark never calls; when orjson
is absent a stand-in module that refuses to encode is registered.
"""

from __future__ import annotations

import gc
import os
import platform
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["batch_failed", "print_batch_report", "print_report", "run_batch_bench", "run_bench", "summarize",
           "summarize_calls"]

F32 = npt.NDArray[np.float32]
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "onnx_models"
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


def _preload_cuda(provider: str) -> str:
    """Load the CUDA/cuDNN libraries onnxruntime-gpu needs from torch or the ``nvidia`` pip packages
    (``onnxruntime.preload_dlls``, onnxruntime-gpu >= 1.21) before the first CUDA session; returns what happened."""
    if provider != "cuda":
        return "not needed"
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return "onnxruntime has no preload_dlls"
    try:
        preload()
    except Exception as e:  # the session's own provider check reports what then fails
        return f"preload_dlls failed: {type(e).__name__}: {e}"
    return "preload_dlls ok"


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


@dataclass
class _World:
    """Untimed setup shared by both modes: catalog, warmed rolling stats, queries and their features."""

    queries: list[Any]
    prepared: list[F32]
    catalog: Any
    stats: Any
    priors: Any


def _build_world(*, candidates: int, n_queries: int, seed: int) -> _World:
    from bidder.events import Query
    from bidder.query.features import Priors, QueryContext, gather
    from bidder.query.rolling import RollingStats
    from onnx_models.traffic import build_catalog
    from streams.harness.market import World, WorldConfig

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
    return _World(queries=queries, prepared=prepared, catalog=catalog, stats=stats, priors=priors)


def _pipeline(w: _World, ctr: Any, cvr: Any, versions: dict[str, str], seed: int) -> Any:
    from bidder.query.pipeline import BidPipeline, UnlimitedBudget

    return BidPipeline(
        catalog=w.catalog, stats=w.stats, priors=w.priors, ctr=ctr, cvr=cvr,
        budget=UnlimitedBudget(), slots=24, reserve_price=0.05, min_bid=0.02, max_bid=3.0,
        clock=lambda: SIM_NOW, rng=np.random.default_rng(seed + 1), model_versions=versions,
    )


def summarize_calls(ns: npt.NDArray[np.int64], cpu_s: float, *, queries: int, rows: int) -> dict[str, float]:
    """Per-call latency (ms), throughput and host CPU per query for calls of ``queries`` queries, ``rows`` rows.

    >>> s = summarize_calls(np.full(10, 2_000_000), 0.01, queries=8, rows=4800)
    >>> s["p50_ms"], s["queries_per_s"], s["candidates_per_s"], s["host_cpu_us_per_query"]
    (2.0, 4000.0, 2400000.0, 125.0)
    """
    a = np.asarray(ns, np.float64) / 1e6
    mean = float(a.mean())
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 4),
        "p99_ms": round(float(np.percentile(a, 99)), 4),
        "mean_ms": round(mean, 4),
        "max_ms": round(float(a.max()), 4),
        "queries_per_s": round(queries * 1e3 / mean, 1),
        "candidates_per_s": round(rows * 1e3 / mean, 1),
        "host_cpu_us_per_query": round(cpu_s * 1e6 / (len(a) * queries), 2),
        "host_cpu_per_wall": round(cpu_s / (float(a.sum()) / 1e3), 3),
    }


Variant = Callable[[int], None]
"""runs one call on prepared batch number ``i``"""


def _variants_for(
    provider: str, *, w: _World, k: int, batches: list[list[int]], xs: list[F32], family: str, model_dir: Path,
    threads: int, buckets: tuple[int, ...], cuda_graphs: bool, gpu_mem_limit_bytes: int | None, seed: int,
    loaded: dict[str, Any], errors: dict[str, str],
) -> tuple[dict[str, Variant], dict[str, Any]]:
    """The variants of one provider at ``k`` queries per call, and what each session runs on."""
    from bidder.query.microbatch import MicroBatcher
    from bidder.query.scoring import load_models

    def load(name: str, **kw: Any) -> Any:
        if name not in loaded:
            try:
                loaded[name] = load_models(model_dir, family, provider, threads, 1, **kw)
            except Exception as e:  # reported, the other variants still run
                loaded[name] = None
                errors[f"{provider}/{name}"] = f"{type(e).__name__}: {e}"
        return loaded[name]

    gpu_kw: dict[str, Any] = {"buckets": buckets, "gpu_mem_limit_bytes": gpu_mem_limit_bytes}
    main = load("plain") if provider == "cpu" else load("iobinding", io_binding=True, **gpu_kw)
    out: dict[str, Variant] = {}
    info: dict[str, Any] = {}
    if main is None:
        return out, info
    info["session_providers"] = main.ctr.providers
    ctr_s, cvr_s = main.ctr.session, main.cvr.session
    c_io = ([main.ctr.output_name], main.ctr.input_name)
    v_io = ([main.cvr.output_name], main.cvr.input_name)

    def bare(i: int) -> None:
        ctr_s.run(c_io[0], {c_io[1]: xs[i]})
        cvr_s.run(v_io[0], {v_io[1]: xs[i]})

    def scored(m: Any) -> Variant:
        def run(i: int) -> None:
            m.ctr.score(xs[i])
            m.cvr.score(xs[i])

        return run

    out["bare"] = bare
    out["scorer" if provider == "cpu" else "iobinding"] = scored(main)
    if provider == "cuda" and cuda_graphs:
        g = load("cuda_graphs", io_binding=True, cuda_graphs=True, **gpu_kw)
        if g is not None:
            out["cuda_graphs"] = scored(g)
    rows = k * len(w.prepared[0])
    mb = MicroBatcher(primary=[main.ctr, main.cvr], max_rows=max(rows, 1), max_wait_ms=1e3,
                      default_budget_ms=1e6, clock=time.perf_counter)

    def batcher(i: int) -> None:
        for j in batches[i]:
            mb.submit(w.queries[j].query_id, w.prepared[j])
        if len(mb.flush()) != len(batches[i]):
            raise RuntimeError("the micro-batcher lost a query")

    out["batcher"] = batcher
    pipe = _pipeline(w, main.ctr, main.cvr, main.versions, seed)
    qs = [[w.queries[j] for j in b] for b in batches]

    def pipeline(i: int) -> None:
        pipe.process(qs[i])

    out["pipeline"] = pipeline
    return out, info


def run_batch_bench(
    *,
    provider: str = "cpu",
    queries_per_batch: Sequence[int] = (1, 8, 16, 32),
    candidates: int = 600,
    family: str = "mlp",
    calls: int = 300,
    warmup: int = 20,
    n_queries: int = 256,
    intra_op_threads: int = 1,
    model_dir: Path = DEFAULT_MODEL_DIR,
    seed: int = 7,
    cuda_graphs: bool = True,
    gpu_mem_limit_bytes: int | None = None,
) -> dict[str, Any]:
    """Batch mode (see the module docstring): CPU baseline, then CUDA when ``provider == "cuda"``."""
    _ensure_orjson()
    import onnxruntime as ort

    from bidder.query.features import FEATURE_SPEC

    preload = _preload_cuda(provider)
    w = _build_world(candidates=candidates, n_queries=n_queries, seed=seed)
    ks = sorted({int(k) for k in queries_per_batch if int(k) >= 1})
    buckets = tuple(sorted({k * candidates for k in ks}))
    providers = ["cpu"] if provider == "cpu" else ["cpu", provider]
    errors: dict[str, str] = {}
    results: dict[str, Any] = {}
    perf, cpu = time.perf_counter_ns, time.process_time
    for prov in providers:
        loaded: dict[str, Any] = {}
        per_k: dict[str, Any] = {}
        for k in ks:
            n_b = max(1, len(w.queries) // k)
            batches = [[(b * k + j) % len(w.queries) for j in range(k)] for b in range(n_b)]
            xs = [np.ascontiguousarray(np.concatenate([w.prepared[j] for j in b])) for b in batches]
            variants, info = _variants_for(
                prov, w=w, k=k, batches=batches, xs=xs, family=family, model_dir=model_dir,
                threads=intra_op_threads, buckets=buckets, cuda_graphs=cuda_graphs,
                gpu_mem_limit_bytes=gpu_mem_limit_bytes, seed=seed, loaded=loaded, errors=errors,
            )
            names = list(variants)
            lat = {n: np.zeros(calls, np.int64) for n in names}
            cpu_s = dict.fromkeys(names, 0.0)
            failed: set[str] = set()
            gc.collect()
            gc.freeze()
            for it in range(-warmup, calls):
                b = it % n_b
                for r in range(len(names)):
                    name = names[(it + r) % len(names)]
                    if name in failed:
                        continue
                    fn = variants[name]
                    c0, t0 = cpu(), perf()
                    try:
                        fn(b)
                    except Exception as e:  # reported, the other variants still run
                        failed.add(name)
                        errors[f"{prov}/{name}/k={k}"] = f"{type(e).__name__}: {e}"
                        continue
                    t1, c1 = perf(), cpu()
                    if it >= 0:
                        lat[name][it] = t1 - t0
                        cpu_s[name] += c1 - c0
            gc.unfreeze()
            rows = int(xs[0].shape[0])
            per_k[str(k)] = {
                "rows_per_call": rows,
                **info,
                **{n: summarize_calls(lat[n], cpu_s[n], queries=k, rows=rows) for n in names if n not in failed},
            }
        results[prov] = per_k
    comparison: dict[str, Any] = {}
    if len(providers) > 1:
        for k, r in results[providers[1]].items():
            base = results["cpu"].get(k, {}).get("scorer")
            if base is None:
                continue
            comparison[k] = {
                f"host_cpu_ratio_{v}_vs_cpu": round(r[v]["host_cpu_us_per_query"] / base["host_cpu_us_per_query"], 4)
                for v in ("iobinding", "cuda_graphs", "batcher", "pipeline") if v in r
            }
    return {
        "mode": "queries_per_batch",
        "family": family,
        "provider": provider,
        "providers_run": providers,
        "queries_per_batch": ks,
        "candidates": candidates,
        "features": FEATURE_SPEC.n_features,
        "calls": calls,
        "warmup": warmup,
        "intra_op_threads": intra_op_threads,
        "buckets": list(buckets),
        "results": results,
        "comparison": comparison,
        "errors": errors,
        "cuda_preload": preload,
        "onnxruntime": ort.__version__,
        "ort_available_providers": ort.get_available_providers(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def print_batch_report(r: dict[str, Any]) -> None:
    """A batch-mode result as a text table."""
    print(f"family={r['family']} candidates={r['candidates']} calls={r['calls']} providers={r['providers_run']}")
    print(f"{'prov':5s} {'k':>3s} {'variant':12s} {'p50 ms':>9s} {'p99 ms':>9s} {'q/s':>10s} {'cand/s':>12s} "
          f"{'cpu us/q':>9s}")
    for prov, per_k in r["results"].items():
        for k, row in per_k.items():
            for name, s in row.items():
                if not isinstance(s, dict):
                    continue
                print(f"{prov:5s} {k:>3s} {name:12s} {s['p50_ms']:9.4f} {s['p99_ms']:9.4f} {s['queries_per_s']:10.1f} "
                      f"{s['candidates_per_s']:12.0f} {s['host_cpu_us_per_query']:9.1f}")
    for key, err in r["errors"].items():
        print(f"error {key}: {err}")


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

    from bidder.query.features import FEATURE_SPEC
    from bidder.query.scoring import load_models

    _preload_cuda(provider)
    models = load_models(model_dir, family, provider, intra_op_threads, inter_op_threads)
    w = _build_world(candidates=candidates, n_queries=n_queries, seed=seed)
    queries, prepared = w.queries, w.prepared
    pipe = _pipeline(w, models.ctr, models.cvr, models.versions, seed)
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


def print_report(r: dict[str, Any]) -> None:
    """A single-query result as a text table."""
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


def batch_failed(r: dict[str, Any]) -> bool:
    """True when a batch-mode run left a provider without results or a variant failed (exit status 2)."""
    return bool(r["errors"]) or any(not r["results"].get(p) for p in r["providers_run"])


if __name__ == "__main__":
    from streams.cli.bench import kernel  # the command line lives in the CLI

    kernel(prog_name="python -m streams.harness.bench_kernel")
