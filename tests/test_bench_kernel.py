"""The kernel benchmark runs, prints the promised JSON, and imports nothing the GPU machine lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bidder.bench_kernel import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--iterations", "20", "--warmup", "2", "--candidates", "100"]


@pytest.mark.parametrize("family", ["mlp", "gbdt", "lr"])
def test_json_output(family: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--family", family, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
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


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--family", "lr"]) == 0
    out = capsys.readouterr().out
    assert "pipeline" in out
    assert "ratio" in out


def test_runs_with_only_numpy_and_onnxruntime() -> None:
    """As on the GPU machine: faust, aiokafka, orjson, pydantic, click, rich are not importable."""
    blocked = ["faust", "aiokafka", "orjson", "pydantic", "pydantic_settings", "click", "rich", "mode",
               "torch", "sklearn", "lightgbm", "onnxmltools", "skl2onnx"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "from bidder.bench_kernel import main\n"
        f"raise SystemExit(main({[*SMALL, '--json']!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ratio_p50"] > 0
