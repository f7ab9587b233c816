"""T3, model files corrupted during hot swap: every query still answered, bad releases refused with a
reason, the good one serving within seconds.

Runs on the session broker (noida by default): nothing here depends on broker behaviour. Releases are
written the way ``bidder promote`` writes them (an immutable ``releases/<name>/`` directory, then an
atomic ``CHAMPION`` pointer), including a pointer to a half-written release.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bidder.events import encode
from bidder.settings import Settings
from streams.admin import create_topics
from streams.broker import embedded_broker
from streams.harness.simulator import Simulator
from streams.process import WorkerProcess
from streams.producer import EventProducer
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.broker
MODELS = Path(__file__).resolve().parent.parent / "onnx_models"


def release(root: Path, name: str, family: str, mutate: Any = None) -> Path:
    d = root / "releases" / name
    d.mkdir(parents=True)
    for target in ("ctr", "cvr"):
        for ext in ("onnx", "json"):
            shutil.copy(MODELS / f"{family}_{target}.{ext}", d / f"{family}_{target}.{ext}")
    if mutate is not None:
        mutate(d)
    return d


def point(root: Path, name: str, family: str) -> None:
    tmp = root / "CHAMPION.tmp"
    tmp.write_text(json.dumps({"release": name, "family": family, "path": f"releases/{name}"}))
    os.replace(tmp, root / "CHAMPION")


def truncate(d: Path) -> None:
    p = d / "mlp_ctr.onnx"
    p.write_bytes(p.read_bytes()[: 1000])


def random_bytes(d: Path) -> None:
    (d / "mlp_cvr.onnx").write_bytes(np.random.default_rng(0).bytes(5000))


def wrong_input_name(d: Path) -> None:
    p = d / "mlp_ctr.onnx"
    m = onnx.load(p)
    m.graph.input[0].name = "inputs"
    for node in m.graph.node:
        node.input[:] = ["inputs" if i == "features" else i for i in node.input]
    p.write_bytes(m.SerializeToString())
    meta = json.loads((d / "mlp_ctr.json").read_text())
    import hashlib

    meta["onnx_sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    (d / "mlp_ctr.json").write_text(json.dumps(meta))


def nan_weights(d: Path) -> None:
    import hashlib

    p = d / "mlp_cvr.onnx"
    m = onnx.load(p)
    init = m.graph.initializer[0]
    arr = numpy_helper.to_array(init).copy()
    arr[...] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    p.write_bytes(m.SerializeToString())
    meta = json.loads((d / "mlp_cvr.json").read_text())
    meta["onnx_sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    meta["golden_outputs"] = [float("nan")] * len(meta.get("golden_outputs", []))
    (d / "mlp_cvr.json").write_text(json.dumps(meta).replace("NaN", "NaN"))


def half_written(d: Path) -> None:
    (d / "mlp_cvr.json").unlink()


async def outcome_versions_by_partition(settings: Settings, bootstrap: str, ids: set[str]) -> dict[int, list[str]]:
    import orjson

    from streams.tail import tail_consumer

    consumer = await tail_consumer(settings, bootstrap, ["auctions"], from_beginning=True)
    out: dict[int, list[str]] = {}
    try:
        for _ in range(20):
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for r in records:
                    v = orjson.loads(r.value)
                    if v["query_id"] in ids:
                        out.setdefault(tp.partition, []).append(v["model_versions"]["ctr"])
    finally:
        await consumer.stop()
    return out


def test_corrupt_releases_are_refused_and_good_one_serves(settings: Settings, small_world: Any,
                                                          tmp_path: Path) -> None:
    """On its own noida broker, so no other worker prices the same queries."""
    with embedded_broker("noida") as broker:
        asyncio.run(create_topics(settings, bootstrap=broker.bootstrap))
        catalog = Simulator(small_world, rng=np.random.default_rng(0)).catalog(now=time.time())

        async def send_catalog() -> None:
            async with EventProducer(settings, bootstrap=broker.bootstrap) as p:
                for ev in [*catalog[0], *catalog[1]]:
                    await p.send(ev)

        asyncio.run(send_catalog())
        run_swaps(broker.bootstrap, settings, small_world, tmp_path)


def run_swaps(bootstrap: str, settings: Settings, small_world: Any, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    for f in MODELS.glob("mlp_c*"):
        shutil.copy(f, model_dir / f.name)
    swapper = WorkerProcess.start(bootstrap=bootstrap, log_path=tmp_path / "worker.log",
                                 env={"BIDDER_APP_ID": "bidder-t3", "BIDDER_MODEL_DIR": str(model_dir)})
    sim = Simulator(small_world, rng=np.random.default_rng(9), n_candidates=60)
    sent: list[str] = []
    try:
        swapper.wait_ready()
        bad = [("truncated", truncate), ("random-bytes", random_bytes), ("wrong-input", wrong_input_name),
               ("nan", nan_weights), ("half-written", half_written)]
        for name, mutate in bad:
            release(model_dir, name, "mlp", mutate)
        release(model_dir, "good-lr", "lr")

        async def traffic() -> None:
            async with EventProducer(settings, bootstrap=bootstrap) as p:
                steps = [name for name, _ in bad] + ["good-lr"]
                for i in range(16 * 20):  # 20 q/s for 16 s; a new pointer every 2 s
                    if i % 40 == 20 and i // 40 < len(steps):
                        name = steps[i // 40]
                        point(model_dir, name, "lr" if name == "good-lr" else "mlp")
                    q = sim.next_query(now=time.time())
                    await p.send_raw("queries", q.query_id.encode(), encode(q))
                    sent.append(q.query_id)
                    await asyncio.sleep(0.05)

        asyncio.run(traffic())
        recs = asyncio.run(read_until(settings, bootstrap, ["auctions"], lambda rs: set(sent) <= {
            v["query_id"] for _, v, _ in rs if v}, timeout_s=60))
        outcomes = {v["query_id"]: v for _, v, _ in recs if v and v["query_id"] in set(sent)}
        assert set(outcomes) == set(sent)  # every query answered
        versions = [outcomes[q]["model_versions"]["ctr"] for q in sent]
        assert versions[0].startswith("mlp-ctr-")
        assert versions[-1].startswith("lr-ctr-")  # the good release serves
        first_lr = next(i for i, v in enumerate(versions) if v.startswith("lr-"))
        assert first_lr >= 5 * 40 + 20  # nothing swapped before the good pointer
        # and it stays: in each partition (processing order), no old-model outcome after a new-model one
        by_partition = asyncio.run(outcome_versions_by_partition(settings, bootstrap, set(sent)))
        for versions_in_order in by_partition.values():
            if any(v.startswith("lr-") for v in versions_in_order):
                k = next(i for i, v in enumerate(versions_in_order) if v.startswith("lr-"))
                assert all(v.startswith("lr-") for v in versions_in_order[k:])
        assert first_lr - (5 * 40 + 20) <= 3 * 20  # serving within 3 s of the pointer
        status, metrics = swapper.get("/metrics")
        assert status == 200
        assert 'bidder_model_swaps_total{result="refused"} 5.0' in metrics
        assert 'bidder_model_swaps_total{result="swapped"} 1.0' in metrics
        log = swapper.log_tail(200_000)
        for name, _ in bad:
            assert f"release {name}:" in log
        assert swapper.process.poll() is None
    finally:
        swapper.stop()


def test_promotion_reaches_the_micro_batcher(settings: Settings, small_world: Any, tmp_path: Path) -> None:
    """With micro-batching on (the chart's GPU profile), a promoted model with other predictions prices
    every query after the swap, and every outcome names the model that priced it: each winner's pCTR and
    pCVR on the ``auctions`` topic are what the named version predicts for the features it served."""
    from bidder.query.scoring import load_models

    mlp, lr = (load_models(MODELS, family, "cpu", 1, 1) for family in ("mlp", "lr"))
    by_version = {m.versions["ctr"]: m for m in (mlp, lr)}
    assert len(by_version) == 2
    with embedded_broker("noida") as broker:
        asyncio.run(create_topics(settings, bootstrap=broker.bootstrap))
        catalog = Simulator(small_world, rng=np.random.default_rng(0)).catalog(now=time.time())
        model_dir = tmp_path / "models"
        model_dir.mkdir()
        for f in MODELS.glob("mlp_c*"):
            shutil.copy(f, model_dir / f.name)
        worker = WorkerProcess.start(bootstrap=broker.bootstrap, log_path=tmp_path / "worker.log",
                                     env={"BIDDER_APP_ID": "bidder-t3mb", "BIDDER_MODEL_DIR": str(model_dir),
                                          "BIDDER_MICROBATCH_ENABLED": "true"})
        sim = Simulator(small_world, rng=np.random.default_rng(5), n_candidates=60)
        sent: list[str] = []
        try:
            async def traffic() -> None:
                async with EventProducer(settings, bootstrap=broker.bootstrap) as p:
                    for ev in [*catalog[0], *catalog[1]]:
                        await p.send(ev)
                    await asyncio.to_thread(worker.wait_ready)
                    release(model_dir, "lr-1", "lr")
                    for i in range(8 * 20):  # 20 q/s for 8 s, the pointer moved after 3 s
                        if i == 60:
                            point(model_dir, "lr-1", "lr")
                        q = sim.next_query(now=time.time())
                        await p.send_raw("queries", q.query_id.encode(), encode(q))
                        sent.append(q.query_id)
                        await asyncio.sleep(0.05)

            asyncio.run(traffic())
            recs = asyncio.run(read_until(settings, broker.bootstrap, ["auctions"], lambda rs: set(sent) <= {
                v["query_id"] for _, v, _ in rs if v}, timeout_s=60))
            status, ready = worker.get("/readyz")
            assert worker.process.poll() is None
        finally:
            worker.stop()
    outcomes = {v["query_id"]: v for _, v, _ in recs if v and v["query_id"] in set(sent)}
    assert set(outcomes) == set(sent)
    versions = [outcomes[q]["model_versions"]["ctr"] for q in sent]
    assert versions[0] == mlp.versions["ctr"] and versions[-1] == lr.versions["ctr"]
    mixed = 0
    prices: dict[str, list[float]] = {}
    for o in outcomes.values():
        named = by_version[o["model_versions"]["ctr"]]
        assert o["model_versions"] == named.versions
        if not o["winners"]:
            continue
        x = np.asarray([w["features"] for w in o["winners"]], np.float32)
        got = np.asarray([[w["pctr"], w["pcvr"]] for w in o["winners"]])
        want = np.stack([named.ctr.score(x), named.cvr.score(x)], axis=1)
        mixed += not np.allclose(got, want, rtol=1e-5, atol=1e-7)
        prices.setdefault(o["model_versions"]["ctr"], []).extend(w["price"] for w in o["winners"])
    assert mixed == 0, f"{mixed} outcomes priced by a model other than the one they name"
    # the check can tell the models apart: the two disagree on these features
    other = lr if named is mlp else mlp
    assert not np.allclose(got, np.stack([other.ctr.score(x), other.cvr.score(x)], axis=1), rtol=1e-3)
    assert set(prices) == set(by_version)
    assert abs(np.mean(prices[mlp.versions["ctr"]]) - np.mean(prices[lr.versions["ctr"]])) > 1e-3
    assert status == 200 and ready["models_consistent"] is True, ready
    assert ready["serving"] == {"pipeline": True, "versions": True, "micro_batcher": True, "drift_reference": True}
    print(f"\nhot swap with micro-batching: {len(sent)} queries, {versions.count(lr.versions['ctr'])} priced by "
          f"the promoted model, mixed outcomes {mixed}; mean price per click "
          + ", ".join(f"{v}: {np.mean(p):.4f}" for v, p in prices.items()))
