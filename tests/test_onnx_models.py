"""Training and export: parity of every family's ONNX graph with its framework, determinism, committed files.

Parity tolerances (issue 3): LR and MLP max |dp| <= 1e-5. Trees: ONNX keeps split thresholds in
float32 while LightGBM compares float64, so a value between the two roundings can take the other branch;
we allow max |dp| <= 1e-4 and require 99.9 % of rows within 1e-6 (see onnx_models/export.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bidder.query.model_meta import ModelMeta
from bidder.query.scoring import NumpyMlpScorer, OnnxScorer
from bidder.settings import DEFAULT_MODEL_DIR
from onnx_models.export import INPUT_NAME, OUTPUT_NAME
from onnx_models.traffic import SimConfig, simulate
from onnx_models.train import Fitted, TrainConfig, logging_policy, run, split_log

NAMES = [f"{f}_{t}" for f in ("lr", "gbdt", "mlp", "mlp_int8") for t in ("ctr", "cvr")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[ModelMeta, Fitted]]]:
    out = tmp_path_factory.mktemp("models")
    return out, run(("lr", "gbdt", "mlp"), seed=7, cfg=TrainConfig.small(), out_dir=out)


@pytest.fixture(scope="module")
def test_rows() -> np.ndarray:
    # rows the models' own loop serves (the training log's policy), not a different bidder's
    log = simulate(SimConfig.small(), seed=11, policy=logging_policy(TrainConfig.small(), seed=7))
    return np.ascontiguousarray(log.x[:4000])


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


@pytest.mark.parametrize("name", ["lr_ctr", "lr_cvr", "mlp_ctr", "mlp_cvr"])
def test_parity_lr_mlp(trained: tuple[Path, dict[str, tuple[ModelMeta, Fitted]]], test_rows: np.ndarray,
                       name: str) -> None:
    out, models = trained
    got = _ort(out / f"{name}.onnx", test_rows)
    want = models[name][1].predict(test_rows)
    assert got.shape == (len(test_rows),)
    assert float(np.max(np.abs(got - want))) <= 1e-5


@pytest.mark.parametrize("name", ["gbdt_ctr", "gbdt_cvr"])
def test_parity_gbdt(trained: tuple[Path, dict[str, tuple[ModelMeta, Fitted]]], test_rows: np.ndarray,
                     name: str) -> None:
    out, models = trained
    diff = np.abs(_ort(out / f"{name}.onnx", test_rows) - models[name][1].predict(test_rows))
    assert float(diff.max()) <= 1e-4
    assert float(np.mean(diff <= 1e-6)) >= 0.999


@pytest.mark.parametrize("target", ["ctr", "cvr"])
def test_int8_mlp_stays_close_to_float(trained: tuple[Path, dict[str, tuple[ModelMeta, Fitted]]],
                                       test_rows: np.ndarray, target: str) -> None:
    out, models = trained
    got = _ort(out / f"mlp_int8_{target}.onnx", test_rows)
    assert float(np.max(np.abs(got - models[f"mlp_{target}"][1].predict(test_rows)))) <= 0.05
    assert models[f"mlp_int8_{target}"][0].extra["max_abs_dp_vs_float_test"] <= 0.05


def test_numpy_reference_matches_torch(trained: tuple[Path, dict[str, tuple[ModelMeta, Fitted]]],
                                       test_rows: np.ndarray) -> None:
    out, models = trained
    ref = NumpyMlpScorer.from_onnx(out / "mlp_ctr.onnx").score(test_rows)
    assert float(np.max(np.abs(ref - models["mlp_ctr"][1].predict(test_rows)))) <= 1e-5


def test_outputs_are_plain_probability_tensors(
    trained: tuple[Path, dict[str, tuple[ModelMeta, Fitted]]],
) -> None:
    out, _ = trained
    for name in NAMES:
        sess = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        assert [o.name for o in sess.get_outputs()] == [OUTPUT_NAME]  # no ZipMap, no label
        assert sess.get_outputs()[0].type == "tensor(float)"
        OnnxScorer(out / f"{name}.onnx")  # passes every load-time check


def test_training_is_deterministic(trained: tuple[Path, dict[str, tuple[ModelMeta, Fitted]]],
                                   tmp_path: Path) -> None:
    out, _ = trained
    run(("lr", "gbdt", "mlp"), seed=7, cfg=TrainConfig.small(), out_dir=tmp_path)
    for name in NAMES:
        assert (tmp_path / f"{name}.onnx").read_bytes() == (out / f"{name}.onnx").read_bytes(), name


def test_split_is_by_time_and_cvr_uses_clicks() -> None:
    log = simulate(SimConfig.small(), seed=3)
    x_tr, _, x_te, _, oracle = split_log(log, "ctr")
    assert len(x_tr) + len(x_te) == log.n
    _, y_cvr, x_cvr_te, _, _ = split_log(log, "cvr")
    assert len(y_cvr) + len(x_cvr_te) == int(log.clicked.sum())
    assert np.all((oracle > 0) & (oracle < 1))


@pytest.mark.parametrize("name", NAMES)
def test_committed_models(name: str) -> None:
    path = DEFAULT_MODEL_DIR / f"{name}.onnx"
    blob = path.read_bytes()
    assert len(blob) < 2_000_000
    assert path.with_suffix(".json").stat().st_size < 2_000_000
    meta = ModelMeta.load(path.with_suffix(".json"))
    assert meta.onnx_sha256 == hashlib.sha256(blob).hexdigest()
    OnnxScorer(path)
    if meta.family == "mlp_int8":  # offered only while it keeps offline AUC within 0.001 of the float MLP
        assert abs(meta.extra["auc_delta_vs_float_test"]) <= 0.001
