"""Model metadata: round trip, the load-time I/O checks, and the committed sidecars' contents."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bidder.monitoring.profile import FeatureProfile
from bidder.query.features import FEATURE_SPEC, FeatureSpec
from bidder.query.model_meta import ModelMeta, ModelSpecError, check_io
from bidder.settings import DEFAULT_MODEL_DIR

D = FEATURE_SPEC.n_features


@dataclass
class T:
    name: str
    type: str
    shape: list[int | str | None]


GOOD_IN = [T("features", "tensor(float)", ["n", D])]
GOOD_OUT = [T("p", "tensor(float)", ["n"])]


def test_round_trip_through_json(tmp_path: Path) -> None:
    meta = replace(ModelMeta.example(), metrics={"test": {"auc": 0.7}}, training={"seed": 7})
    meta.save(tmp_path / "m.json")
    assert ModelMeta.load(tmp_path / "m.json") == meta


def test_good_io_passes() -> None:
    check_io(ModelMeta.example(), GOOD_IN, GOOD_OUT)
    check_io(
        ModelMeta.example(),
        [T("features", "tensor(float)", [None, D])],
        [T("p", "tensor(float)", ["n", 1])],
    )


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([T("x", "tensor(float)", ["n", D])], GOOD_OUT, "input is named 'x'"),
        ([T("features", "tensor(double)", ["n", D])], GOOD_OUT, "expected tensor\\(float\\)"),
        ([T("features", "tensor(float)", ["n", D - 1])], GOOD_OUT, f"expected \\[n, {D}\\]"),
        ([T("features", "tensor(float)", ["n"])], GOOD_OUT, "has shape"),
        ([*GOOD_IN, T("extra", "tensor(float)", ["n"])], GOOD_OUT, "expected 1 input"),
        (GOOD_IN, [T("label", "tensor(int64)", ["n"])], "no output named 'p'"),
        (GOOD_IN, [T("p", "tensor(float)", ["n", 2])], "expected \\[n\\] or \\[n, 1\\]"),
        (GOOD_IN, [T("p", "tensor(int64)", ["n"])], "expected tensor\\(float\\)"),
    ],
)
def test_bad_io_refused(inputs: list[T], outputs: list[T], message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        check_io(ModelMeta.example(), inputs, outputs)  # type: ignore[arg-type]


def test_spec_mismatch_refused() -> None:
    other = FeatureSpec(version=2, names=(*FEATURE_SPEC.names, "new_feature"))
    meta = replace(ModelMeta.example(), feature_spec=other)
    with pytest.raises(ModelSpecError, match="trained on feature spec v2"):
        meta.check_spec()


def test_malformed_sidecar_refused(tmp_path: Path) -> None:
    p = tmp_path / "m.json"
    p.write_text("{not json")
    with pytest.raises(ModelSpecError, match="cannot read"):
        ModelMeta.load(p)
    d = ModelMeta.example().to_dict()
    del d["input_name"]
    p.write_text(json.dumps(d))
    with pytest.raises(ModelSpecError, match="input_name"):
        ModelMeta.load(p)
    d = ModelMeta.example().to_dict()
    d["family"] = "svm"
    p.write_text(json.dumps(d))
    with pytest.raises(ModelSpecError, match="unknown family"):
        ModelMeta.load(p)


@pytest.mark.parametrize(
    "name", [f"{f}_{t}" for f in ("lr", "gbdt", "mlp", "mlp_int8") for t in ("ctr", "cvr")]
)
def test_committed_sidecar_contents(name: str) -> None:
    meta = ModelMeta.load(DEFAULT_MODEL_DIR / f"{name}.json")
    meta.check_spec()
    assert meta.name == name
    assert meta.version.endswith(meta.onnx_sha256[:12])
    assert meta.feature_spec.names == FEATURE_SPEC.names
    # reference distribution: one profile per feature, in spec order, in the drift monitor's format
    profiles = [FeatureProfile.from_dict(r) for r in meta.reference]
    assert [p.name for p in profiles] == list(FEATURE_SPEC.names)
    for p in profiles:
        assert len(p.edges) == len(p.fractions) + 1
        assert sum(p.fractions) == pytest.approx(1.0)
        assert p.missing_rate == 0.0
    pred = FeatureProfile.from_dict(meta.prediction_reference)
    assert pred.name == f"p{meta.target}"
    assert 0.0 < pred.mean < 1.0
    # training window, data hash, metrics beside the oracle
    assert len(meta.training["data_sha256"]) == 64
    assert meta.training["window_start"] < meta.training["window_end"]
    assert 0.5 < meta.metrics["test"]["auc"] <= meta.metrics["oracle_test"]["auc"] + 0.01
    assert meta.golden_matrix().shape == (16, D)
    assert len(meta.golden_outputs) == 16
