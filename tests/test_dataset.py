"""Frozen datasets: folding labels, maturity, the time split, content hashes, tamper detection."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidder.lifecycle import dataset as ds
from bidder.lifecycle.dataset import DatasetCorruptError, Window, fold_labels, freeze, load, records_from_traffic
from bidder.settings import Settings
from onnx_models.traffic import SimConfig, simulate
from tests.cli_helpers import bidder

D = 18


def _imp(qid: str, ts: float, slots: int = 2) -> dict:
    return {"type": "impressions", "query_id": qid, "ts": ts, "label_version": 0,
            "model_versions": {"ctr": "c1", "cvr": "v1"},
            "examples": [{"impression_id": f"{qid}:{s}", "slot": s, "listing_id": 100 + s, "shop_id": 7,
                          "pctr": 0.1, "pcvr": 0.05, "bid": 0.3, "price": 0.2, "features": [float(s)] * D,
                          "clicked": 0, "converted": 0} for s in range(slots)]}


def _upd(iid: str, version: int, ts: float) -> dict:
    return {"type": "label_update", "impression_id": iid, "ts": ts, "clicked": 1,
            "converted": int(version == 2), "label_version": version}


@pytest.fixture(scope="module")
def sim_records() -> list[dict]:
    log = simulate(dataclasses.replace(SimConfig.small(), n_warmup=100, n_log=400), seed=5)
    return list(records_from_traffic(log))


def test_highest_label_version_wins_and_update_may_come_first() -> None:
    recs = [_upd("q:0", 2, 5.0), _imp("q", 0.0), _upd("q:0", 1, 3.0), _upd("q:1", 1, 4.0), _upd("q:1", 1, 4.0)]
    f = fold_labels(recs, as_of=10_000.0, mature_after_s=100.0)
    assert f.rows["impression_id"].tolist() == ["q:0", "q:1"]
    assert f.rows["clicked"].tolist() == [1, 1]
    assert f.rows["converted"].tolist() == [1, 0]
    assert f.rows["label_version"].tolist() == [2, 1]
    assert f.rows["ctr_version"].tolist() == ["c1", "c1"]


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(range(6))), st.integers(0, 5))
def test_fold_is_order_free_and_redelivery_is_idempotent(order: list[int], dup: int) -> None:
    recs = [_imp("a", 0.0), _imp("b", 1.0), _upd("a:0", 1, 2.0), _upd("a:0", 2, 3.0), _upd("b:1", 1, 4.0),
            _upd("zz:0", 1, 5.0)]
    want = fold_labels(recs, as_of=1e6, mature_after_s=1.0)
    shuffled = [recs[i] for i in order] + [recs[dup]]
    got = fold_labels(shuffled, as_of=1e6, mature_after_s=1.0)
    for c in ("impression_id", "clicked", "converted", "label_version"):
        assert got.rows[c].tolist() == want.rows[c].tolist()
    assert got.orphan_updates == 1


def test_only_matured_labels_are_kept() -> None:
    recs = [_imp("old", 0.0), _imp("young", 1000.0), _upd("young:0", 1, 1100.0)]
    f = fold_labels(recs, mature_after_s=600.0)  # as_of = latest ts seen = 1100
    assert f.rows["query_id"].tolist() == ["old", "old"]
    assert f.immature == 2
    assert f.as_of == 1100.0


def test_time_split_tests_on_the_period_right_after_training(tmp_path: Path, sim_records: list[dict]) -> None:
    d = freeze(sim_records, root=tmp_path, mature_after_s=0.0, clock=lambda: 0.0, train_frac=0.75)
    w = d.window
    assert d.train.cols["ts"].max() < w.train_end <= d.test.cols["ts"].min()
    assert d.train.cols["ts"].min() == w.train_start and d.test.cols["ts"].max() == w.test_end
    assert np.all(np.diff(d.train.cols["ts"]) >= 0)
    assert d.entry["rows"]["train"] == d.train.n and d.train.n + d.test.n == sum(
        len(r["examples"]) for r in sim_records if r["type"] == "impressions")
    x, y, oracle, _ = d.test.target("cvr")
    assert len(x) == int(d.test.cols["clicked"].sum()) and np.isfinite(oracle).all()
    assert set(np.unique(y).tolist()) <= {0.0, 1.0}
    by = Window.by_duration(np.array([0.0, 50.0, 100.0]), train_s=60.0, test_s=20.0)
    assert (by.train_start, by.train_end, by.test_end) == (20.0, 80.0, 100.0)


def test_refreezing_the_same_data_gives_the_same_id_and_writes_nothing(tmp_path: Path,
                                                                       sim_records: list[dict]) -> None:
    a = freeze(sim_records, root=tmp_path, mature_after_s=0.0, clock=lambda: 1.0)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / a.id).iterdir()}
    manifest = (tmp_path / "manifest.json").read_text()
    b = freeze(reversed(sim_records), root=tmp_path, mature_after_s=0.0, clock=lambda: 2.0)
    assert b.id == a.id
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / a.id).iterdir()} == files
    assert (tmp_path / "manifest.json").read_text() == manifest
    c = freeze(sim_records[:-10], root=tmp_path, mature_after_s=0.0, clock=lambda: 3.0)
    assert c.id != a.id
    assert set(json.loads((tmp_path / "manifest.json").read_text())["datasets"]) == {a.id, c.id}
    np.testing.assert_array_equal(load(a.id, root=tmp_path).test.x, a.test.x)


def test_a_changed_file_is_detected(tmp_path: Path, sim_records: list[dict]) -> None:
    d = freeze(sim_records, root=tmp_path, mature_after_s=0.0, clock=lambda: 0.0)
    path = tmp_path / d.id / "test.parquet"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetCorruptError, match="changed since it was frozen"):
        load(d.id, root=tmp_path)
    with pytest.raises(DatasetCorruptError, match="not in"):
        load("0" * 16, root=tmp_path)
    with pytest.raises(DatasetCorruptError):  # re-freezing never silently repairs a frozen dataset
        freeze(sim_records, root=tmp_path, mature_after_s=0.0, clock=lambda: 0.0)
    corrupt = bidder("dataset", "verify", d.id, "--root", tmp_path)
    assert corrupt.exit_code == 1 and "CORRUPT: " in corrupt.stderr


def test_cli_freeze_from_a_jsonl_dump_matches_the_library(tmp_path: Path, sim_records: list[dict]) -> None:
    dump = tmp_path / "labels.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in sim_records))
    froze = bidder("dataset", "freeze", "--labels", dump, "--root", tmp_path / "a", "--mature-after-s", "0")
    assert froze.exit_code == 0, froze.output
    out = json.loads(froze.stdout)
    lib = freeze(sim_records, root=tmp_path / "b", mature_after_s=0.0, clock=lambda: 0.0)
    assert out["id"] == lib.id
    verified = bidder("dataset", "verify", lib.id, "--root", tmp_path / "b")
    assert verified.exit_code == 0 and verified.stdout == f"{lib.id}: ok\n"


@pytest.mark.broker
def test_reads_the_examples_and_their_updates_to_their_ends(bootstrap: str, settings: Settings) -> None:
    """The examples are on ``impressions``, their updates on ``labels``: read both, they fold as one stream."""
    import asyncio

    import orjson

    from streams.producer import EventProducer

    imps, upds = [_imp("topic-q1", 10.0), _imp("topic-q2", 30.0)], [_upd("topic-q1:1", 2, 20.0)]

    async def send() -> None:
        async with EventProducer(settings, bootstrap=bootstrap) as p:
            for topic, recs in (("impressions", imps), ("labels", upds)):
                for r in recs:
                    await p.send_raw(topic, str(r.get("query_id", "topic-q1")).encode(), orjson.dumps(r))
                await p.send_raw(topic, b"junk", b"not json")
            await p.flush()

    asyncio.run(send())
    snaps = ds.read_label_topics(bootstrap, settings=settings)
    assert [s.topic for s in snaps] == list(ds.LABEL_TOPICS) == ["impressions", "labels"]
    assert all(s.skipped >= 1 for s in snaps)  # the junk of each topic, not an object
    got = [r for s in snaps for r in s.records]
    mine = [r for r in got if str(r.get("query_id", r.get("impression_id", ""))).startswith("topic-q")]
    assert mine == imps + upds
    f = fold_labels(mine, as_of=1e6, mature_after_s=0.0)
    assert f.rows["converted"].tolist() == [0, 1, 0, 0]


@pytest.mark.broker
def test_updates_without_their_examples_are_refused_with_the_topic_to_add(
        bootstrap: str, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``--topic labels`` alone would freeze no row: the freeze says which topic is missing instead."""
    import asyncio
    import uuid

    import orjson
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from bidder.topics import TOPICS
    from streams.kafka_config import aiokafka_admin_kwargs
    from streams.producer import EventProducer

    topic = f"labels-{uuid.uuid4().hex[:8]}"  # updates only, whatever other tests wrote to the shared topics

    async def setup() -> None:
        admin = AIOKafkaAdminClient(**aiokafka_admin_kwargs(settings, bootstrap=bootstrap))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=TOPICS["labels"].configs())])
        finally:
            await admin.close()
        async with EventProducer(settings, bootstrap=bootstrap) as p:
            await p.send_raw(topic, b"u-q1", orjson.dumps(_upd("u-q1:0", 1, 5.0)))
            await p.flush()

    asyncio.run(setup())
    with pytest.raises(ds.MissingExamplesError, match="impressions"):
        ds.read_label_topics(bootstrap, settings=settings, topics=[topic])
    monkeypatch.setenv("BIDDER_KAFKA_BOOTSTRAP", bootstrap)
    froze = bidder("dataset", "freeze", "--topic", topic, "--root", tmp_path, "--mature-after-s", "0")
    assert froze.exit_code == 2 and "no example" in froze.output and "impressions" in froze.output
    assert not (tmp_path / "manifest.json").exists()


def test_unknown_fields_and_stray_records_are_ignored() -> None:
    """Producers may add fields (shadow predictions, new record types): the fold reads what it knows."""
    clean = [_imp("x1", 10.0), _upd("x1:1", 2, 12.0), _imp("x2", 20.0)]
    noisy: list[Any] = [json.loads(json.dumps(r)) for r in clean]
    noisy[0]["shadow"] = {"versions": {"ctr": "s1"}, "pctr": [0.2, 0.3]}
    for ex in noisy[0]["examples"]:
        ex["shadow_pctr"] = 0.25
    noisy[1]["order_id"] = "o-1"
    noisy += [{"type": "calibration_alert", "ts": 15.0, "ratio": 2.0}, ["not", "an", "object"], 7, None]
    a = fold_labels(clean, as_of=100.0, mature_after_s=0.0)
    b = fold_labels(noisy, as_of=100.0, mature_after_s=0.0)
    assert a.n == b.n == 4 and a.impressions == b.impressions and a.updates == b.updates
    for col in ds.COLUMNS:
        np.testing.assert_array_equal(a.rows[col], b.rows[col], err_msg=col)


@pytest.mark.broker
def test_topic_snapshot_names_the_offsets_it_read(bootstrap: str, settings: Settings, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import orjson

    from streams.producer import EventProducer

    async def send(recs: list[dict[str, Any]], junk: bool) -> None:
        async with EventProducer(settings, bootstrap=bootstrap) as p:
            for r in recs:
                await p.send_raw("labels", str(r["query_id"]).encode(), orjson.dumps(r))
            if junk:
                await p.send_raw("labels", b"junk", b"[1, 2]")
            await p.flush()

    asyncio.run(send([_imp("snap-q1", 10.0), _imp("snap-q2", 11.0)], junk=True))
    first = ds.read_topic_snapshot(bootstrap, settings=settings)
    assert sorted(first.end_offsets) == list(range(settings.topic_partitions))
    assert len(first.records) + first.skipped == sum(first.end_offsets.values())  # everything below the ends
    assert first.skipped >= 1 and {"snap-q1", "snap-q2"} <= {r.get("query_id") for r in first.records}
    asyncio.run(send([_imp("snap-q3", 12.0)], junk=False))
    second = ds.read_topic_snapshot(bootstrap, settings=settings)
    assert sum(second.end_offsets.values()) > sum(first.end_offsets.values())
    assert "snap-q3" in {r.get("query_id") for r in second.records}
    assert "snap-q3" not in {r.get("query_id") for r in first.records}

    monkeypatch.setenv("BIDDER_KAFKA_BOOTSTRAP", bootstrap)
    froze = bidder("dataset", "freeze", "--topic", "labels", "--root", tmp_path, "--mature-after-s", "0")
    assert froze.exit_code == 0, froze.output  # examples on labels, as an older release wrote them, still freeze
    out = json.loads(froze.stdout)
    src = ds.load(out["id"], root=tmp_path).entry["source"]
    assert src["kind"] == "topic" and src["topics"] == ["labels"] and out["source"] == src
    assert sum(src["end_offsets"]["labels"].values()) >= sum(second.end_offsets.values()) and src["impressions"] >= 6
