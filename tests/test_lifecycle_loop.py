"""The loop offline, through the entry points the CLI wires: simulated label records -> JSONL dump ->
``dataset freeze`` -> ``train --trials`` (tracked) -> ``scoreboard`` -> ``promote`` into a model dir ->
``load_models`` serves the new version."""

from __future__ import annotations

import json
from pathlib import Path

from bidder.lifecycle import promotion
from bidder.lifecycle.dataset import records_from_traffic
from bidder.lifecycle.tracking import RunStore
from bidder.query.model_meta import ModelMeta
from bidder.query.scoring import load_models
from onnx_models.traffic import simulate
from onnx_models.train import TrainConfig
from tests.cli_helpers import bidder


def test_labels_to_serving_model(tmp_path: Path) -> None:
    dump = tmp_path / "labels.jsonl"
    with dump.open("w") as f:
        for rec in records_from_traffic(simulate(TrainConfig.small().sim, seed=3)):
            f.write(json.dumps(rec) + "\n")
    ds_root, runs = tmp_path / "datasets", tmp_path / "runs"
    froze = bidder("dataset", "freeze", "--labels", dump, "--root", ds_root, "--mature-after-s", "0")
    assert froze.exit_code == 0, froze.output
    ds_id = json.loads(froze.stdout)["id"]

    trains = bidder("train", "--family", "lr", "--dataset", ds_id, "--trials", "2", "--small",
                    "--datasets-root", ds_root, "--runs", runs)
    assert trains.exit_code == 0, trains.output
    trained = json.loads(trains.stdout)
    assert f"promote with: bidder promote {trained['models']}" in trains.stderr
    store = RunStore(runs, clock=lambda: 0.0)
    run = store.get(trained["run_id"])
    assert run.status == "FINISHED" and run.dataset["id"] == ds_id and run.code["commit"]
    assert run.params["trials"] == 2 and "ctr.lr_c" in run.params
    trials = [r for r in store.runs() if r.tags.get("kind") == "trial"]
    assert len(trials) == 4 and {r.tags["parent"] for r in trials} == {run.run_id}  # 2 per target
    assert run.metrics["test.ctr.auc"] > 0.7 and run.metrics["oracle.ctr.auc"] >= run.metrics["test.ctr.auc"] - 0.02
    meta = ModelMeta.load(Path(trained["models"]) / "lr_ctr.json")
    assert meta.training["dataset_id"] == ds_id and meta.extra["parity"]["max_abs_dp"] < 1e-4

    png = tmp_path / "board.png"
    boards = bidder("scoreboard", "--dataset", ds_id, "--datasets-root", ds_root, "--runs", runs, "--plot", png)
    assert boards.exit_code == 0, boards.output
    board = boards.stdout
    assert "oracle" in board and run.run_id in board and png.exists()

    serving = tmp_path / "serving"
    promoted = bidder("promote", run.run_id, "--runs", runs, "--model-dir", serving, "--datasets-root", ds_root)
    assert promoted.exit_code == 0, promoted.output
    assert "decision: promoted" in promoted.stdout
    pointer = json.loads((serving / promotion.CHAMPION).read_text())
    models = load_models(serving / pointer["path"], pointer["family"], "cpu", 1, 1)
    assert models.versions == {"ctr": run.tags["ctr_version"], "cvr": run.tags["cvr_version"]}
    assert load_models(serving, "lr", "cpu", 1, 1).versions == models.versions
