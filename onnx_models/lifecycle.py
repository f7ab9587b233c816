"""``bidder train --family lr|gbdt|mlp --dataset ID [--trials N]``: train on a frozen dataset, track the run.

1. Load the frozen dataset (:func:`bidder.lifecycle.dataset.load`, which verifies its hashes).
2. With ``--trials N``: Optuna TPE (seeded) per target over the family's knobs; each trial trains on the
   first 80 % (by time) of the *train* split and is scored on the last 20 % (validation log loss): the
   test split is never seen while tuning. Every trial is a run (``kind=trial``, ``parent`` = the main
   run, ``val.<target>.*`` metrics).
3. Train CTR and CVR on the whole train split with the chosen knobs, export ONNX with the sidecar
   (:func:`onnx_models.train.train_split`: feature spec, reference profiles, golden rows), measure
   framework-vs-ONNX parity on the test rows (stored as ``extra.parity`` in the sidecar, read by the
   promotion gate), score the frozen test split (:func:`bidder.lifecycle.scoreboard.evaluate`) and record
   everything in the run: params, ``test.<target>.*`` metrics, dataset id and content hash, code
   version; the four model files are the run's artifacts (``runs/<exp>/<run_id>/artifacts/``), a
   directory ``bidder promote`` accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bidder.lifecycle import dataset as ds
from bidder.lifecycle.scoreboard import evaluate
from bidder.lifecycle.tracking import RunStore, code_version
from bidder.query.model_meta import ModelMeta
from onnx_models.train import FAMILIES, TARGETS, TrainConfig, fit, train_split

__all__ = ["search_space", "train_dataset"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
EXPERIMENT = "ctr-cvr"


def search_space(family: str, trial: Any, base: TrainConfig) -> TrainConfig:
    """The knobs one Optuna trial sets for ``family`` (everything else stays ``base``)."""
    if family == "lr":
        return dataclasses.replace(base, lr_c=trial.suggest_float("lr_c", 1e-3, 10.0, log=True))
    if family == "gbdt":
        return dataclasses.replace(
            base,
            gbdt_trees=trial.suggest_int("gbdt_trees", 20, 200, log=True),
            gbdt_depth=trial.suggest_int("gbdt_depth", 3, 7),
            gbdt_learning_rate=trial.suggest_float("gbdt_learning_rate", 0.02, 0.2, log=True),
        )
    if family == "mlp":
        width = trial.suggest_categorical("mlp_width", [16, 32, 64, 128])
        steps = base.steps("ctr")
        return dataclasses.replace(
            base,
            mlp_hidden=(width, max(width // 2, 8)),
            mlp_max_lr=trial.suggest_float("mlp_max_lr", 5e-4, 1e-2, log=True),
            mlp_steps={"ctr": steps, "cvr": base.steps("cvr")},
        )
    raise ValueError(f"unknown family {family!r}")


def _knobs(family: str, cfg: TrainConfig) -> dict[str, Any]:
    """The hyperparameters that matter for ``family`` (what the run records)."""
    if family == "lr":
        return {"lr_c": cfg.lr_c}
    if family == "gbdt":
        return {"gbdt_trees": cfg.gbdt_trees, "gbdt_depth": cfg.gbdt_depth,
                "gbdt_learning_rate": cfg.gbdt_learning_rate}
    return {"mlp_hidden": list(cfg.mlp_hidden), "mlp_max_lr": cfg.mlp_max_lr,
            "mlp_steps": {t: cfg.steps(t) for t in TARGETS}}


def _tune(family: str, target: str, x: F32, y: F64, *, trials: int, seed: int, base: TrainConfig,
          store: RunStore, parent: str, dataset: dict[str, Any]) -> TrainConfig:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cut = int(0.8 * len(y))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, trials))
    study = optuna.create_study(direction="minimize", sampler=sampler)

    def objective(trial: Any) -> float:
        cfg = search_space(family, trial, base)
        run = store.start(EXPERIMENT, name=f"{family}-{target}-trial{trial.number}",
                          params={**trial.params, "target": target},
                          tags={"family": family, "kind": "trial", "parent": parent, "target": target},
                          dataset=dataset)
        fitted = fit(family, target, x[:cut], y[:cut], seed=seed, cfg=cfg)
        m = evaluate(y[cut:], fitted.predict(x[cut:]))
        run.log_metrics({f"val.{target}.{k}": v for k, v in m.items() if math.isfinite(v)}).end()
        return m["logloss"]

    study.optimize(objective, n_trials=trials)
    return search_space(family, optuna.trial.FixedTrial(study.best_params), base)


def train_dataset(
    family: str,
    dataset_id: str,
    *,
    trials: int = 0,
    seed: int = 7,
    cfg: TrainConfig | None = None,
    datasets_root: Path = ds.DEFAULT_ROOT,
    runs_root: Path = Path("runs"),
    clock: Callable[[], float],
) -> tuple[str, Path, dict[str, float]]:
    """Train CTR + CVR of ``family`` on a frozen dataset; returns ``(run_id, model dir, metrics)``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    base = cfg or TrainConfig()
    data = ds.load(dataset_id, root=datasets_root)
    dataset = {"id": data.id, "content_sha256": data.entry["content_sha256"]}
    store = RunStore(runs_root, clock=clock, code=code_version())
    run = store.start(EXPERIMENT, name=f"{family}{'-tuned' if trials else ''}",
                      params={"family": family, "seed": seed, "trials": trials},
                      tags={"family": family, "kind": "train"}, dataset=dataset)
    metrics: dict[str, float] = {}
    try:
        for target in TARGETS:
            x_tr, y_tr, _, ts_tr = data.train.target(target)
            x_te, y_te, oracle_te, ts_te = data.test.target(target)
            tcfg = base
            if trials:
                tcfg = _tune(family, target, x_tr, y_tr, trials=trials, seed=seed, base=base, store=store,
                             parent=run.run_id, dataset=dataset)
            run.log_params({f"{target}.{k}": v for k, v in _knobs(family, tcfg).items()})
            training = {"dataset_id": data.id, "dataset_sha256": data.entry["content_sha256"],
                        "run_id": run.run_id, "source": data.entry["source"].get("kind", "?")}
            meta, fitted = train_split(family, target, (x_tr, y_tr, x_te, y_te, oracle_te),
                                       np.concatenate([ts_tr, ts_te]), seed=seed, cfg=tcfg,
                                       out_dir=run.artifacts, training=training)
            meta = _with_parity(meta, fitted.predict, x_te, run.artifacts)
            p_te = _onnx_scores(run.artifacts / f"{family}_{target}.onnx", x_te)
            m = evaluate(y_te, p_te)
            metrics.update({f"test.{target}.{k}": v for k, v in m.items() if math.isfinite(v)})
            metrics[f"parity.{target}.max_abs_dp"] = float(meta.extra["parity"]["max_abs_dp"])
            if np.isfinite(oracle_te).all() and len(oracle_te):
                metrics[f"oracle.{target}.auc"] = evaluate(y_te, oracle_te)["auc"]
        run.log_metrics(metrics)
        run.set_tags({"ctr_version": ModelMeta.load(run.artifacts / f"{family}_ctr.json").version,
                      "cvr_version": ModelMeta.load(run.artifacts / f"{family}_cvr.json").version})
        run.end()
    except BaseException:
        run.end("FAILED")
        raise
    return run.run_id, run.artifacts, metrics


def _onnx_scores(path: Path, x: F32) -> F32:
    from bidder.query.scoring import OnnxScorer

    return OnnxScorer(path, warmup_rows=0).score(np.ascontiguousarray(x, np.float32))


def _with_parity(meta: ModelMeta, predict: Callable[[F32], F64], x: F32, out_dir: Path) -> ModelMeta:
    """Record framework-vs-ONNX parity on ``x`` in the sidecar's ``extra`` (the .onnx is unchanged)."""
    p_onnx = _onnx_scores(out_dir / f"{meta.name}.onnx", x).astype(np.float64)
    dp = np.abs(np.asarray(predict(x), np.float64) - p_onnx)
    parity = {"max_abs_dp": float(dp.max()) if len(dp) else 0.0,
              "p999_abs_dp": float(np.quantile(dp, 0.999)) if len(dp) else 0.0, "rows": len(dp),
              "runtime": "onnxruntime CPU"}
    meta = dataclasses.replace(meta, extra={**meta.extra, "parity": parity})
    with tempfile.NamedTemporaryFile("w", dir=out_dir, delete=False, suffix=".json") as f:
        f.write(json.dumps(meta.to_dict(), indent=1) + "\n")
    Path(f.name).replace(out_dir / f"{meta.name}.json")
    return meta
