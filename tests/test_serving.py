"""Serving: one swap reaches every place that scores with the champion."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bidder.query.catalog import Catalog
from bidder.query.features import Priors
from bidder.query.microbatch import MicroBatcher
from bidder.query.pipeline import BidPipeline, UnlimitedBudget
from bidder.query.rolling import RollingStats
from bidder.query.scoring import Models, load_models
from bidder.settings import DEFAULT_MODEL_DIR, Settings
from streams.metrics import WorkerMetrics
from streams.serving import Serving


@pytest.fixture(scope="module")
def families() -> dict[str, Models]:
    return {f: load_models(DEFAULT_MODEL_DIR, f, "cpu", 1, 1) for f in ("mlp", "lr", "gbdt")}


def _serving(champion: Models, fallback: Models | None, *, drift: bool = True) -> tuple[Serving, WorkerMetrics]:
    pipeline = BidPipeline(
        catalog=Catalog(), stats=RollingStats(half_life_s=60.0), priors=Priors(), ctr=champion.ctr,
        cvr=champion.cvr, budget=UnlimitedBudget(), slots=4, reserve_price=0.05, min_bid=0.02, max_bid=3.0,
        clock=time.time, rng=np.random.default_rng(0), model_versions=champion.versions)
    batcher = MicroBatcher(primary=[champion.ctr, champion.cvr],
                           fallback=None if fallback is None else [fallback.ctr, fallback.cvr],
                           default_budget_ms=50.0, clock=time.perf_counter)
    metrics = WorkerMetrics()
    return Serving(settings=Settings(drift_enabled=drift), pipeline=pipeline, champion=champion, batcher=batcher,
                   fallback=fallback, model_info=metrics.model, rng=np.random.default_rng(0)), metrics


def test_swap_reaches_pipeline_batcher_drift_and_metrics(families: dict[str, Models]) -> None:
    mlp, lr, gbdt = families["mlp"], families["lr"], families["gbdt"]
    serving, metrics = _serving(mlp, lr)
    assert all(serving.check().values()) and set(serving.check()) == {
        "pipeline", "versions", "micro_batcher", "drift_reference"}
    assert serving.swaps == 0
    x = np.random.default_rng(1).random((30, 18)).astype(np.float32)
    serving.swap(gbdt)
    assert serving.check() == dict.fromkeys(("pipeline", "versions", "micro_batcher", "drift_reference"), True)
    assert serving.swaps == 1
    # the micro-batcher now scores with the promoted model, not the one it was built with
    assert serving.batcher is not None
    serving.batcher.submit("q", x)
    (result,) = serving.batcher.flush()
    np.testing.assert_allclose(result.scores[0], gbdt.ctr.score(x), rtol=1e-6)
    assert not np.allclose(result.scores[0], mlp.ctr.score(x), rtol=1e-3)
    assert serving.batcher.fallback is not None and serving.batcher.fallback[0] is lr.ctr  # the fallback stays
    assert serving.drift is not None and serving.drift.model_version.startswith(gbdt.versions["ctr"])
    info = {s.labels.get("ctr_version") for s in metrics.model.collect()[0].samples}
    assert info == {gbdt.versions["ctr"]}
    serving.set_shadow(lr)
    info = {s.labels.get("shadow_ctr_version") for s in metrics.model.collect()[0].samples}
    assert info == {lr.versions["ctr"]}


def test_check_notices_a_place_left_behind(families: dict[str, Models]) -> None:
    serving, _ = _serving(families["mlp"], None, drift=False)
    assert serving.check() == {"pipeline": True, "versions": True, "micro_batcher": True}
    assert serving.batcher is not None
    serving.batcher.primary = [families["lr"].ctr, families["lr"].cvr]  # what a partial swap would leave
    assert serving.check()["micro_batcher"] is False


def test_scorers_are_not_replaced_under_queued_work(families: dict[str, Models]) -> None:
    serving, _ = _serving(families["mlp"], None, drift=False)
    assert serving.batcher is not None
    serving.batcher.submit("q", np.zeros((5, 18), np.float32))
    with pytest.raises(RuntimeError, match="queued"):
        serving.swap(families["lr"])
    assert all(serving.check().values())  # nothing half-swapped
    serving.batcher.flush()
    serving.swap(families["lr"])
    assert all(serving.check().values()) and serving.champion is families["lr"]
