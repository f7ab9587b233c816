"""Drift report: the PNG/HTML writer, the snapshot and demo modes of ``bidder drift report``."""

from __future__ import annotations

import numpy as np
import orjson

from bidder.lifecycle.drift_report import write_report
from bidder.monitoring.drift import DriftMonitor, DriftSettings
from bidder.monitoring.profile import FeatureProfile
from streams.harness.drift_demo import run_demo
from tests.cli_helpers import bidder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _monitor(drift: bool = True) -> DriftMonitor:
    rng = np.random.default_rng(0)
    refs = (
        FeatureProfile.from_values("price", rng.lognormal(3.0, 0.7, 5000)),
        FeatureProfile.from_values("flag", (rng.random(5000) < 0.3).astype(float)),
        FeatureProfile.from_values("const", np.full(100, 2.0)),
    )
    preds = (FeatureProfile.from_values("pctr", rng.beta(2, 30, 5000)),)
    mon = DriftMonitor(
        refs,
        preds,
        settings=DriftSettings(sample_rate=1.0, window=1000, min_count=500, eval_every=100),
        rng=np.random.default_rng(1),
        model_version="mlp-test",
    )
    n = 1000
    x = np.stack(
        [
            rng.lognormal(3.0, 0.7, n) * (10.0 if drift else 1.0),
            (rng.random(n) < 0.3).astype(float),
            np.full(n, 2.0),
        ],
        axis=1,
    ).astype(np.float32)
    mon.update(x, {"pctr": rng.beta(2, 30, n).astype(np.float32)}, now=100.0)
    return mon


def test_write_report_draws_png_and_html(tmp_path):
    mon = _monitor()
    assert {name for name, _ in mon.alerting} == {"price"}
    png = write_report(mon, tmp_path / "out" / "r.png", html_path=tmp_path / "r.html")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000
    page = (tmp_path / "r.html").read_text()
    assert page.count("<tr") == 1 + 4  # header + three features + one prediction
    assert '<tr style="background:#f5b7b1"><td>price</td>' in page
    assert "data:image/png;base64," in page


def test_write_report_is_deterministic_and_copes_with_an_empty_window(tmp_path):
    mon = _monitor(drift=False)
    a = write_report(mon, tmp_path / "a.png").read_bytes()
    b = write_report(mon, tmp_path / "b.png").read_bytes()
    assert a == b
    empty = DriftMonitor(mon.references, settings=mon.settings, rng=np.random.default_rng(0))
    assert write_report(empty, tmp_path / "e.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_renders_a_snapshot(tmp_path):
    snap = tmp_path / "snap.json"
    snap.write_bytes(orjson.dumps(_monitor().snapshot()))
    out = tmp_path / "snap.png"
    res = bidder("drift", "report", "--snapshot", snap, "--out", out)
    assert res.exit_code == 0, res.output
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert f"wrote {out}" in res.stdout


def test_cli_demo_reports_the_injected_feature(tmp_path):
    out = tmp_path / "demo.png"
    argv = ["--demo", "--out", out, "--reference-queries", "400", "--stationary-queries", "500"]
    res = bidder("drift", "report", *argv, "--queries-after", "60", "--feature", "ctr_smoothed", "--kind", "scale")
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "drift alert: feature ctr_smoothed scale=" in text
    alerted = {line.split("feature ")[1].split()[0] for line in text.splitlines() if ": feature " in line}
    assert alerted == {"ctr_smoothed"}
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_demo_without_drift_raises_nothing():
    res = run_demo(injection_feature=None, reference_queries=400, stationary_queries=700, queries_after=0)
    assert res.injection is None
    assert res.events == ()
    assert res.monitor.n_seen == 700 * 100


def test_cli_needs_a_source():
    res = bidder("drift", "report", "--out", "x.png")
    assert res.exit_code == 2 and "pass one of --snapshot | --demo" in res.stderr


def test_cli_takes_one_source(tmp_path):
    res = bidder("drift", "report", "--snapshot", tmp_path / "s.json", "--demo", "--out", tmp_path / "x.png")
    assert res.exit_code == 2 and "--snapshot and --demo exclude each other" in res.stderr
    assert not (tmp_path / "x.png").exists()
