"""Scoring: turn an ``(n, d)`` float32 feature matrix into ``(n,)`` float32 probabilities.

Every scorer satisfies :class:`Scorer` and passes the same conformance suite
(``tests/test_scoring.py``): :class:`OnnxScorer` (ONNX Runtime, CPU or CUDA) for every model family, and
:class:`NumpyMlpScorer`, a plain-numpy reference of the MLP family that reads the same ONNX weights.

ONNX Runtime facts this module acts on:

* One session per model, created with an explicit provider list. ORT falls back to CPU with only a log
  line when CUDA cannot start, so the session's actual providers are checked after creation and a
  mismatch raises :class:`ProviderError`: a CPU session never reports GPU numbers.
* Thread counts are arguments. On 2 cores ``intra_op_num_threads=1`` with spinning off kept p99 under
  1.5 ms; 2 threads made p99 jump to 7-22 ms as soon as anything else wanted a core. Spinning is off
  (``session.intra_op.allow_spinning = 0``) so an idle worker does not burn the core the event loop
  needs.
* Loading checks the metadata sidecar (:mod:`bidder.model_meta`): the file's sha256, the feature spec
  fingerprint, the graph's input/output names, types and shapes, and the golden outputs; then it warms
  the session up with a full-size batch so the first query does not pay for allocation.

>>> import numpy as np
>>> s = NumpyMlpScorer(mu=np.zeros(2, np.float32), inv_std=np.ones(2, np.float32),
...                    layers=[(np.eye(2, dtype=np.float32), np.zeros(2, np.float32))],
...                    head=(np.zeros((1, 2), np.float32), np.zeros(1, np.float32)),
...                    wide=(np.zeros((1, 2), np.float32), np.zeros(1, np.float32)))
>>> s.score(np.ones((3, 2), np.float32)).tolist()
[0.5, 0.5, 0.5]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bidder.features import FEATURE_SPEC, FeatureSpec
from bidder.model_meta import ModelMeta, ModelSpecError, check_io

__all__ = [
    "Models",
    "NumpyMlpScorer",
    "OnnxScorer",
    "ProviderError",
    "Scorer",
    "load_models",
    "session_options",
]

F32 = npt.NDArray[np.float32]
Provider = Literal["cpu", "cuda"]
_ORT_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderError(RuntimeError):
    """The execution provider asked for is not the one that runs the session."""


@runtime_checkable
class Scorer(Protocol):
    """Batch-first probability model: ``(n, d)`` float32 in, ``(n,)`` float32 in [0, 1] out."""

    def score(self, x: F32) -> F32: ...


def session_options(*, intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    """Session options for the hot path: fixed threads, no spinning, sequential, full graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class OnnxScorer:
    """One ONNX Runtime session for one model, checked against its metadata sidecar at load."""

    def __init__(
        self,
        path: Path,
        *,
        provider: Provider = "cpu",
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        meta: ModelMeta | None = None,
        spec: FeatureSpec = FEATURE_SPEC,
        warmup_rows: int = 600,
    ) -> None:
        path = Path(path)
        self.path = path
        self.meta = meta if meta is not None else ModelMeta.load(path.with_suffix(".json"))
        self.meta.check_spec(spec)
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise ModelSpecError(f"cannot read model {path}: {e}") from e
        digest = hashlib.sha256(blob).hexdigest()
        if digest != self.meta.onnx_sha256:
            raise ModelSpecError(
                f"{path} has sha256 {digest[:12]}..., its metadata names {self.meta.onnx_sha256[:12]}...: "
                "the model file and its sidecar do not belong together"
            )
        if provider not in _ORT_PROVIDERS:
            raise ProviderError(f"unknown provider {provider!r}; use 'cpu' or 'cuda'")
        if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ProviderError(
                "provider 'cuda' requested but this onnxruntime build offers "
                f"{ort.get_available_providers()} (install onnxruntime-gpu)"
            )
        opts = session_options(intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads)
        self.session: Any = ort.InferenceSession(blob, sess_options=opts, providers=_ORT_PROVIDERS[provider])
        self.providers: list[str] = list(self.session.get_providers())
        wanted = _ORT_PROVIDERS[provider][0]
        if not self.providers or self.providers[0] != wanted:
            raise ProviderError(
                f"asked for {wanted} but the session runs on {self.providers}: refusing a silent fallback"
            )
        self.provider: Provider = provider
        check_io(self.meta, self.session.get_inputs(), self.session.get_outputs())
        self.input_name = self.meta.input_name
        self.output_name = self.meta.output_name
        self._outputs = [self.output_name]
        self._d = spec.n_features
        self._check_golden()
        self._warm_up(warmup_rows)

    @property
    def version(self) -> str:
        return self.meta.version

    def score(self, x: F32) -> F32:
        """Probabilities for the rows of ``x`` (``(n, d)`` float32, C-contiguous)."""
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != self._d:
            raise ValueError(f"expected (n, {self._d}) float32, got {x.shape} {x.dtype}")
        if x.shape[0] == 0:
            return np.empty(0, np.float32)
        out: F32 = self.session.run(self._outputs, {self.input_name: x})[0]
        return out.reshape(-1)

    def _check_golden(self) -> None:
        if not self.meta.golden_outputs:
            return
        got = self.score(self.meta.golden_matrix())
        want = np.asarray(self.meta.golden_outputs, np.float32)
        err = float(np.max(np.abs(got - want)))
        if not err <= self.meta.golden_atol:
            raise ModelSpecError(
                f"model {self.meta.name} ({self.meta.version}) on {self.providers[0]} misses its golden "
                f"outputs by {err:.3g} > {self.meta.golden_atol:.3g}"
            )

    def _warm_up(self, rows: int) -> None:
        if rows <= 0:
            return
        base = self.meta.golden_matrix() if self.meta.golden_inputs else np.zeros((1, self._d), np.float32)
        x = np.ascontiguousarray(np.resize(base, (rows, self._d)), np.float32)
        for _ in range(3):
            self.score(x)


class NumpyMlpScorer:
    """Reference MLP in plain numpy (float32), the same wide-and-deep layout ``onnx_models`` exports.

    ``z = (x - mu) * inv_std``; ``h = relu(h W_k^T + b_k)`` over ``layers``;
    ``p = sigmoid(h W_head^T + b_head + z W_wide^T + b_wide)``.
    """

    def __init__(
        self,
        *,
        mu: F32,
        inv_std: F32,
        layers: list[tuple[F32, F32]],
        head: tuple[F32, F32],
        wide: tuple[F32, F32],
    ) -> None:
        self.mu = np.asarray(mu, np.float32)
        self.inv_std = np.asarray(inv_std, np.float32)
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
        self.head = (np.asarray(head[0], np.float32), np.asarray(head[1], np.float32))
        self.wide = (np.asarray(wide[0], np.float32), np.asarray(wide[1], np.float32))

    @classmethod
    def from_onnx(cls, path: Path) -> NumpyMlpScorer:
        """Read the named initializers of an MLP exported by ``onnx_models.train``."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        n_layers = sum(1 for k in w if k.startswith("deep.") and k.endswith(".weight"))
        if n_layers == 0 or "head.weight" not in w:
            raise ModelSpecError(f"{path} is not a wide-and-deep MLP export (initializers {sorted(w)})")
        return cls(
            mu=w["mu"],
            inv_std=w["inv_std"],
            layers=[(w[f"deep.{k}.weight"], w[f"deep.{k}.bias"]) for k in range(n_layers)],
            head=(w["head.weight"], w["head.bias"]),
            wide=(w["wide.weight"], w["wide.bias"]),
        )

    def score(self, x: F32) -> F32:
        if x.ndim != 2 or x.shape[1] != len(self.mu):
            raise ValueError(f"expected (n, {len(self.mu)}) float32, got {x.shape} {x.dtype}")
        z = (np.asarray(x, np.float32) - self.mu) * self.inv_std
        h = z
        for w, b in self.layers:
            h = np.maximum(h @ w.T + b, np.float32(0.0))
        logit = (h @ self.head[0].T + self.head[1]) + (z @ self.wide[0].T + self.wide[1])
        out: F32 = (np.float32(1.0) / (np.float32(1.0) + np.exp(-logit))).astype(np.float32).reshape(-1)
        return out


@dataclass(frozen=True, slots=True)
class Models:
    """The CTR and CVR scorers of one family, loaded together."""

    ctr: OnnxScorer
    cvr: OnnxScorer

    @property
    def versions(self) -> dict[str, str]:
        """``{"ctr": version, "cvr": version}`` for outcomes and logs."""
        return {"ctr": self.ctr.version, "cvr": self.cvr.version}

    @property
    def metas(self) -> dict[str, ModelMeta]:
        return {"ctr": self.ctr.meta, "cvr": self.cvr.meta}


def load_models(
    model_dir: Path,
    family: str,
    provider: str,
    intra_op_threads: int,
    inter_op_threads: int,
) -> Models:
    """Load ``<family>_ctr.onnx`` and ``<family>_cvr.onnx`` (+ ``.json``) from ``model_dir``.

    Raises :class:`ModelSpecError` for a missing, corrupt or mismatched model and
    :class:`ProviderError` when the provider asked for is not the one that runs.
    """
    if provider not in _ORT_PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}; use 'cpu' or 'cuda'")
    prov: Provider = "cuda" if provider == "cuda" else "cpu"
    scorers = {}
    for target in ("ctr", "cvr"):
        path = Path(model_dir) / f"{family}_{target}.onnx"
        scorer = OnnxScorer(
            path, provider=prov, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads
        )
        if scorer.meta.family != family or scorer.meta.target != target:
            raise ModelSpecError(
                f"{path} holds a {scorer.meta.family}/{scorer.meta.target} model, expected {family}/{target}"
            )
        scorers[target] = scorer
    return Models(ctr=scorers["ctr"], cvr=scorers["cvr"])
