"""Scoreboard: every recorded run on one frozen test set, side by side, with the oracle as the top line.

Metrics (:func:`evaluate`, numpy only, the same function training uses to record them):

* ``auc``: ROC AUC (Mann-Whitney, ties averaged);
* ``logloss``: mean binary cross-entropy, predictions clipped to ``[1e-7, 1 - 1e-7]``;
* ``ne``: normalized entropy = logloss / entropy of the observed label rate (< 1 beats predicting the
  base rate; the usual CTR yardstick since He et al. 2014);
* ``calibration``: mean predicted / observed rate (1 = calibrated);
* ``pr_auc``: average precision.

The oracle row scores the simulator's true probabilities (``p_click_true``, ``p_buy_true`` of the frozen
test rows) with the same metrics: the best any model could do on those rows. Runs are read from the
:class:`bidder.lifecycle.tracking.RunStore`; a run appears when its ``dataset.id`` is the dataset's and it has
``test.<target>.<metric>`` metrics (``kind=train``) or ``online.<target>.<metric>`` (``kind=online``,
shadow/champion scores of live traffic).

Models that were never trained as a run (the shipped ones, a serving champion) are scored on the same
test rows with :func:`model_rows` (``kind=model``, ONNX Runtime CPU, every load-time check), and what
was actually served with :func:`served_rows` (``kind=served``: the ``pctr``/``pcvr`` each test row was
auctioned with, one row per serving model version).

>>> m = evaluate(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.1, 0.4, 0.35, 0.8]))
>>> m["auc"], round(m["calibration"], 3)
(0.75, 0.825)
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["METRICS", "Row", "auc", "build", "dataset_title", "evaluate", "model_rows", "plot", "render",
           "row_log_loss", "served_rows"]

F64 = npt.NDArray[np.float64]
METRICS = ("auc", "logloss", "ne", "calibration", "pr_auc")
_EPS = 1e-7


def auc(y: F64, p: F64) -> float:
    """Mann-Whitney ROC AUC, ties averaged; NaN without both classes."""
    pos = y > 0.5
    n1 = int(pos.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), np.float64)
    sp = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sp, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _average_precision(y: F64, p: F64) -> float:
    n1 = float((y > 0.5).sum())
    if n1 == 0:
        return math.nan
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    tp = np.cumsum(ys)
    # evaluate at the last index of each distinct threshold (ties form one step)
    last = np.r_[np.flatnonzero(np.diff(ps) != 0), len(ps) - 1]
    precision = tp[last] / (last + 1)
    recall = tp[last] / n1
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def row_log_loss(y: npt.ArrayLike, p: npt.ArrayLike) -> F64:
    """Per-row log loss of ``p`` (clipped to ``[1e-7, 1 - 1e-7]``) against ``y``; ``evaluate``'s is its mean."""
    yy = np.asarray(y, np.float64).ravel()
    pp = np.clip(np.asarray(p, np.float64).ravel(), _EPS, 1 - _EPS)
    out: F64 = -(yy * np.log(pp) + (1 - yy) * np.log(1 - pp))
    return out


def evaluate(y: npt.ArrayLike, p: npt.ArrayLike) -> dict[str, float]:
    """AUC, log loss, normalized entropy, calibration (mean p / rate) and PR-AUC of ``p`` against ``y``."""
    yy = np.asarray(y, np.float64).ravel()
    pp = np.clip(np.asarray(p, np.float64).ravel(), _EPS, 1 - _EPS)
    rate = float(yy.mean()) if len(yy) else math.nan
    ll = float(row_log_loss(yy, pp).mean()) if len(yy) else math.nan
    r = min(max(rate, _EPS), 1 - _EPS)
    h = -(r * math.log(r) + (1 - r) * math.log(1 - r))
    return {
        "auc": auc(yy, pp),
        "logloss": ll,
        "ne": ll / h if h > 0 else math.nan,
        "calibration": float(pp.mean()) / rate if rate > 0 else math.nan,
        "pr_auc": _average_precision(yy, pp),
        "n": float(len(yy)),
        "rate": rate,
    }


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the scoreboard: a run (or the oracle) on one target."""

    name: str
    family: str
    kind: str
    """``oracle``, ``train`` (frozen test set), ``online`` (live traffic), ``model`` (an ONNX pair scored on
    the frozen test set) or ``served`` (the predictions the test rows were served with)"""
    target: str
    metrics: dict[str, float]
    run_id: str = ""


def build(dataset: Any, runs: list[Any], *, include_trials: bool = False) -> list[Row]:
    """Oracle rows first (per target, when the dataset has the simulator's probabilities), then runs."""
    rows: list[Row] = []
    for target in ("ctr", "cvr"):
        _, y, oracle, _ = dataset.test.target(target)
        if len(oracle) and np.isfinite(oracle).all():
            rows.append(Row("oracle", "-", "oracle", target, evaluate(y, oracle)))
    for r in runs:
        if r.dataset.get("id") != dataset.id:
            continue
        kind = r.tags.get("kind", "train")
        if kind == "trial" and not include_trials:
            continue
        prefix = "online" if kind == "online" else ("val" if kind == "trial" else "test")
        for target in ("ctr", "cvr"):
            m = {k: r.metrics[f"{prefix}.{target}.{k}"] for k in METRICS if f"{prefix}.{target}.{k}" in r.metrics}
            if m:
                rows.append(Row(r.name, r.tags.get("family", "?"), kind, target, m, r.run_id))
    return rows


def model_rows(dataset: Any, model_dir: Path, family: str | None = None, *, name: str = "") -> list[Row]:
    """Score the ONNX pair of ``model_dir`` on the frozen test split (CPU, every load-time check).
    ``family`` defaults to the ``CHAMPION`` pointer's, else to the only ``<family>_ctr.onnx`` there."""
    from bidder.lifecycle.promotion import find_champion
    from bidder.query.scoring import family_in, load_models

    model_dir = Path(model_dir)
    champion = find_champion(model_dir) if family is None else None
    if champion is not None:
        model_dir, family = champion
    if family is None:
        try:
            family = family_in(model_dir)
        except ValueError as exc:
            raise ValueError(f"{exc}: name one (DIR:FAMILY)") from exc
    models = load_models(model_dir, family, "cpu", 1, 1)
    rows: list[Row] = []
    for target in ("ctr", "cvr"):
        x, y, _, _ = dataset.test.target(target)
        if len(y):
            m = evaluate(y, getattr(models, target).score(np.ascontiguousarray(x, np.float32)))
            rows.append(Row(name or models.versions[target], family, "model", target,
                            {k: m[k] for k in METRICS}))
    return rows


def served_rows(dataset: Any) -> list[Row]:
    """The served ``pctr``/``pcvr`` of the test rows against their labels, per serving model version."""
    rows: list[Row] = []
    cols = dataset.test.cols
    for target, col in (("ctr", "pctr"), ("cvr", "pcvr")):
        _, y, _, _ = dataset.test.target(target)
        mask = np.ones(dataset.test.n, bool) if target == "ctr" else cols["clicked"].astype(bool)
        versions = np.asarray(cols[f"{target}_version"], object)[mask]
        p = np.asarray(cols[col], np.float64)[mask]
        for v in sorted(set(versions.tolist())):
            sel = versions == v
            if np.isfinite(p[sel]).all():
                m = evaluate(y[sel], p[sel])
                rows.append(Row(str(v) or "?", str(v).split("-")[0] or "?", "served", target,
                                {k: m[k] for k in METRICS}))
    return rows


def render(rows: list[Row], *, title: str) -> str:
    """A rich table as text (oracle on top, then by target, family and AUC)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("target", "model", "family", "kind", *METRICS, "AUC/oracle", "run"):
        table.add_column(col, justify="right" if col in METRICS or col == "AUC/oracle" else "left")
    oracle = {r.target: r.metrics["auc"] for r in rows if r.kind == "oracle"}
    for r in sorted(rows, key=lambda r: (r.target, r.kind != "oracle", r.family, -r.metrics.get("auc", 0.0))):
        vals = [f"{r.metrics[m]:.4f}" if m in r.metrics and math.isfinite(r.metrics[m]) else "-" for m in METRICS]
        ratio = (f"{r.metrics['auc'] / oracle[r.target]:.3f}" if r.target in oracle and "auc" in r.metrics
                 else "-")
        table.add_row(r.target, r.name, r.family, r.kind, *vals, ratio, r.run_id)
    console = Console(record=True, width=160, color_system=None, file=io.StringIO())
    console.print(table)
    return console.export_text()


def plot(rows: list[Row], path: Path, *, title: str) -> Path:
    """AUC (with the oracle as a dashed line) and calibration ratio per run, one panel pair per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in ("ctr", "cvr") if any(r.target == t for r in rows)]
    fig, axes = plt.subplots(len(targets), 2, figsize=(12, 3.5 * len(targets)), squeeze=False)
    for i, t in enumerate(targets):
        runs = [r for r in rows if r.target == t and r.kind != "oracle"]
        oracle = [r for r in rows if r.target == t and r.kind == "oracle"]
        labels = [f"{r.family}:{r.name}\n{r.kind}" for r in runs]
        xs = np.arange(len(runs))
        aucs = np.array([r.metrics.get("auc", np.nan) for r in runs], np.float64)
        top = [o.metrics["auc"] for o in oracle]
        finite = np.r_[aucs[np.isfinite(aucs)], top]
        ax = axes[i][0]
        ax.bar(xs, aucs, color="tab:blue")
        for xi, a in zip(xs, aucs, strict=True):
            ax.annotate(f"{a:.4f}", (xi, a), ha="center", va="bottom", fontsize=7)
        if top:
            ax.axhline(top[0], color="black", ls="--", label=f"oracle {top[0]:.4f}")
            ax.legend(loc="lower right")
        if len(finite):  # zoomed: the families differ in the third decimal
            ax.set_ylim(max(0.0, finite.min() - 0.02), min(1.0, finite.max() + 0.01))
        ax.set_title(f"{t}: test AUC")
        ax.set_xticks(xs, labels, fontsize=7)
        ax = axes[i][1]
        cal = [r.metrics.get("calibration", np.nan) for r in runs]
        ax.bar(xs, cal, color="tab:orange")
        for xi, c in zip(xs, cal, strict=True):
            ax.annotate(f"{c:.3f}", (xi, c), ha="center", va="bottom", fontsize=7)
        ax.axhspan(0.95, 1.05, color="green", alpha=0.15, label="[0.95, 1.05]")
        ax.set_ylim(0.8, 1.2)
        ax.legend(loc="lower right")
        ax.set_title(f"{t}: calibration (mean p / observed)")
        ax.set_xticks(xs, labels, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def dataset_title(data: Any) -> str:
    """The scoreboard's title for a frozen dataset: its id and the test window."""
    window = data.entry["window"]
    return f"dataset {data.id}: test {window['train_end_utc']} .. {window['test_end_utc']}"
