"""Shadow scoring and the calibration monitor in a running worker, over a real broker.

The champion (the shipped MLP pair) prices the auctions; a shadow (the shipped LR pair with every
probability moved up by 0.15) scores the same winners. Checked from the topics: outcomes carry the
shadow's versions and predictions (= the shifted LR on the served features) while the champion's pCTR is
the champion's own; labels copy them; the shadow's over-prediction raises a calibration alert on
``calibration-alerts`` naming the shadow version; the online scoreboard shows both on the same
impressions; stopping the shadow stops the extra scoring.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from bidder.lifecycle.online_board import fold_online, online_rows
from bidder.query import shadow
from bidder.query.scoring import load_models
from bidder.settings import Settings
from streams.admin import create_topics
from streams.broker import embedded_broker
from streams.harness.market import WorldConfig
from streams.harness.simulate import SimulationReport, run_simulation
from streams.process import WorkerProcess
from tests.kafka_helpers import read_until
from tests.test_promotion import shifted_copy

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SHIPPED = Path(__file__).resolve().parents[1] / "onnx_models"
WINDOWS = {"BIDDER_CLICK_WINDOW_S": "3", "BIDDER_ATTRIBUTION_WINDOW_S": "3",
           "BIDDER_CALIBRATION_MIN_POSITIVES": "20", "BIDDER_CALIBRATION_BUCKET_S": "5"}


def test_shadow_scores_beside_the_champion_and_is_judged_online(settings: Settings, tmp_path: Path) -> None:
    model_dir = tmp_path / "serving"
    shutil.copytree(SHIPPED, model_dir, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shifted = shifted_copy(SHIPPED, tmp_path / "shifted", shift=0.15, family="lr")
    pointer = shadow.start(shifted, model_dir=model_dir, clock=time.time, source="test")
    shadow_versions = pointer["versions"]
    champion = load_models(SHIPPED, "mlp", "cpu", 1, 1)
    plain_lr = load_models(SHIPPED, "lr", "cpu", 1, 1)
    stopped_at: dict[str, float] = {}

    with embedded_broker("noida") as broker:
        asyncio.run(create_topics(settings, bootstrap=broker.bootstrap))
        workers: list[WorkerProcess] = []

        async def start_worker() -> None:
            w = WorkerProcess.start(bootstrap=broker.bootstrap, log_path=tmp_path / "worker.log",
                                    env={**WINDOWS, "BIDDER_MODEL_DIR": str(model_dir),
                                         "BIDDER_APP_ID": "bidder-shadow"})
            workers.append(w)
            await asyncio.to_thread(w.wait_ready)

        def tick(r: SimulationReport) -> None:
            if r.elapsed_s >= 22.0 and not stopped_at:
                assert shadow.stop(model_dir)
                stopped_at["t"] = time.time()

        try:
            report = asyncio.run(run_simulation(
                settings, bootstrap=broker.bootstrap, rate=20.0, duration_s=28.0, seed=5,
                world=WorldConfig(n_shops=20, n_listings=2000, n_users=400), n_candidates=100,
                purchase_delay_mean_s=0.5, after_catalog=start_worker, on_tick=tick, drain_s=8.0))
            assert stopped_at, "the simulation ended before the shadow was stopped"
            topics = ["auctions", "impressions", "labels", "calibration-alerts"]
            recs = asyncio.run(read_until(settings, broker.bootstrap, topics, lambda rs: False, timeout_s=8.0))
            status, metrics = workers[0].get("/metrics")
        finally:
            for w in workers:
                w.stop()

    outcomes = [v for t, v, _ in recs if t == "auctions" and v and v["winners"]]
    assert report.outcomes >= 300 and len(outcomes) >= 300
    shadowed = [o for o in outcomes if "shadow" in o]
    assert len(shadowed) >= 200
    # the champion prices; the shadow's numbers are the shifted LR on exactly the served features
    sample = shadowed[:: max(1, len(shadowed) // 40)]
    x = np.asarray([w["features"] for o in sample for w in o["winners"]], np.float32)
    served = np.asarray([w["pctr"] for o in sample for w in o["winners"]], np.float32)
    got_ctr = np.asarray([p for o in sample for p in o["shadow"]["pctr"]], np.float32)
    got_cvr = np.asarray([p for o in sample for p in o["shadow"]["pcvr"]], np.float32)
    assert all(o["shadow"]["versions"] == shadow_versions for o in shadowed)
    assert all(o["model_versions"] == champion.versions for o in outcomes)
    np.testing.assert_allclose(served, champion.ctr.score(x), atol=1e-5)
    np.testing.assert_allclose(got_ctr, np.minimum(plain_lr.ctr.score(x) + 0.15, 1.0), atol=1e-5)
    np.testing.assert_allclose(got_cvr, np.minimum(plain_lr.cvr.score(x) + 0.15, 1.0), atol=1e-5)
    # stopping the shadow stops it (the watcher polls every second)
    late = [o for o in outcomes if o["ts"] > stopped_at["t"] + 3.0]
    assert late and not any("shadow" in o for o in late)

    # the examples carry the shadow's predictions per impression
    labels = [v for t, v, _ in recs if t == "impressions" and v and v.get("type") == "impressions"]
    by_query = {o["query_id"]: o for o in shadowed}
    checked = 0
    for rec in labels:
        o = by_query.get(rec["query_id"])
        if o is not None:
            assert rec["shadow_versions"] == shadow_versions
            assert [e["shadow_pctr"] for e in rec["examples"]] == pytest.approx(o["shadow"]["pctr"])
            checked += 1
    assert checked == len(by_query)

    # the monitor judged the shadow out of bounds (it over-predicts by ~0.15 on a ~few-% click rate)
    alerts = [v for t, v, _ in recs if t == "calibration-alerts" and v]
    shadow_ctr = [a for a in alerts if a["role"] == "shadow" and a["target"] == "ctr"]
    assert shadow_ctr, alerts
    first = shadow_ctr[0]
    assert first["state"] == "out" and first["version"] == shadow_versions["ctr"] and first["ratio"] > 1.5
    assert first["positives"] >= 20
    assert status == 200 and 'role="shadow"' in metrics and "bidder_calibration_ratio" in metrics

    # the online scoreboard: shadow and serving on the same matured impressions
    fold = fold_online([v for t, v, _ in recs if t in ("impressions", "labels") and v], as_of=time.time(),
                       mature_after_s=6.0)
    rows = {(r.target, r.name): r.metrics for r in online_rows(fold)}
    s_row = rows[("ctr", f"shadow {shadow_versions['ctr']}")]
    vs_row = rows[("ctr", f"serving {champion.versions['ctr']} (vs shadow)")]
    assert s_row["n"] == vs_row["n"] >= 1000 and s_row["rate"] == vs_row["rate"] > 0
    assert s_row["calibration"] > 1.5 and s_row["calibration"] > vs_row["calibration"]
    assert rows[("ctr", f"serving {champion.versions['ctr']}")]["n"] == fold.n
    assert fold.n > s_row["n"]  # impressions served after the shadow stopped have no shadow row
