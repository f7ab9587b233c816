"""The kernel benchmark runs, prints the promised JSON, and imports nothing the GPU machine lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import bidder

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--iterations", "20", "--warmup", "2", "--candidates", "100"]


@pytest.mark.parametrize("family", ["mlp", "gbdt", "lr"])
def test_json_output(family: str) -> None:
    res = bidder("bench", "kernel", *SMALL, "--family", family, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    for key in ("p50_ms", "p99_ms", "p999_ms", "qps", "candidates_per_s"):
        assert r["pipeline"][key] > 0
        assert r["bare"][key] > 0
    assert r["provider"] == "cpu"
    assert r["session_providers"]["ctr"] == ["CPUExecutionProvider"]
    assert r["ratio_p50"] == pytest.approx(r["pipeline"]["p50_ms"] / r["bare"]["p50_ms"], rel=1e-3)
    assert r["ratio_p99"] > 0
    assert r["family"] == family
    assert r["model_versions"]["ctr"].startswith(f"{family}-ctr-")
    assert r["mean_winners"] == 24


def test_text_output() -> None:
    res = bidder("bench", "kernel", *SMALL, "--family", "lr")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "pipeline" in out
    assert "ratio" in out


def test_runs_with_only_numpy_and_onnxruntime() -> None:
    """As on the GPU machine: faust, aiokafka, orjson, pydantic, click, rich are not importable; the library
    runs without the command line (``scripts/gpu_bench.sh`` calls it so)."""
    blocked = ["faust", "aiokafka", "orjson", "pydantic", "pydantic_settings", "click", "rich", "mode",
               "torch", "sklearn", "lightgbm", "onnxmltools", "skl2onnx"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import json\n"
        "from streams.harness.bench_kernel import run_bench\n"
        "print(json.dumps(run_bench(iterations=20, warmup=2, candidates=100)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ratio_p50"] > 0


# --- batch mode: --queries-per-batch ------------------------------------------------------------------

BATCH = ["--queries-per-batch", "1,3", "--calls", "6", "--warmup", "1", "--candidates", "50"]


def test_batch_mode_json() -> None:
    res = bidder("bench", "kernel", *BATCH, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["mode"] == "queries_per_batch"
    assert r["providers_run"] == ["cpu"] and r["errors"] == {}
    assert r["buckets"] == [50, 150]
    for k, rows in (("1", 50), ("3", 150)):
        row = r["results"]["cpu"][k]
        assert row["rows_per_call"] == rows
        assert row["session_providers"] == ["CPUExecutionProvider"]
        for variant in ("bare", "scorer", "batcher", "pipeline"):
            s = row[variant]
            assert 0 < s["p50_ms"] <= s["p99_ms"]
            assert s["queries_per_s"] == pytest.approx(int(k) * 1e3 / s["mean_ms"], rel=1e-3)
            assert s["candidates_per_s"] == pytest.approx(rows * 1e3 / s["mean_ms"], rel=1e-3)
            assert s["host_cpu_us_per_query"] > 0


@pytest.mark.skipif("CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
                    reason="CUDA is available here")
def test_batch_mode_cuda_without_cuda_keeps_the_cpu_baseline_and_says_why() -> None:
    res = bidder("bench", "kernel", *BATCH, "--provider", "cuda", "--json")
    assert res.exit_code == 2, res.output
    r = json.loads(res.stdout)
    assert r["providers_run"] == ["cpu", "cuda"]
    assert r["results"]["cpu"]["3"]["scorer"]["p50_ms"] > 0
    assert "install onnxruntime-gpu" in r["errors"]["cuda/iobinding"]
    assert "iobinding" not in r["results"]["cuda"]["3"]


def test_batch_mode_runs_with_only_numpy_and_onnxruntime() -> None:
    blocked = ["faust", "aiokafka", "orjson", "pydantic", "pydantic_settings", "click", "rich", "mode",
               "torch", "sklearn", "lightgbm", "onnxmltools", "skl2onnx", "hypothesis"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import json, sys\n"
        "from streams.harness import bench_kernel as b\n"
        "r = b.run_batch_bench(queries_per_batch=[1, 3], calls=6, warmup=1, candidates=50)\n"
        "print(json.dumps(r))\n"
        "sys.exit(2 if b.batch_failed(r) else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"]["cpu"]["1"]["batcher"]["p50_ms"] > 0
