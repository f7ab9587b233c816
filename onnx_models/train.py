"""Train the default CTR and CVR models of every family on simulated traffic and export them to ONNX.

    python -m onnx_models.train --family all --seed 7        # regenerates the committed models

Targets: ``ctr`` = P(click | impression), trained on every logged impression; ``cvr`` =
P(purchase | click), trained on clicked impressions only (the bid values a click). The log is split by
time: the first 80 % trains, the last 20 % measures AUC/logloss, beside the oracle's (the world's true
probabilities on the same rows), which is the best any model could reach.

Families, all exported to the same contract (``features`` (n, d) float32 -> ``p`` (n,) float32, see
``onnx_models/export.py``):

* ``lr``: standardised logistic regression (scikit-learn);
* ``gbdt``: LightGBM, 100 trees of depth <= 6;
* ``mlp``: wide-and-deep network (PyTorch): standardise, deep 256-128-64 ReLU tower plus a linear wide
  part, summed into one logit;
* ``mlp_int8``: the same MLP after onnxruntime's int8 dynamic quantization (about 2x faster on CPU;
  the sidecar records its max |dp| and AUC change against the float model).

Each model is written as ``<family>_<target>.onnx`` with its ``.json`` sidecar
(:class:`bidder.query.model_meta.ModelMeta`: spec, training window and data hash, offline metrics, reference
profiles, golden rows). The same seed on the same machine gives the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from bidder.monitoring.profile import FeatureProfile, profile_matrix
from bidder.query.features import FEATURE_SPEC
from bidder.query.model_meta import ModelMeta
from bidder.replica.history import HISTORY_FILE
from onnx_models.export import INPUT_NAME, OUTPUT_NAME, mlp_graph, narrow_to_positive_class
from onnx_models.traffic import Policy, SimConfig, TrafficLog, prior_policy, simulate

__all__ = ["Fitted", "TrainConfig", "fit", "run", "split_log", "train_one", "train_split"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
FAMILIES = ("lr", "gbdt", "mlp")
INT8 = "mlp_int8"
"""the MLP with int8 dynamic quantization (ORT ``quantize_dynamic``), written whenever the MLP is"""
TARGETS = ("ctr", "cvr")
MODEL_DIR = Path(__file__).resolve().parent
GOLDEN_ROWS = 16
GOLDEN_ATOL = 1e-4
"""load-time tolerance: exported output vs the output stored at training (covers CPU vs CUDA kernels)"""
GOLDEN_ATOL_INT8 = 2e-3
"""int8 kernels differ by instruction set (VNNI or not) in how activations round"""


@dataclass(frozen=True, slots=True)
class TrainConfig:
    sim: SimConfig = field(default_factory=SimConfig)
    mlp_hidden: tuple[int, ...] = (256, 128, 64)
    mlp_steps: dict[str, int] | None = None
    """Adam steps of 1024 rows per target (a fixed step count, not epochs: the CVR set is small, ~50k clicks,
    and more passes over it overfit)"""
    gbdt_trees: int = 100
    gbdt_depth: int = 6
    gbdt_learning_rate: float = 0.08
    lr_c: float = 1.0
    """inverse L2 strength of the logistic regression"""
    mlp_max_lr: float = 3e-3
    """peak learning rate of the MLP's one-cycle schedule"""

    def steps(self, target: str) -> int:
        return (self.mlp_steps or {"ctr": 3000, "cvr": 600})[target]

    @classmethod
    def small(cls) -> TrainConfig:
        return cls(
            sim=SimConfig.small(), mlp_hidden=(32, 16), mlp_steps={"ctr": 150, "cvr": 100}, gbdt_trees=20
        )


@dataclass(frozen=True, slots=True)
class Fitted:
    """An exported model and the training framework's own predict function (for parity)."""

    onnx_model: onnx.ModelProto
    predict: Callable[[F32], F64]


def split_log(log: TrafficLog, target: str, train_frac: float = 0.8) -> tuple[F32, F64, F32, F64, F64]:
    """``(x_train, y_train, x_test, y_test, oracle_test)`` for a target, split by time."""
    if target == "ctr":
        x, y, oracle = log.x, log.clicked.astype(np.float64), log.p_click
    else:
        m = log.clicked.astype(bool)
        x, y, oracle = log.x[m], log.purchased[m].astype(np.float64), log.p_buy[m]
    cut = int(len(y) * train_frac)
    return x[:cut], y[:cut], x[cut:], y[cut:], oracle[cut:]


def _fit_lr(x: F32, y: F64, seed: int, cfg: TrainConfig) -> Fitted:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(C=cfg.lr_c, max_iter=2000, random_state=seed)
    pipe = make_pipeline(StandardScaler(), clf).fit(x, y)
    model = convert_sklearn(
        pipe,
        initial_types=[(INPUT_NAME, FloatTensorType([None, x.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model = narrow_to_positive_class(model, "probabilities")
    return Fitted(model, lambda a: np.asarray(pipe.predict_proba(a)[:, 1], np.float64))


def _fit_gbdt(x: F32, y: F64, seed: int, cfg: TrainConfig) -> Fitted:
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    clf = lgb.LGBMClassifier(
        n_estimators=cfg.gbdt_trees,
        max_depth=cfg.gbdt_depth,
        num_leaves=2 ** (cfg.gbdt_depth - 1),
        learning_rate=cfg.gbdt_learning_rate,
        min_child_samples=50,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.9,
        random_state=seed,
        deterministic=True,
        force_row_wise=True,
        n_jobs=2,
        verbose=-1,
    ).fit(x, y)
    model = convert_lightgbm(
        clf,
        initial_types=[(INPUT_NAME, FloatTensorType([None, x.shape[1]]))],
        zipmap=False,
        target_opset=15,  # the newest onnxmltools 1.16 converts to
    )
    model = narrow_to_positive_class(model, "probabilities")
    return Fitted(model, lambda a: np.asarray(clf.predict_proba(a)[:, 1], np.float64))


def _fit_mlp(x: F32, y: F64, seed: int, cfg: TrainConfig, target: str) -> Fitted:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    mu = x.mean(0).astype(np.float32)
    inv_std = (1.0 / np.maximum(x.std(0), 1e-3)).astype(np.float32)

    class WideDeep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mu", torch.from_numpy(mu))
            self.register_buffer("inv_std", torch.from_numpy(inv_std))
            dims = (x.shape[1], *cfg.mlp_hidden)
            self.deep = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
            self.head = nn.Linear(dims[-1], 1)
            self.wide = nn.Linear(x.shape[1], 1)

        def logit(self, a: torch.Tensor) -> torch.Tensor:
            z = (a - self.mu) * self.inv_std
            h = z
            for layer in self.deep:
                h = torch.relu(layer(h))
            return (self.head(h) + self.wide(z)).reshape(-1)

    net = WideDeep()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-6)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    batch = min(1024, len(yt))
    steps = cfg.steps(target)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.mlp_max_lr, total_steps=steps)
    net.train()
    perm, pos = torch.randperm(len(yt), generator=gen), 0
    for _ in range(steps):
        if pos + batch > len(yt):
            perm, pos = torch.randperm(len(yt), generator=gen), 0
        idx = perm[pos : pos + batch]
        pos += batch
        opt.zero_grad()
        loss = loss_fn(net.logit(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        sched.step()
    net.eval()

    def as_np(t: torch.Tensor) -> F32:
        return np.asarray(t.detach().numpy(), np.float32)

    model = mlp_graph(
        mu=mu,
        inv_std=inv_std,
        layers=[(as_np(layer.weight), as_np(layer.bias)) for layer in net.deep],
        head=(as_np(net.head.weight), as_np(net.head.bias)),
        wide=(as_np(net.wide.weight), as_np(net.wide.bias)),
        name=f"mlp_{target}",
    )

    def predict(a: F32) -> F64:
        with torch.no_grad():
            return np.asarray(torch.sigmoid(net.logit(torch.from_numpy(np.ascontiguousarray(a)))), np.float64)

    return Fitted(model, predict)


def fit(family: str, target: str, x: F32, y: F64, *, seed: int, cfg: TrainConfig) -> Fitted:
    """Train one model and export it."""
    if family == "lr":
        return _fit_lr(x, y, seed, cfg)
    if family == "gbdt":
        return _fit_gbdt(x, y, seed, cfg)
    if family == "mlp":
        return _fit_mlp(x, y, seed, cfg, target)
    raise ValueError(f"unknown family {family!r}")


def _ort_predict(blob: bytes, x: F32) -> F32:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(blob, sess_options=so, providers=["CPUExecutionProvider"])
    out: F32 = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]
    return out.reshape(-1)


def _metrics(y: F64, p: npt.ArrayLike) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    q = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return {
        "auc": round(float(roc_auc_score(y, q)), 5),
        "logloss": round(float(log_loss(y, q, labels=[0, 1])), 5),
        "mean_p": round(float(q.mean()), 5),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def quantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """int8 dynamic quantization of the MatMul/Gemm weights (activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(model.SerializeToString())
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return onnx.load(str(dst))


def train_one(
    family: str,
    target: str,
    log: TrafficLog,
    *,
    seed: int,
    cfg: TrainConfig,
    out_dir: Path,
    base: Fitted | None = None,
) -> tuple[ModelMeta, Fitted]:
    """Train, export, evaluate and write ``<family>_<target>.onnx`` + ``.json``.

    ``family="mlp_int8"`` quantizes ``base`` (the float MLP) instead of training; its ``predict`` stays
    the float framework's, so parity against it measures the quantization error.
    """
    ts = log.ts if target == "ctr" else log.ts[log.clicked.astype(bool)]
    training = {
        "simulator": {
            "world_seed": cfg.sim.world_seed,
            "n_warmup_queries": cfg.sim.n_warmup,
            "n_logged_queries": cfg.sim.n_log,
            "rate_qps": cfg.sim.rate_qps,
            "n_candidates": cfg.sim.n_candidates,
            "policy": "pCTR, pCVR from logistic regressions fitted on a prior-policy run (logging_policy), "
                      "autobid + GSP auction",
        },
    }
    return train_split(
        family, target, split_log(log, target), ts, seed=seed, cfg=cfg, out_dir=out_dir, base=base,
        training=training, served=log.served,
    )


def train_split(
    family: str,
    target: str,
    split: tuple[F32, F64, F32, F64, F64],
    ts: F64,
    *,
    seed: int,
    cfg: TrainConfig,
    out_dir: Path,
    base: Fitted | None = None,
    training: dict[str, Any] | None = None,
    served: F32 | None = None,
) -> tuple[ModelMeta, Fitted]:
    """:func:`train_one` on a given split ``(x_train, y_train, x_test, y_test, oracle_test)`` whose rows
    have the times ``ts`` (train rows then test rows); ``training`` adds keys to the sidecar's
    ``training`` (an oracle of NaNs means unknown: no oracle metrics); ``served`` is the sample of served
    candidate rows the reference profiles are fitted on (default: the training rows)."""
    x_tr, y_tr, x_te, y_te, oracle_te = split
    ref_rows = served if served is not None and len(served) else x_tr
    if family == INT8:
        if base is None:
            raise ValueError("mlp_int8 needs the float MLP as base")
        fitted = Fitted(quantize(base.onnx_model), base.predict)
    else:
        fitted = fit(family, target, x_tr, y_tr, seed=seed, cfg=cfg)
    fitted.onnx_model.graph.name = f"{family}_{target}"  # converters name graphs with a random uuid
    blob = fitted.onnx_model.SerializeToString()
    sha = hashlib.sha256(blob).hexdigest()
    p_tr = _ort_predict(blob, x_tr)
    p_te = _ort_predict(blob, x_te)
    extra: dict[str, Any] = {}
    if base is not None:
        p_float = _ort_predict(base.onnx_model.SerializeToString(), x_te)
        extra = {
            "quantization": "onnxruntime quantize_dynamic, QInt8 weights",
            "max_abs_dp_vs_float_test": round(float(np.max(np.abs(p_te - p_float))), 6),
            "auc_delta_vs_float_test": round(_metrics(y_te, p_te)["auc"] - _metrics(y_te, p_float)["auc"], 5),
        }
    golden_idx = np.linspace(0, len(y_te) - 1, GOLDEN_ROWS).astype(np.int64)
    cut = len(y_tr)
    data_hash = hashlib.sha256(np.ascontiguousarray(x_tr).tobytes() + y_tr.tobytes()).hexdigest()
    name = f"{family}_{target}"
    meta = ModelMeta(
        name=name,
        version=f"{family}-{target}-{sha[:12]}",
        family=family,  # type: ignore[arg-type]
        target=target,  # type: ignore[arg-type]
        feature_spec=FEATURE_SPEC,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        onnx_sha256=sha,
        training={
            "rows": "impressions" if target == "ctr" else "clicked impressions",
            "label": "clicked" if target == "ctr" else "purchased after the click",
            "window_start": _iso(float(ts[0])),
            "window_end": _iso(float(ts[cut - 1])),
            "test_window_end": _iso(float(ts[-1])),
            "n_train": len(y_tr),
            "n_test": len(y_te),
            "positives_train": int(y_tr.sum()),
            "data_sha256": data_hash,
            "seed": seed,
            **(training or {}),
        },
        metrics={
            "test": _metrics(y_te, p_te),
            **({"oracle_test": _metrics(y_te, oracle_te)} if np.isfinite(oracle_te).all() else {}),
            "train": _metrics(y_tr, p_tr),
            "label_rate_test": round(float(y_te.mean()), 5),
        },
        # the drift monitor compares what is served live (every candidate, winner or not) with this
        reference=tuple(p.to_dict() for p in profile_matrix(ref_rows, FEATURE_SPEC.names)),
        prediction_reference=FeatureProfile.from_values(
            f"p{target}", _ort_predict(blob, ref_rows)).to_dict(),
        golden_inputs=tuple(tuple(float(v) for v in r) for r in x_te[golden_idx]),
        # scored as their own batch, as the load-time check does (int8 activation scales are per batch)
        golden_outputs=tuple(float(v) for v in _ort_predict(blob, x_te[golden_idx])),
        golden_atol=GOLDEN_ATOL_INT8 if family == INT8 else GOLDEN_ATOL,
        extra=extra,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.onnx").write_bytes(blob)
    meta.save(out_dir / f"{name}.json")
    return meta, fitted


MIN_POLICY_POSITIVES = 50


def logging_policy(cfg: TrainConfig, *, seed: int) -> Policy:
    """A served model's policy for the training log: logistic regressions (CTR, CVR) fitted on a shorter
    prior-policy run of the same world, evaluated in numpy (a few microseconds per query). A run too short
    to hold ``MIN_POLICY_POSITIVES`` of each class of a target (a test-sized world: a couple of purchases)
    logs under :func:`~onnx_models.traffic.prior_policy` instead: a regression on a handful of labels can
    rank worse than the prior (measured: 3 clicks in 36k logged impressions, 49 in the prior run)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    first = simulate(dataclasses.replace(cfg.sim, n_warmup=cfg.sim.n_warmup // 3, n_log=cfg.sim.n_log // 3),
                     seed=seed + 1000)
    weights: list[tuple[F64, F64, F64, float]] = []
    for target in TARGETS:
        x, y, *_ = split_log(first, target, train_frac=1.0)
        if min(int(y.sum()), int(len(y) - y.sum())) < MIN_POLICY_POSITIVES:
            return prior_policy
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=cfg.lr_c, max_iter=2000, random_state=seed).fit(scaler.transform(x), y)
        weights.append((scaler.mean_, scaler.scale_, clf.coef_[0], float(clf.intercept_[0])))

    def policy(x: F32) -> tuple[F64, F64]:
        p = [1.0 / (1.0 + np.exp(-(((x - m) / s) @ w + b))) for m, s, w, b in weights]
        return p[0], p[1]

    return policy


def run(
    families: tuple[str, ...], *, seed: int, cfg: TrainConfig, out_dir: Path
) -> dict[str, tuple[ModelMeta, Fitted]]:
    log = simulate(cfg.sim, seed=seed, policy=logging_policy(cfg, seed=seed))
    if log.history is not None:  # where the training traffic ended: what a live deployment restores
        out_dir.mkdir(parents=True, exist_ok=True)
        log.history.save(out_dir / HISTORY_FILE)
    out: dict[str, tuple[ModelMeta, Fitted]] = {}
    for fam in families:
        for tgt in TARGETS:
            out[f"{fam}_{tgt}"] = train_one(fam, tgt, log, seed=seed, cfg=cfg, out_dir=out_dir)
            if fam == "mlp":
                base = out[f"{fam}_{tgt}"][1]
                out[f"{INT8}_{tgt}"] = train_one(
                    INT8, tgt, log, seed=seed, cfg=cfg, out_dir=out_dir, base=base
                )
    return out


if __name__ == "__main__":
    from streams.cli.lifecycle import train_models  # the command line lives in the CLI

    train_models(prog_name="python -m onnx_models.train")
