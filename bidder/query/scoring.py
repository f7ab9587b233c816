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
* CUDA sessions are created with ``session.disable_cpu_ep_fallback = 1`` and only the CUDA provider in the
  list (ORT rejects that option beside an explicit CPU EP): a graph with any node the CUDA EP cannot run
  fails at load instead of quietly running part of itself on the host. Tree ensembles and the linear
  model (``ai.onnx.ml`` ops) therefore load on CUDA only as a clear :class:`ProviderError`.
* IO binding (default for CUDA, optional on CPU so the same code runs in CPU tests): rows go through
  preallocated, reused buffers per *bucket* (a fixed row count). A call of ``n`` rows uses the smallest
  bucket ``b >= n``: rows ``[0, n)`` are copied in, rows ``[n, b)`` are zero padding, and only ``[0, n)``
  of the output is returned, as a copy (the output buffer is overwritten by the next call). Calls
  larger than the largest bucket are split into bucket-sized chunks. ``pad_rows`` counts the padding.
  With ``cuda_graphs`` each bucket is one captured CUDA graph (``enable_cuda_graph`` provider option,
  ``gpu_graph_id`` run option = bucket index), replayed with the same device addresses every call.
* Loading checks the metadata sidecar (:mod:`bidder.query.model_meta`): the file's sha256, the feature spec
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bidder.query.features import FEATURE_SPEC, FeatureSpec
from bidder.query.model_meta import ModelMeta, ModelSpecError, check_io

__all__ = [
    "DEFAULT_BUCKETS",
    "IoStats",
    "Models",
    "NumpyMlpScorer",
    "OnnxScorer",
    "ProviderError",
    "Scorer",
    "family_in",
    "load_models",
    "provider_readiness",
    "session_options",
]

F32 = npt.NDArray[np.float32]
Provider = Literal["cpu", "cuda"]
ArenaExtend = Literal["kNextPowerOfTwo", "kSameAsRequested"]
_ORT_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],  # the CPU EP must not be listed: see module docstring
}
DEFAULT_BUCKETS: tuple[int, ...] = (600, 1200, 2400, 4800, 9600, 19200)
"""IO-binding row buckets: one query of 600 candidates, then doubling up to 32 queries per call"""


class ProviderError(RuntimeError):
    """The execution provider asked for is not the one that runs the session."""


@runtime_checkable
class Scorer(Protocol):
    """Batch-first probability model: ``(n, d)`` float32 in, ``(n,)`` float32 in [0, 1] out."""

    def score(self, x: F32) -> F32: ...


def provider_readiness(provider: str) -> tuple[bool, str]:
    """Can this process run ``provider``? ``(ok, message)`` for a readiness endpoint, before any load.

    >>> provider_readiness("cpu")[0]
    True
    >>> provider_readiness("tpu")
    (False, "unknown provider 'tpu'; use 'cpu' or 'cuda'")
    """
    if provider not in _ORT_PROVIDERS:
        return False, f"unknown provider {provider!r}; use 'cpu' or 'cuda'"
    available = ort.get_available_providers()
    wanted = _ORT_PROVIDERS[provider][0]
    if wanted not in available:
        return False, (
            f"provider {provider!r} requested but this onnxruntime {ort.__version__} build offers only "
            f"{available}: install onnxruntime-gpu (and the CUDA/cuDNN libraries it needs) or set the provider "
            "to 'cpu'"
        )
    return True, f"{wanted} available in onnxruntime {ort.__version__}"


def session_options(
    *, intra_op_threads: int, inter_op_threads: int, disable_cpu_ep_fallback: bool = False, cpu_mem_arena: bool = True
) -> ort.SessionOptions:
    """Session options for the hot path: fixed threads, no spinning, sequential, full graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if disable_cpu_ep_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.enable_cpu_mem_arena = cpu_mem_arena
    so.log_severity_level = 3
    return so


@dataclass(slots=True)
class _Bucket:
    """Preallocated buffers of one fixed row count, bound once to the session."""

    rows: int
    host: F32
    """(rows, d) staging copy of the call's rows; rows past the call's are zero"""
    x_dev: Any
    """OrtValue (rows, d) on the session's device, bound as the input"""
    y_dev: Any
    """OrtValue (rows,) on the session's device, bound as the output"""
    binding: Any
    run_options: Any
    dirty: int = 0
    """rows of ``host`` holding data of an earlier call (zeroed when a shorter call follows)"""


@dataclass(slots=True)
class IoStats:
    """Counters of the IO-binding path (monotonic; export as Prometheus counters)."""

    calls: int = 0
    rows: int = 0
    pad_rows: int = 0
    by_bucket: dict[int, int] = field(default_factory=dict)


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
        io_binding: bool | None = None,
        buckets: Sequence[int] | None = None,
        cuda_graphs: bool = False,
        device_id: int = 0,
        gpu_mem_limit_bytes: int | None = None,
        arena_extend_strategy: ArenaExtend = "kSameAsRequested",
        cpu_mem_arena: bool = True,
    ) -> None:
        """Load, check and warm up one model.

        ``io_binding`` defaults to on for CUDA and off for CPU; ``buckets`` (row counts, default
        :data:`DEFAULT_BUCKETS`) size its reused buffers. ``cuda_graphs`` needs CUDA and IO binding.
        ``gpu_mem_limit_bytes`` caps the CUDA arena; ``arena_extend_strategy`` is its growth rule
        (``kSameAsRequested`` keeps a long-running worker from doubling into its limit).
        """
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
        ok, why = provider_readiness(provider)
        if not ok:
            raise ProviderError(why)
        use_io = provider == "cuda" if io_binding is None else io_binding
        if cuda_graphs and (provider != "cuda" or not use_io):
            raise ValueError("cuda_graphs needs provider='cuda' and IO binding")
        if gpu_mem_limit_bytes is not None and gpu_mem_limit_bytes <= 0:
            raise ValueError(f"gpu_mem_limit_bytes must be positive, got {gpu_mem_limit_bytes}")
        self.cuda_options: dict[str, str] = {}
        providers: list[Any] = list(_ORT_PROVIDERS[provider])
        if provider == "cuda":
            self.cuda_options = {
                "device_id": str(device_id),
                "arena_extend_strategy": arena_extend_strategy,
                "do_copy_in_default_stream": "1",
                **({"gpu_mem_limit": str(gpu_mem_limit_bytes)} if gpu_mem_limit_bytes is not None else {}),
                **({"enable_cuda_graph": "1"} if cuda_graphs else {}),
            }
            providers = [("CUDAExecutionProvider", self.cuda_options)]
        opts = session_options(
            intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
            disable_cpu_ep_fallback=provider == "cuda", cpu_mem_arena=cpu_mem_arena,
        )
        wanted = _ORT_PROVIDERS[provider][0]
        try:
            self.session: Any = ort.InferenceSession(blob, sess_options=opts, providers=providers)
        except Exception as e:
            if provider != "cuda":
                raise
            raise ProviderError(
                f"{path.name}: the CUDA session could not be created with CPU fallback disabled (refusing a "
                f"silent fallback to CPU; models with ai.onnx.ml operators such as tree ensembles cannot run "
                f"on CUDA): {e}"
            ) from e
        self.providers: list[str] = list(self.session.get_providers())
        if not self.providers or self.providers[0] != wanted:
            raise ProviderError(
                f"asked for {wanted} but the session runs on {self.providers}: refusing a silent fallback"
            )
        self.provider: Provider = provider
        self.device_id = device_id
        self.io_binding = use_io
        self.cuda_graphs = cuda_graphs
        self.io_stats = IoStats()
        check_io(self.meta, self.session.get_inputs(), self.session.get_outputs())
        self.input_name = self.meta.input_name
        self.output_name = self.meta.output_name
        self._outputs = [self.output_name]
        self._d = spec.n_features
        self._buckets: list[_Bucket] = []
        if use_io:
            sizes = sorted(set(DEFAULT_BUCKETS if buckets is None else buckets))
            if not sizes or sizes[0] < 1:
                raise ValueError(f"buckets must be positive row counts, got {buckets}")
            self._buckets = [self._make_bucket(rows, graph_id=i) for i, rows in enumerate(sizes)]
        self._check_golden()
        self._warm_up(warmup_rows)
        self.io_stats = IoStats()  # count serving calls only, not the golden check and warm-up

    @property
    def buckets(self) -> tuple[int, ...]:
        """Row counts of the IO-binding buckets (empty without IO binding)."""
        return tuple(b.rows for b in self._buckets)

    def readiness(self) -> tuple[bool, str]:
        """``(ok, message)``: does this session run on the provider it was asked for?"""
        wanted = _ORT_PROVIDERS[self.provider][0]
        ok = bool(self.providers) and self.providers[0] == wanted
        return ok, f"{self.meta.name} on {self.providers[0] if self.providers else 'nothing'} (asked {wanted})"

    def _make_bucket(self, rows: int, *, graph_id: int) -> _Bucket:
        device = "cuda" if self.provider == "cuda" else "cpu"
        dev_id = self.device_id if device == "cuda" else 0
        x_dev = ort.OrtValue.ortvalue_from_shape_and_type([rows, self._d], np.float32, device, dev_id)
        y_dev = ort.OrtValue.ortvalue_from_shape_and_type([rows], np.float32, device, dev_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, x_dev)
        binding.bind_ortvalue_output(self.output_name, y_dev)
        run_options = None
        if self.cuda_graphs:
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        host = np.zeros((rows, self._d), np.float32)
        return _Bucket(rows=rows, host=host, x_dev=x_dev, y_dev=y_dev, binding=binding, run_options=run_options)

    def _score_bound(self, x: F32) -> F32:
        """IO-binding path: chunk to the largest bucket, pad each chunk to its bucket, return real rows only."""
        top = self._buckets[-1].rows
        if len(x) > top:
            return np.concatenate([self._score_bound(x[i : i + top]) for i in range(0, len(x), top)])
        n = len(x)
        b = next(b for b in self._buckets if b.rows >= n)
        b.host[:n] = x
        if b.dirty > n:
            b.host[n : b.dirty] = 0.0
        b.dirty = n
        b.x_dev.update_inplace(b.host)
        self.session.run_with_iobinding(b.binding, b.run_options)
        y = b.y_dev.numpy()  # on CPU a view of the bound buffer, on CUDA a fresh host copy
        out: F32 = np.array(y[:n], dtype=np.float32, copy=True)
        st = self.io_stats
        st.calls += 1
        st.rows += n
        st.pad_rows += b.rows - n
        st.by_bucket[b.rows] = st.by_bucket.get(b.rows, 0) + 1
        return out

    @property
    def version(self) -> str:
        return self.meta.version

    def score(self, x: F32) -> F32:
        """Probabilities for the rows of ``x`` (``(n, d)`` float32, C-contiguous)."""
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != self._d:
            raise ValueError(f"expected (n, {self._d}) float32, got {x.shape} {x.dtype}")
        if x.shape[0] == 0:
            return np.empty(0, np.float32)
        if self._buckets:
            return self._score_bound(x)
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
        # with IO binding every bucket runs (and, with CUDA graphs, is captured) before the first query
        sizes = [b.rows for b in self._buckets] if self._buckets else [rows]
        for size in sizes:
            x = np.ascontiguousarray(np.resize(base, (size, self._d)), np.float32)
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

    def readiness(self) -> tuple[bool, str]:
        """Both sessions on the provider asked for: ``(ok, message)``."""
        parts = [m.readiness() for m in (self.ctr, self.cvr)]
        return all(ok for ok, _ in parts), "; ".join(msg for _, msg in parts)


def family_in(model_dir: Path) -> str:
    """The one model family whose ``<family>_ctr.onnx`` is in ``model_dir`` (ValueError for none or several)."""
    fams = sorted(p.name[: -len("_ctr.onnx")] for p in Path(model_dir).glob("*_ctr.onnx"))
    if len(fams) != 1:
        raise ValueError(f"{model_dir} must hold exactly one <family>_ctr.onnx (model families found: "
                         f"{fams or 'none'})")
    return fams[0]


def load_models(
    model_dir: Path,
    family: str,
    provider: str,
    intra_op_threads: int,
    inter_op_threads: int,
    *,
    io_binding: bool | None = None,
    buckets: Sequence[int] | None = None,
    cuda_graphs: bool = False,
    device_id: int = 0,
    gpu_mem_limit_bytes: int | None = None,
    arena_extend_strategy: ArenaExtend = "kSameAsRequested",
) -> Models:
    """Load ``<family>_ctr.onnx`` and ``<family>_cvr.onnx`` (+ ``.json``) from ``model_dir``.

    The keyword arguments go to :class:`OnnxScorer` (IO binding, buckets, CUDA graphs and arena).

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
            path, provider=prov, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
            io_binding=io_binding, buckets=buckets, cuda_graphs=cuda_graphs, device_id=device_id,
            gpu_mem_limit_bytes=gpu_mem_limit_bytes, arena_extend_strategy=arena_extend_strategy,
        )
        if scorer.meta.family != family or scorer.meta.target != target:
            raise ModelSpecError(
                f"{path} holds a {scorer.meta.family}/{scorer.meta.target} model, expected {family}/{target}"
            )
        scorers[target] = scorer
    return Models(ctr=scorers["ctr"], cvr=scorers["cvr"])
