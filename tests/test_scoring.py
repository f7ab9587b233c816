"""Scorer conformance suite, run over every implementation, plus provider and load-time checks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import bidder.query.scoring as scoring
from bidder.query.features import FEATURE_SPEC
from bidder.query.model_meta import ModelSpecError
from bidder.query.scoring import NumpyMlpScorer, OnnxScorer, ProviderError, Scorer, load_models
from bidder.settings import DEFAULT_MODEL_DIR

D = FEATURE_SPEC.n_features
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    """Plausible feature rows: golden rows of the committed MLP, jittered."""
    golden = OnnxScorer(DEFAULT_MODEL_DIR / "mlp_ctr.onnx", warmup_rows=0).meta.golden_matrix()
    rng = np.random.default_rng(seed)
    x = golden[rng.integers(0, len(golden), n)] + rng.normal(0, 0.05, (n, D)).astype(np.float32)
    return np.ascontiguousarray(x, np.float32)


SCORERS: dict[str, Callable[[], Scorer]] = {
    "numpy-mlp-ctr": lambda: NumpyMlpScorer.from_onnx(DEFAULT_MODEL_DIR / "mlp_ctr.onnx"),
    **{
        f"onnx-{fam}-{tgt}-cpu": (
            lambda fam=fam, tgt=tgt: OnnxScorer(DEFAULT_MODEL_DIR / f"{fam}_{tgt}.onnx", provider="cpu")
        )
        for fam in ("lr", "gbdt", "mlp", "mlp_int8")
        for tgt in ("ctr", "cvr")
    },
    "onnx-mlp-ctr-cuda": lambda: OnnxScorer(DEFAULT_MODEL_DIR / "mlp_ctr.onnx", provider="cuda"),
}


@pytest.fixture(scope="module", params=sorted(SCORERS))
def scorer(request: pytest.FixtureRequest) -> Scorer:
    if request.param.endswith("-cuda") and not HAS_CUDA:
        pytest.skip("onnxruntime has no CUDAExecutionProvider here")
    return SCORERS[request.param]()


# --- the conformance suite ---------------------------------------------------------------------------


def test_is_a_scorer(scorer: Scorer) -> None:
    assert isinstance(scorer, Scorer)


@pytest.mark.parametrize("n", [1, 7, 600])
def test_shape_dtype_range(scorer: Scorer, n: int) -> None:
    p = scorer.score(_inputs(n))
    assert p.shape == (n,)
    assert p.dtype == np.float32
    assert np.all(np.isfinite(p))
    assert np.all((p >= 0.0) & (p <= 1.0))


def test_empty_batch(scorer: Scorer) -> None:
    assert scorer.score(np.zeros((0, D), np.float32)).shape == (0,)


def test_rows_are_independent_of_batch(scorer: Scorer) -> None:
    """A candidate's score does not depend on the others in its batch.

    Except, within a bound, for int8 dynamic quantization: it picks the activation scale from each
    batch's min/max, so the same row can move by ~1e-3 with its neighbours.
    """
    x = _inputs(300, seed=1)
    whole = scorer.score(x)
    parts = np.concatenate([scorer.score(x[:1]), scorer.score(x[1:128]), scorer.score(x[128:])])
    int8 = isinstance(scorer, OnnxScorer) and scorer.meta.family == "mlp_int8"
    np.testing.assert_allclose(parts, whole, atol=2e-2 if int8 else 1e-6)


def test_deterministic_and_input_untouched(scorer: Scorer) -> None:
    x = _inputs(64, seed=2)
    before = x.copy()
    a, b = scorer.score(x), scorer.score(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, before)


def test_rejects_wrong_width(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="expected"):
        scorer.score(np.zeros((3, D - 1), np.float32))


def test_responds_to_its_inputs(scorer: Scorer) -> None:
    p = scorer.score(_inputs(600, seed=3))
    assert float(p.std()) > 1e-4  # not a constant


def test_onnx_mlp_matches_numpy_reference() -> None:
    x = _inputs(600, seed=4)
    for tgt in ("ctr", "cvr"):
        path = DEFAULT_MODEL_DIR / f"mlp_{tgt}.onnx"
        ref = NumpyMlpScorer.from_onnx(path).score(x)
        got = OnnxScorer(path).score(x)
        assert float(np.max(np.abs(got - ref))) <= 1e-5


# --- providers ---------------------------------------------------------------------------------------


def test_cpu_session_runs_on_cpu() -> None:
    s = OnnxScorer(DEFAULT_MODEL_DIR / "mlp_ctr.onnx", provider="cpu")
    assert s.providers == ["CPUExecutionProvider"]
    assert s.session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_cuda_without_cuda_build_is_refused() -> None:
    with pytest.raises(ProviderError, match="cuda"):
        OnnxScorer(DEFAULT_MODEL_DIR / "mlp_ctr.onnx", provider="cuda")


def test_silent_cpu_fallback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT asked for CUDA but the session came up on CPU only: an error, not a log line."""
    real = ort.InferenceSession

    def fake_session(blob: bytes, sess_options: Any = None, providers: Any = None) -> Any:
        return real(blob, sess_options=sess_options, providers=["CPUExecutionProvider"])

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(scoring.ort, "get_available_providers", lambda: both)
    monkeypatch.setattr(scoring.ort, "InferenceSession", fake_session)
    with pytest.raises(ProviderError, match="silent fallback"):
        OnnxScorer(DEFAULT_MODEL_DIR / "mlp_ctr.onnx", provider="cuda")


def test_unknown_provider() -> None:
    with pytest.raises(ProviderError, match="unknown provider"):
        load_models(DEFAULT_MODEL_DIR, "mlp", "tpu", 1, 1)


def test_thread_and_spinning_options() -> None:
    so = scoring.session_options(intra_op_threads=1, inter_op_threads=1)
    assert so.intra_op_num_threads == 1
    assert so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --- load-time checks --------------------------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    for ext in ("onnx", "json"):
        shutil.copy(DEFAULT_MODEL_DIR / f"mlp_ctr.{ext}", tmp_path / f"mlp_ctr.{ext}")
    return tmp_path / "mlp_ctr.onnx"


def _edit_meta(path: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    meta_path = path.with_suffix(".json")
    d = json.loads(meta_path.read_text())
    fn(d)
    meta_path.write_text(json.dumps(d))


def test_load_models_gives_both_targets() -> None:
    m = load_models(DEFAULT_MODEL_DIR, "mlp", "cpu", 1, 1)
    assert m.ctr.meta.target == "ctr"
    assert m.cvr.meta.target == "cvr"
    assert m.versions == {"ctr": m.ctr.meta.version, "cvr": m.cvr.meta.version}
    assert m.versions["ctr"].startswith("mlp-ctr-")


def test_wrong_input_name_refused(model_copy: Path) -> None:
    _edit_meta(model_copy, lambda d: d.update(input_name="x"))
    with pytest.raises(ModelSpecError, match="input is named 'features'"):
        OnnxScorer(model_copy)


def test_other_feature_spec_refused(model_copy: Path) -> None:
    def swap(d: dict[str, Any]) -> None:
        names = d["feature_spec"]["names"]
        names[0], names[1] = names[1], names[0]
        del d["feature_spec"]["fingerprint"]

    _edit_meta(model_copy, swap)
    with pytest.raises(ModelSpecError, match="position 0: 'ctr_smoothed' vs 'relevance'"):
        OnnxScorer(model_copy)


def test_corrupt_model_file_refused(model_copy: Path) -> None:
    model_copy.write_bytes(model_copy.read_bytes()[:-10])
    with pytest.raises(ModelSpecError, match="do not belong together"):
        OnnxScorer(model_copy)


def test_missing_sidecar_refused(model_copy: Path) -> None:
    model_copy.with_suffix(".json").unlink()
    with pytest.raises(ModelSpecError, match="cannot read model metadata"):
        OnnxScorer(model_copy)


def test_golden_mismatch_refused(model_copy: Path) -> None:
    _edit_meta(model_copy, lambda d: d["golden"].update(outputs=[o + 0.01 for o in d["golden"]["outputs"]]))
    with pytest.raises(ModelSpecError, match="golden"):
        OnnxScorer(model_copy)


def test_family_mismatch_refused(tmp_path: Path) -> None:
    for tgt in ("ctr", "cvr"):
        for ext in ("onnx", "json"):
            shutil.copy(DEFAULT_MODEL_DIR / f"lr_{tgt}.{ext}", tmp_path / f"mlp_{tgt}.{ext}")
    with pytest.raises(ModelSpecError, match="holds a lr/ctr model"):
        load_models(tmp_path, "mlp", "cpu", 1, 1)
