"""Calibration monitor: ratio per model version over a sliding window, alerts on leaving/returning."""

from __future__ import annotations

import numpy as np
import pytest

from bidder.labels.calibration import CalibrationMonitor


def _batch(rng: np.random.Generator, n: int, p_true: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < p_true).astype(np.float64)
    return np.full(n, p_true * scale), y


def test_calibrated_stream_never_alerts_and_reads_near_one() -> None:
    rng = np.random.default_rng(1)
    m = CalibrationMonitor(window_s=3600.0, bucket_s=60.0, min_positives=50)
    alerts = []
    for i in range(120):
        p, y = _batch(rng, 2000, 0.08, 1.0)
        alerts += m.update("ctr", "mlp-ctr-a", p=p, y=y, now=60.0 * i)
    assert alerts == []
    g = m.gauges(now=60.0 * 119)[("ctr", "mlp-ctr-a")]
    assert 0.97 < g.ratio < 1.03
    assert g.n == 60 * 2000  # only the last hour's buckets


def test_overprediction_alerts_once_then_recovers_after_the_window_slides() -> None:
    rng = np.random.default_rng(2)
    m = CalibrationMonitor(window_s=600.0, bucket_s=60.0, min_positives=50)
    events = []
    for i in range(30):
        scale = 1.3 if 10 <= i < 15 else 1.0  # 5 minutes of a model over-predicting by 30 %
        p, y = _batch(rng, 10_000, 0.05, scale)
        events += [(i, a.state) for a in m.update("ctr", "v2", p=p, y=y, now=60.0 * i)]
    states = [s for _, s in events]
    assert states == ["out", "ok"]
    first_out, back = events[0][0], events[1][0]
    assert 10 <= first_out <= 12  # fires within two minutes of the bad period
    assert 15 <= back <= 26  # and clears once the bad minutes have left the 10-minute window
    assert m.alerting == []


def test_series_are_per_version_and_target_and_need_enough_positives() -> None:
    m = CalibrationMonitor(window_s=600.0, bucket_s=60.0, min_positives=20)
    y = np.r_[np.ones(10), np.zeros(90)]
    assert m.update("cvr", "old", p=np.full(100, 0.3), y=y, now=0.0) == []  # 10 positives < 20: not judged
    a = m.update("cvr", "old", p=np.full(100, 0.3), y=y, now=1.0)
    assert [(x.version, x.state) for x in a] == [("old", "out")]
    assert m.update("cvr", "new", p=np.full(400, 0.1), y=np.r_[np.ones(40), np.zeros(360)], now=1.0) == []
    assert m.update("ctr", "old", p=np.full(400, 0.1), y=np.r_[np.ones(40), np.zeros(360)], now=1.0) == []
    assert m.alerting == [("cvr", "old")]
    assert set(m.gauges(now=1.0)) == {("cvr", "old"), ("cvr", "new"), ("ctr", "old")}


def test_snapshot_round_trip_keeps_window_and_alert_state() -> None:
    m = CalibrationMonitor(window_s=600.0, bucket_s=60.0, min_positives=1)
    m.update("ctr", "v", p=np.full(10, 0.5), y=np.r_[np.ones(2), np.zeros(8)], now=100.0)
    r = CalibrationMonitor.from_snapshot(m.snapshot())
    assert r.gauges(now=100.0) == m.gauges(now=100.0)
    assert r.alerting == [("ctr", "v")]
    assert r.update("ctr", "v", p=np.full(10, 0.5), y=np.r_[np.ones(2), np.zeros(8)], now=120.0) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        CalibrationMonitor(window_s=10.0, bucket_s=60.0)
    with pytest.raises(ValueError, match="length"):
        CalibrationMonitor().update("ctr", "v", p=[0.1], y=[0, 1], now=0.0)
