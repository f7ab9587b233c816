"""Shadow scoring without a broker: predictions for exactly the served winners, nothing else touched; the
SHADOW pointer's start / stop; a worker's watcher refusing a bad shadow without touching serving."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest

from bidder.events import AuctionOutcome, Winner, to_json
from bidder.labels.attribution import provisional_labels
from bidder.query import shadow
from bidder.query.features import FEATURE_SPEC
from bidder.query.model_meta import ModelSpecError
from bidder.query.scoring import Models, load_models
from bidder.settings import DEFAULT_MODEL_DIR, Settings
from streams.metrics import WorkerMetrics
from streams.model_watch import ModelWatcher

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@pytest.fixture(scope="module")
def lr() -> Models:
    return load_models(DEFAULT_MODEL_DIR, "lr", "cpu", 1, 1)


def _outcome(qid: str, n: int, rng: np.random.Generator) -> AuctionOutcome:
    x = rng.uniform(0, 1, (n, FEATURE_SPEC.n_features)).astype(np.float32)
    winners = tuple(Winner(i, 100 + i, 7, 0.05, 0.02, 0.5, 0.3, tuple(x[i].tolist())) for i in range(n))
    return AuctionOutcome(qid, 1.0, 5, winners, {"ctr": "c", "cvr": "v"}, {"total": 1.0}, 50,
                          extra={"batch_queries": 3})


def test_shadow_scores_each_winner_and_changes_nothing_else(lr: Models) -> None:
    rng = np.random.default_rng(0)
    outcomes = [_outcome("a", 24, rng), _outcome("shed", 0, rng), _outcome("b", 5, rng)]
    out = shadow.shadow_outcomes(lr, outcomes)
    assert out[1] is outcomes[1]  # no winners, no shadow
    for before, after in zip(outcomes, out, strict=True):
        assert after.winners == before.winners and after.model_versions == before.model_versions
        assert after.extra.get("batch_queries") == 3
    for o in (out[0], out[2]):
        x = np.asarray([w.features for w in o.winners], np.float32)
        s = o.extra["shadow"]
        assert s["versions"] == lr.versions
        np.testing.assert_allclose(s["pctr"], lr.ctr.score(x), rtol=1e-6)
        np.testing.assert_allclose(s["pcvr"], lr.cvr.score(x), rtol=1e-6)
    # the labels record carries the shadow's predictions next to the champion's, per impression
    data = orjson.loads(orjson.dumps(to_json(out[2]), option=_NUMPY))
    rec = orjson.loads(orjson.dumps(provisional_labels(data), option=_NUMPY))
    assert rec["shadow_versions"] == lr.versions
    assert [e["shadow_pctr"] for e in rec["examples"]] == pytest.approx(out[2].extra["shadow"]["pctr"].tolist())
    assert [e["pctr"] for e in rec["examples"]] == pytest.approx([0.05] * 5)
    plain = provisional_labels(orjson.loads(orjson.dumps(to_json(outcomes[2]), option=_NUMPY)))
    assert "shadow_versions" not in plain and "shadow_pctr" not in plain["examples"][0]


def test_start_installs_a_loadable_release_and_stop_removes_the_pointer(tmp_path: Path, lr: Models) -> None:
    model_dir = tmp_path / "serving"
    assert shadow.read_pointer(model_dir) is None
    pointer = shadow.start(_lr_only(tmp_path), model_dir=model_dir, clock=lambda: 0.0, source="unit")
    found = shadow.read_pointer(model_dir)
    assert found is not None and found.versions == lr.versions == pointer["versions"]
    assert load_models(found.directory, found.family, "cpu", 1, 1).versions == lr.versions
    assert shadow.stop(model_dir) and shadow.read_pointer(model_dir) is None
    assert not shadow.stop(model_dir)


def test_a_broken_challenger_is_refused_before_any_pointer(tmp_path: Path) -> None:
    src = _lr_only(tmp_path)
    blob = (src / "lr_ctr.onnx").read_bytes()
    (src / "lr_ctr.onnx").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelSpecError):
        shadow.start(src, model_dir=tmp_path / "serving", clock=lambda: 0.0)
    assert not (tmp_path / "serving" / shadow.SHADOW).exists()


def _lr_only(tmp_path: Path) -> Path:
    src = tmp_path / "lr-src"
    src.mkdir(exist_ok=True)
    for name in ("lr_ctr.onnx", "lr_ctr.json", "lr_cvr.onnx", "lr_cvr.json"):
        shutil.copyfile(DEFAULT_MODEL_DIR / name, src / name)
    return src


@dataclass
class _Runtime:
    """What the watcher touches of ``streams.runtime.Runtime``."""

    shadow: Models | None = None
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    changes: list[dict[str, str] | None] = field(default_factory=list)

    def set_shadow(self, models: Models | None) -> None:
        self.shadow = models
        self.changes.append(None if models is None else models.versions)


def test_watcher_starts_refuses_and_stops_the_shadow(tmp_path: Path, lr: Models) -> None:
    model_dir = tmp_path / "serving"
    model_dir.mkdir()
    rt = _Runtime()
    watcher = ModelWatcher(rt, Settings(model_dir=model_dir))

    async def scenario() -> None:
        assert not await watcher.check_shadow()  # no pointer, nothing to do
        pointer = shadow.start(_lr_only(tmp_path), model_dir=model_dir, clock=lambda: 0.0)
        assert await watcher.check_shadow() and rt.shadow is not None
        assert rt.shadow.versions == lr.versions
        # a pointer to a corrupt release is refused; the running shadow is kept
        bad = model_dir / "shadow" / "broken"
        shutil.copytree(model_dir / pointer["path"], bad)
        (bad / "lr_cvr.onnx").write_bytes(b"\x00" * 64)
        (model_dir / shadow.SHADOW).write_text(json.dumps({**pointer, "release": "broken", "path": "shadow/broken"}))
        assert not await watcher.check_shadow()
        assert rt.shadow is not None and rt.shadow.versions == lr.versions
        assert "broken" in watcher.refusals[-1]
        assert not await watcher.check_shadow()  # the same bad pointer is not retried
        shadow.stop(model_dir)
        assert await watcher.check_shadow() and rt.shadow is None

    asyncio.run(scenario())
    assert rt.changes == [lr.versions, None]
    assert rt.metrics.model_swaps.labels(result="shadow_refused")._value.get() == 1.0


def test_scoreboard_online_shows_serving_and_shadow_on_the_same_impressions(tmp_path: Path) -> None:
    from tests.cli_helpers import bidder

    rng = np.random.default_rng(3)
    dump = tmp_path / "labels.jsonl"
    n, clicked = 0, 0
    with dump.open("w") as f:
        for q in range(200):
            p = rng.uniform(0.01, 0.3, 24)
            y = rng.uniform(size=24) < p
            examples = [{"impression_id": f"q{q}:{i}", "pctr": p[i], "pcvr": 0.1,
                         "shadow_pctr": min(1.0, p[i] + 0.15), "shadow_pcvr": 0.1, "features": [0.0] * 18}
                        for i in range(24)]
            rec = {"type": "impressions", "query_id": f"q{q}", "ts": 100.0 + q, "model_versions":
                   {"ctr": "mlp-ctr-aaa", "cvr": "mlp-cvr-bbb"},
                   "shadow_versions": {"ctr": "lr-ctr-ccc", "cvr": "lr-cvr-ddd"}, "examples": examples}
            f.write(orjson.dumps(rec, option=_NUMPY).decode() + "\n")
            for i in np.flatnonzero(y):
                f.write(json.dumps({"type": "label_update", "impression_id": f"q{q}:{i}", "label_version": 1,
                                    "clicked": 1, "converted": 0}) + "\n")
            n, clicked = n + 24, clicked + int(y.sum())
    board = bidder("scoreboard", "--online", "--labels", dump, "--as-of", "10000", "--mature-after-s", "60",
                   "--plot", tmp_path / "online.png")
    assert board.exit_code == 0, board.output
    out = board.stdout
    assert f"{n} matured impressions ({clicked} clicked" in out
    assert "shadow lr-ctr-ccc" in out and "serving mlp-ctr-aaa (vs shadow)" in out
    assert (tmp_path / "online.png").exists()
    # nothing matured yet: no rows, exit 1
    assert bidder("scoreboard", "--online", "--labels", dump, "--as-of", "150", "--mature-after-s", "60").exit_code == 1
