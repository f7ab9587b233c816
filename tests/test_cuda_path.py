"""The CUDA serving path, checked on CPU: readiness without CUDA, the CUDA session configuration, and the
IO-binding code path (reused bucket buffers, padding recorded and never returned) against plain ``run``."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bidder.query.scoring as scoring
from bidder.query.scoring import OnnxScorer, ProviderError, load_models, provider_readiness
from bidder.settings import DEFAULT_MODEL_DIR

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
MLP = DEFAULT_MODEL_DIR / "mlp_ctr.onnx"
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")


def rows(n: int, seed: int) -> np.ndarray:
    golden = OnnxScorer(MLP, warmup_rows=0).meta.golden_matrix()
    rng = np.random.default_rng(seed)
    x = golden[rng.integers(0, len(golden), n)] + rng.normal(0, 0.05, (n, golden.shape[1])).astype(np.float32)
    return np.ascontiguousarray(x, np.float32)


# --- readiness and configuration ---------------------------------------------------------------------


@no_cuda
def test_cuda_request_without_cuda_fails_readiness_clearly() -> None:
    ok, msg = provider_readiness("cuda")
    assert not ok
    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    assert "provider 'cuda' requested" in msg and "install onnxruntime-gpu" in msg
    assert "CPUExecutionProvider" in msg  # says what the build does offer
    with pytest.raises(ProviderError, match="install onnxruntime-gpu"):
        load_models(DEFAULT_MODEL_DIR, "mlp", "cuda", 1, 1)


def test_cpu_models_are_ready() -> None:
    m = load_models(DEFAULT_MODEL_DIR, "lr", "cpu", 1, 1)
    ok, msg = m.readiness()
    assert ok and "CPUExecutionProvider" in msg


def test_cuda_session_is_configured_without_cpu_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """What OnnxScorer asks ORT for when the provider is cuda: only the CUDA EP, fallback disabled, the arena
    limits and CUDA graphs from the constructor. The fake session refuses, as ORT does for a node it cannot
    place: the error is a ProviderError naming the refusal."""
    seen: dict[str, Any] = {}

    def fake_session(blob: bytes, sess_options: Any = None, providers: Any = None) -> Any:
        seen["options"], seen["providers"] = sess_options, providers
        raise RuntimeError("This session contains graph nodes that are assigned to the default CPU EP")

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(scoring.ort, "get_available_providers", lambda: both)
    monkeypatch.setattr(scoring.ort, "InferenceSession", fake_session)
    with pytest.raises(ProviderError, match="refusing a silent fallback to CPU"):
        OnnxScorer(MLP, provider="cuda", cuda_graphs=True, gpu_mem_limit_bytes=2 << 30,
                   arena_extend_strategy="kSameAsRequested", device_id=0)
    assert seen["options"].get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    [(name, opts)] = seen["providers"]
    assert name == "CUDAExecutionProvider"
    assert opts["gpu_mem_limit"] == str(2 << 30)
    assert opts["arena_extend_strategy"] == "kSameAsRequested"
    assert opts["enable_cuda_graph"] == "1"
    assert opts["device_id"] == "0"


def test_cuda_graphs_need_cuda_and_io_binding() -> None:
    with pytest.raises(ValueError, match="cuda_graphs"):
        OnnxScorer(MLP, provider="cpu", io_binding=True, cuda_graphs=True)


def test_disable_cpu_ep_fallback_only_when_asked() -> None:
    """ORT refuses the option beside an explicit CPU EP, so CPU sessions must not carry it."""
    on = scoring.session_options(intra_op_threads=1, inter_op_threads=1, disable_cpu_ep_fallback=True)
    assert on.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    off = scoring.session_options(intra_op_threads=1, inter_op_threads=1)
    with pytest.raises(RuntimeError, match="does not have configuration"):
        off.get_session_config_entry("session.disable_cpu_ep_fallback")


# --- IO binding with buckets, on CPU -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bound() -> OnnxScorer:
    return OnnxScorer(MLP, io_binding=True, buckets=(4, 16, 64), warmup_rows=0)


@pytest.fixture(scope="module")
def plain() -> OnnxScorer:
    return OnnxScorer(MLP, io_binding=False, warmup_rows=0)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 15, 16, 17, 64, 65, 200])
def test_io_binding_equals_plain_run(bound: OnnxScorer, plain: OnnxScorer, n: int) -> None:
    x = rows(n, seed=n)
    got = bound.score(x)
    want = plain.session.run([plain.output_name], {plain.input_name: x})[0]
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_padding_is_recorded_and_never_returned() -> None:
    s = OnnxScorer(MLP, io_binding=True, buckets=(4, 16, 64), warmup_rows=0)
    assert s.buckets == (4, 16, 64)
    s.score(rows(16, seed=1))  # fills the 16-row bucket
    x = rows(10, seed=2)
    got = s.score(x)
    b16 = next(b for b in s._buckets if b.rows == 16)
    assert np.all(b16.host[10:] == 0.0), "stale rows of the previous call must be cleared, not scored"
    np.testing.assert_array_equal(b16.host[:10], x)
    assert got.shape == (10,)
    # 100 rows -> one chunk of 64 and a 36-row chunk padded to 64
    s.score(rows(100, seed=3))
    assert s.io_stats.calls == 4
    assert s.io_stats.rows == 16 + 10 + 100
    assert s.io_stats.pad_rows == 0 + 6 + 0 + 28
    assert s.io_stats.by_bucket == {16: 2, 64: 2}


def test_results_do_not_alias_the_reused_buffers(bound: OnnxScorer) -> None:
    a_in, b_in = rows(16, seed=4), rows(16, seed=5)
    a = bound.score(a_in)
    a_copy = a.copy()
    bound.score(b_in)  # same bucket, overwrites its output buffer
    np.testing.assert_array_equal(a, a_copy)


def test_pad_rows_do_not_change_real_rows(bound: OnnxScorer) -> None:
    """A row scores the same whether its call was padded (n=5 in the 16 bucket) or exact (n=16)."""
    x = rows(16, seed=6)
    full = bound.score(x)
    part = bound.score(x[:5])
    np.testing.assert_allclose(part, full[:5], atol=1e-6)


def test_io_binding_scorer_passes_golden_check_and_warms_every_bucket() -> None:
    s = OnnxScorer(MLP, io_binding=True, buckets=(8, 32), warmup_rows=600)
    assert s.io_stats.calls == 0  # warm-up runs are not counted
    ok, _ = s.readiness()
    assert ok


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 150), min_size=1, max_size=8))
def test_bucketed_calls_in_any_order_equal_plain_run(sizes: list[int]) -> None:
    """Any sequence of call sizes (shrinking, growing, over the largest bucket): each call's result equals a
    plain run of its rows, and the padding accounting matches the bucket arithmetic."""
    s = _BOUND
    before = (s.io_stats.calls, s.io_stats.rows, s.io_stats.pad_rows)
    want_pad = want_calls = 0
    for i, n in enumerate(sizes):
        x = _ROWS[i * 7 % 50 : i * 7 % 50 + n]
        got = s.score(x)
        assert got.shape == (n,)
        if n:
            np.testing.assert_allclose(got, _PLAIN.session.run(["p"], {"features": x})[0], atol=1e-6)
        full, rest = divmod(n, 64)
        want_calls += full + (1 if rest else 0)
        want_pad += (min(b for b in (4, 16, 64) if b >= rest) - rest) if rest else 0
    assert s.io_stats.calls - before[0] == want_calls
    assert s.io_stats.rows - before[1] == sum(sizes)
    assert s.io_stats.pad_rows - before[2] == want_pad


_BOUND = OnnxScorer(MLP, io_binding=True, buckets=(4, 16, 64), warmup_rows=0)
_PLAIN = OnnxScorer(MLP, warmup_rows=0)
_ROWS = rows(200, seed=9)
