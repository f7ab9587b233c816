"""Scoreboard: metrics match scikit-learn, oracle on top, runs by dataset, a PNG is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from bidder.lifecycle.dataset import freeze, records_from_traffic
from bidder.lifecycle.scoreboard import build, evaluate, plot, render
from bidder.lifecycle.tracking import RunStore
from onnx_models.traffic import SimConfig, simulate
from tests.cli_helpers import bidder


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


def test_models_and_served_predictions_are_scored_on_the_frozen_test_rows(tmp_path: Path) -> None:
    import json
    import shutil

    from bidder.lifecycle import scoreboard
    from bidder.query.scoring import load_models
    from bidder.settings import DEFAULT_MODEL_DIR

    log = simulate(dataclasses.replace(SimConfig.small(), n_warmup=100, n_log=1200), seed=6)
    data = freeze(records_from_traffic(log), root=tmp_path / "ds", mature_after_s=0.0, clock=lambda: 0.0)
    lr = load_models(DEFAULT_MODEL_DIR, "lr", "cpu", 1, 1)
    rows = {r.target: r for r in scoreboard.model_rows(data, DEFAULT_MODEL_DIR, "lr")}
    for t in ("ctr", "cvr"):
        x, y, _, _ = data.test.target(t)
        want = evaluate(y, getattr(lr, t).score(x))
        assert rows[t].kind == "model" and rows[t].name == lr.versions[t]
        assert rows[t].metrics["auc"] == pytest.approx(want["auc"]) and rows[t].metrics["ne"] == want["ne"]
    with pytest.raises(ValueError, match="model families"):
        scoreboard.model_rows(data, DEFAULT_MODEL_DIR)  # several families there: which one is ambiguous

    serving = tmp_path / "serving"  # a serving dir: the CHAMPION pointer names the family and the release
    (serving / "releases" / "r1").mkdir(parents=True)
    for f in DEFAULT_MODEL_DIR.glob("gbdt_*"):
        shutil.copy(f, serving / "releases" / "r1" / f.name)
    (serving / "CHAMPION").write_text(json.dumps({"release": "r1", "family": "gbdt", "path": "releases/r1"}))
    assert {r.family for r in scoreboard.model_rows(data, serving)} == {"gbdt"}

    served = {r.target: r for r in scoreboard.served_rows(data)}  # the policy served ctr/cvr_smoothed
    _, y, _, _ = data.test.target("ctr")
    assert served["ctr"].kind == "served" and served["ctr"].name == "policy-ctr_smoothed"
    assert served["ctr"].metrics["auc"] == evaluate(y, data.test.cols["ctr_smoothed"])["auc"]
    clicked = data.test.cols["clicked"].astype(bool)
    assert served["cvr"].metrics["auc"] == evaluate(data.test.cols["converted"][clicked],
                                                    data.test.cols["cvr_smoothed"][clicked])["auc"]

    boards = bidder("scoreboard", "--dataset", data.id, "--datasets-root", tmp_path / "ds", "--runs",
                    tmp_path / "runs", "--models", f"{DEFAULT_MODEL_DIR}:lr", "--models", serving,
                    "--served", "--plot", tmp_path / "b.png")
    assert boards.exit_code == 0, boards.output
    board = boards.stdout
    assert lr.versions["ctr"] in board and "gbdt" in board and "served" in board
