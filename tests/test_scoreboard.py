"""Scoreboard: metrics match scikit-learn, oracle on top, runs by dataset, a PNG is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from bidder.dataset import freeze, records_from_traffic
from bidder.scoreboard import build, evaluate, plot, render
from bidder.tracking import RunStore
from onnx_models.traffic import SimConfig, simulate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(3000), 2)  # many ties
    y = (rng.random(3000) < p * 0.3).astype(float)
    m = evaluate(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-9)


def test_base_rate_predictor_has_ne_one_and_scaled_predictions_show_in_calibration() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(10_000) < 0.1).astype(float)
    assert evaluate(y, np.full(len(y), y.mean()))["ne"] == pytest.approx(1.0)
    assert evaluate(y, np.full(len(y), 2 * y.mean()))["calibration"] == pytest.approx(2.0)


def test_board_lists_oracle_first_and_only_runs_of_the_dataset(tmp_path: Path) -> None:
    log = simulate(dataclasses.replace(SimConfig.small(), n_warmup=100, n_log=300), seed=4)
    data = freeze(records_from_traffic(log), root=tmp_path / "ds", mature_after_s=0.0, clock=lambda: 0.0)
    store = RunStore(tmp_path / "runs", clock=lambda: 0.0)
    for fam, auc in (("lr", 0.70), ("gbdt", 0.72), ("mlp", 0.71)):
        store.start("x", name=fam, tags={"family": fam, "kind": "train"}, dataset={"id": data.id}).log_metrics(
            {"test.ctr.auc": auc, "test.ctr.calibration": 1.01, "test.cvr.auc": auc - 0.05}).end()
    store.start("x", name="other", tags={"family": "lr"}, dataset={"id": "elsewhere"}).log_metrics(
        {"test.ctr.auc": 0.99}).end()
    store.start("x", name="t0", tags={"family": "lr", "kind": "trial"}, dataset={"id": data.id}).log_metrics(
        {"val.ctr.auc": 0.5}).end()
    rows = build(data, store.runs())
    assert [r.kind for r in rows[:2]] == ["oracle", "oracle"]
    assert sorted({r.name for r in rows[2:]}) == ["gbdt", "lr", "mlp"]
    assert len(build(data, store.runs(), include_trials=True)) == len(rows) + 1
    text = render(rows, title="t")
    assert "oracle" in text and "AUC/oracle" in text and "0.7200" in text
    png = plot(rows, tmp_path / "board.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
