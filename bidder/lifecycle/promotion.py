"""The promotion gate: a challenger replaces the serving champion only when it behaves like a sane model.

Replay (:func:`compare`): the frozen test rows of a dataset, and golden queries cut from them (up to
``golden_queries`` blocks of ``query_size`` consecutive test rows, spread evenly over the test period),
go through the champion and the challenger *on the same runtime* (ONNX Runtime CPU sessions, loaded with
every load-time check of :mod:`bidder.query.scoring`: sha256, spec, IO, golden outputs). Each golden query is
bid (:func:`bidder.query.autobid.bids`: price from the ``log_price`` feature, one ``target_share`` for all,
no pacing, no budget limit) and auctioned (:func:`bidder.query.auction.run_auction`, same seeded tie-breaking
for both models). Checks, per target unless noted (defaults in :class:`Limits`):

================  ==========================================================================
check             refuses when
================  ==========================================================================
finite            a challenger prediction is NaN/inf or outside [0, 1]
mean_shift        ``|mean(challenger) / mean(champion) - 1| > max_mean_shift`` (golden rows)
ks                two-sample Kolmogorov-Smirnov distance of the two prediction sets ``> max_ks``
                  (the Jensen-Shannon distance over 20 champion-quantile bins is reported beside)
calibration       challenger's mean prediction / observed rate on the test rows outside
                  ``[calibration_low, calibration_high]`` over the whole ~95 % interval the count of
                  positives allows (ratio / (1 +- 1.96 / sqrt(positives))); skipped (reported) with
                  fewer than ``min_positives`` positives: a ratio on a handful of labels is noise
log_loss          non-inferiority on the labels: the one-sided 95 % upper bound of the mean paired
                  per-row log-loss difference (challenger - champion, test rows; CVR over clicked
                  rows) exceeds ``max_log_loss_increase`` x the champion's log loss. Not judged
                  (reported) with fewer than ``min_label_positives`` positives
top24_overlap     mean share of each golden query's top-24 by eCPM (bid x pCTR) kept ``< min_overlap``
cpc               ``|mean CPC change| > max_cpc_change`` (relative; CPC = GSP price of a winner)
expected_spend    ``|change| > max_spend_change`` of sum over winners of price x pCTR (the spend the
                  bidder expects)
parity            framework-vs-ONNX ``|dp|`` recorded at training (sidecar ``extra.parity``) is missing,
                  or its max ``> max_parity_dp`` (1e-3), or its 99.9th percentile ``> max_parity_p999``
                  (1e-5). Two limits because ONNX tree ensembles keep split thresholds in float32: the
                  rare row lying between a float64 threshold and its rounding takes the other branch
                  (measured 4e-4 on 192k GBDT rows), while a broken converter moves most rows
================  ==========================================================================

The behaviour checks (mean_shift, ks, top24_overlap, cpc, expected_spend) guard what labels cannot see: a
challenger that moves predictions, rankings or prices away from the champion's is refused... unless the
labels explain the move. When ``log_loss`` shows the challenger no worse than the champion on every target a
behaviour check involves (``both``: ctr and cvr), that check passes with the note ``explained by the
labels``: a retrain on fresh labels is *expected* to move predictions toward what buyers do. A framework
upgrade that shifts every prediction by +0.15 moves them away from the labels, fails ``log_loss`` and stays
refused with every behaviour check named; with too few labels to judge, nothing is explained.

Relative checks are skipped when there is no champion (first promotion). A refused challenger can be
promoted with ``force=True`` and a non-empty reason; the reason and the failed checks are recorded.

Serving model directory after a promotion (the format the worker's hot-swap watcher reads)::

    <model_dir>/releases/<release>/<family>_ctr.onnx, <family>_ctr.json, <family>_cvr.onnx, <family>_cvr.json
    <model_dir>/<family>_ctr.onnx, <family>_ctr.json, <family>_cvr.onnx, <family>_cvr.json
    <model_dir>/reports/<stamp>-<release>.txt, .json     side-by-side report of every decision
    <model_dir>/CHAMPION                                 JSON pointer, the commit point
    <model_dir>/promotions.jsonl                         one line per decision (promoted/forced/refused)

``<release>`` = ``<family>-<ctr onnx sha256[:12]>-<cvr onnx sha256[:12]>``. Order of writes, each atomic:

1. the four files are copied into ``<model_dir>/.tmp-<release>-<n>/`` (fsync'ed), and that directory is
   renamed (``os.replace``) to ``releases/<release>``: a release directory is complete or absent, and
   never changes afterwards (an existing one with the same name holds the same bytes: names are hashes);
2. ``load_models(releases/<release>, family, ...)`` must succeed (all load-time checks), else nothing
   else is written;
3. the report files are written;
4. the top-level files (what a plain ``load_models(model_dir, family, ...)`` reads at cold start) are
   each replaced via temp file + ``os.replace`` in the order ``ctr.onnx, ctr.json, cvr.onnx, cvr.json``.
   Each file is atomic, the set is not: a reader between two renames may see a new ``.onnx`` with an old
   ``.json`` and is refused by the sha256 check (and keeps its old model);
5. ``CHAMPION`` is replaced (temp + ``os.replace``): the single atomic switch. Its JSON:
   ``{"release", "family", "path": "releases/<release>", "versions": {"ctr", "cvr"}, "sha256":
   {"<family>_ctr.onnx": ..., ...}, "promoted_at", "forced", "reason", "failed_checks": [...],
   "dataset_id", "report", "previous": <the former CHAMPION's release or null>}``;
6. a line is appended to ``promotions.jsonl`` (also for refusals, which write nothing else but the
   report).

A watcher polls ``CHAMPION`` (mtime or content); when ``release`` changes it loads
``<model_dir>/<path>`` with ``family`` from the pointer, which is immutable and complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bidder.lifecycle.dataset import write_atomically
from bidder.lifecycle.scoreboard import auc, row_log_loss
from bidder.query.auction import run_auction
from bidder.query.autobid import bids as auto_bids
from bidder.query.features import FEATURE_SPEC
from bidder.query.scoring import Models, family_in, load_models

__all__ = ["BEHAVIOUR", "EXPLAINED", "Check", "Limits", "PromotionReport", "Replay", "compare", "find_champion",
           "install_release", "model_source", "promote", "release_name", "trained_on"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
TARGETS = ("ctr", "cvr")
CHAMPION = "CHAMPION"
LOG = "promotions.jsonl"
_LOG_PRICE = FEATURE_SPEC.index("log_price")
EXPLAINED = "explained by the labels"


@dataclass(frozen=True, slots=True)
class Limits:
    """Where the gate refuses; see the module docstring's table."""

    max_mean_shift: float = 0.10
    max_ks: float = 0.10
    calibration_low: float = 0.95
    calibration_high: float = 1.05
    min_positives: int = 100
    max_log_loss_increase: float = 0.01
    """non-inferiority margin of ``log_loss``, relative to the champion's mean log loss"""
    min_label_positives: int = 30
    min_overlap: float = 0.80
    max_cpc_change: float = 0.10
    max_spend_change: float = 0.15
    max_parity_dp: float = 1e-3
    max_parity_p999: float = 1e-5


@dataclass(frozen=True, slots=True)
class Replay:
    """How golden queries are cut and auctioned."""

    query_size: int = 600
    golden_queries: int = 40
    slots: int = 24
    reserve_price: float = 0.05
    min_bid: float = 0.02
    max_bid: float = 3.0
    target_share: float = 0.1
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the side-by-side report; ``ok`` None = not applicable (skipped, with ``note``)."""

    name: str
    target: str
    champion: float | None
    challenger: float | None
    value: float | None
    limit: str
    ok: bool | None
    note: str = ""

    @property
    def explained(self) -> bool:
        """A behaviour check that failed its limit and was explained by the labels (``log_loss``)."""
        return self.ok is True and EXPLAINED in self.note

    def why(self) -> str:
        v = "-" if self.value is None else f"{self.value:.4g}"
        return f"{self.name}[{self.target}] = {v} (limit {self.limit}){': ' + self.note if self.note else ''}"


@dataclass
class PromotionReport:
    """The gate's verdict with every check; :meth:`render` is the side-by-side text."""

    challenger: dict[str, str]
    champion: dict[str, str] | None
    dataset_id: str
    checks: list[Check]
    decision: str = "pending"
    """``promoted``, ``forced``, ``refused``"""
    reason: str = ""
    release: str = ""
    replay: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    @property
    def explained(self) -> list[Check]:
        return [c for c in self.checks if c.explained]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [c.why() for c in self.failed]
        d["explained"] = [c.why() for c in self.explained]
        return d

    def render(self) -> str:
        champ = self.champion or {}
        lines = [
            f"challenger ctr={self.challenger.get('ctr')} cvr={self.challenger.get('cvr')}",
            f"champion   ctr={champ.get('ctr', '-')} cvr={champ.get('cvr', '-')}",
            f"dataset    {self.dataset_id}   replay {self.replay}",
            "",
            f"{'check':15s} {'target':6s} {'champion':>12s} {'challenger':>12s} {'value':>11s}  {'limit':30s} verdict",
        ]

        def f(x: float | None) -> str:
            return "-" if x is None or not math.isfinite(x) else f"{x:.5g}"

        for c in self.checks:
            verdict = "explained" if c.explained else {True: "ok", False: "FAIL", None: "skip"}[c.ok]
            lines.append(f"{c.name:15s} {c.target:6s} {f(c.champion):>12s} {f(c.challenger):>12s} "
                         f"{f(c.value):>11s}  {c.limit:30s} {verdict}{'  (' + c.note + ')' if c.note else ''}")
        lines.append("")
        if self.failed:
            lines.append("REFUSED because: " + "; ".join(c.why() for c in self.failed))
        lines.append(f"decision: {self.decision}{' - reason: ' + self.reason if self.reason else ''}")
        return "\n".join(lines) + "\n"


def _ks(a: F64, b: F64) -> float:
    sa, sb = np.sort(a), np.sort(b)
    grid = np.concatenate([sa, sb])
    return float(np.max(np.abs(np.searchsorted(sa, grid, side="right") / len(sa)
                               - np.searchsorted(sb, grid, side="right") / len(sb))))


def _js(a: F64, b: F64, bins: int = 20) -> float:
    edges = np.unique(np.quantile(a, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([a.min() - 1e-9, a.max() + 1e-9])
    def hist(v: F64) -> F64:
        idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
        h: F64 = np.bincount(idx, minlength=len(edges) - 1).astype(np.float64) + 1e-12
        out: F64 = h / h.sum()
        return out
    p, q = hist(a), hist(b)
    m = (p + q) / 2
    kl = float(np.sum(p * np.log2(p / m)) + np.sum(q * np.log2(q / m))) / 2
    return math.sqrt(max(kl, 0.0))


def _rel(new: float, old: float) -> float:
    return new / old - 1.0 if old != 0 else (0.0 if new == 0 else math.inf)


def _golden_blocks(n: int, replay: Replay) -> list[tuple[int, int]]:
    size = min(replay.query_size, n)
    k = max(1, min(replay.golden_queries, n // size))
    starts = np.linspace(0, n - size, k).astype(np.int64)
    return [(int(s), int(s) + size) for s in starts]


def _auction_stats(x: F32, pctr: F32, pcvr: F32, blocks: list[tuple[int, int]], replay: Replay
                   ) -> tuple[list[set[int]], float, float]:
    """(top-24 row sets by eCPM per query, mean CPC, expected spend per query)."""
    rng = np.random.default_rng(replay.seed)
    tops: list[set[int]] = []
    prices: list[F64] = []
    spend = 0.0
    for a, b in blocks:
        price = np.exp(x[a:b, _LOG_PRICE].astype(np.float64))
        n = b - a
        bid = auto_bids(pcvr=pcvr[a:b], price=price, target_share=np.full(n, replay.target_share),
                        pacing=np.ones(n), remaining_budget=np.full(n, np.inf), min_bid=replay.min_bid,
                        max_bid=replay.max_bid)
        ecpm = bid * pctr[a:b]
        tops.append(set(np.argsort(-ecpm, kind="stable")[: replay.slots].tolist()))
        res = run_auction(bids=bid, pctr=pctr[a:b], reserve_price=replay.reserve_price, slots=replay.slots, rng=rng)
        prices.append(res.prices)
        spend += float(np.sum(res.prices * pctr[a:b][res.winners]))
    allp = np.concatenate(prices) if prices else np.empty(0)
    return tops, float(allp.mean()) if len(allp) else math.nan, spend / max(len(blocks), 1)


BEHAVIOUR = ("mean_shift", "ks", "top24_overlap", "cpc", "expected_spend")
_Z95 = 1.6448536269514722  # one-sided 95 %


def _log_loss_check(t: str, test: Any, preds: dict[str, dict[str, F32]], limits: Limits) -> Check:
    """Non-inferiority of the challenger's log loss on the test labels (paired, per row)."""
    _, y, _, _ = test.target(t)
    mask = np.ones(len(test.x), bool) if t == "ctr" else test.cols["clicked"].astype(bool)
    pc, po = preds["challenger"][t][mask], preds["champion"][t][mask]
    lim = f"upper95 <= +{limits.max_log_loss_increase:g} rel"
    pos = int(y.sum())
    if pos < limits.min_label_positives or len(y) < 2:
        return Check("log_loss", t, None, None, None, lim, None,
                     f"{pos} positives < {limits.min_label_positives}: no worse cannot be shown")
    lc, lo = row_log_loss(y, pc), row_log_loss(y, po)
    d = lc - lo
    upper = float(d.mean() + _Z95 * d.std(ddof=1) / math.sqrt(len(d)))
    base = float(lo.mean())
    value = upper / base if base > 0 else math.inf
    return Check("log_loss", t, base, float(lc.mean()), value, lim, value <= limits.max_log_loss_increase,
                 f"mean diff {float(d.mean()) / base:+.4f} rel over {len(d)} rows, {pos} positives; "
                 f"AUC {auc(y, po.astype(np.float64)):.4f} -> {auc(y, pc.astype(np.float64)):.4f}")


def _explained(c: Check, quality: dict[str, Check]) -> Check:
    """A failed behaviour check passes when the labels show the challenger no worse on every target it
    involves (see the module docstring)."""
    if c.ok is not False or c.name not in BEHAVIOUR or not quality:
        return c
    targets = TARGETS if c.target == "both" else (c.target,)
    if not all(quality[t].ok is True for t in targets):
        return c
    why = f"{EXPLAINED}: log_loss[" + ",".join(targets) + "] no worse"
    return Check(c.name, c.target, c.champion, c.challenger, c.value, c.limit, True,
                 f"{c.note}; {why}" if c.note else why)


def compare(challenger: Models, champion: Models | None, test: Any, *, limits: Limits = Limits(),
            replay: Replay = Replay(), dataset_id: str = "") -> PromotionReport:
    """Run every check; ``test`` is a :class:`bidder.lifecycle.dataset.Frame` (the frozen test split)."""
    x = test.x
    blocks = _golden_blocks(len(x), replay)
    gold = np.concatenate([np.arange(a, b) for a, b in blocks])
    checks: list[Check] = []
    preds: dict[str, dict[str, F32]] = {"challenger": {}, "champion": {}}
    for t in TARGETS:
        preds["challenger"][t] = getattr(challenger, t).score(x)
        if champion is not None:
            preds["champion"][t] = getattr(champion, t).score(x)
    for t in TARGETS:
        p = preds["challenger"][t]
        bad = int(np.sum(~np.isfinite(p) | (p < 0) | (p > 1)))
        checks.append(Check("finite", t, None, None, float(bad), "0 bad predictions", bad == 0))
    for t in TARGETS:
        pc = preds["challenger"][t][gold].astype(np.float64)
        if champion is None:
            checks.append(Check("mean_shift", t, None, float(pc.mean()), None, "no champion", None, "first promotion"))
            checks.append(Check("ks", t, None, None, None, "no champion", None, "first promotion"))
            continue
        po = preds["champion"][t][gold].astype(np.float64)
        shift = _rel(float(pc.mean()), float(po.mean()))
        checks.append(Check("mean_shift", t, float(po.mean()), float(pc.mean()), shift,
                            f"|rel| <= {limits.max_mean_shift:g}", abs(shift) <= limits.max_mean_shift))
        ks = _ks(po, pc)
        checks.append(Check("ks", t, None, None, ks, f"<= {limits.max_ks:g}", ks <= limits.max_ks,
                            f"JS distance {_js(po, pc):.4f}"))
    for t in TARGETS:
        _, y, _, _ = test.target(t)
        mask = np.ones(len(x), bool) if t == "ctr" else test.cols["clicked"].astype(bool)
        rate = float(y.mean()) if len(y) else math.nan
        cal = float(preds["challenger"][t][mask].mean()) / rate if rate > 0 else math.nan
        cal_o = (float(preds["champion"][t][mask].mean()) / rate if champion is not None and rate > 0 else None)
        lim = f"[{limits.calibration_low:g}, {limits.calibration_high:g}]"
        pos = int(y.sum())
        if pos < limits.min_positives:
            checks.append(Check("calibration", t, cal_o, cal, cal, lim, None,
                                f"{pos} positives < {limits.min_positives}: not gated"))
        else:  # the observed rate is a count: refuse only when its whole ~95 % interval puts the ratio outside
            half = 1.96 / math.sqrt(pos)
            lo, hi = cal / (1 + half), cal / (1 - half)
            checks.append(Check("calibration", t, cal_o, cal, cal, lim,
                                hi >= limits.calibration_low and lo <= limits.calibration_high,
                                f"{pos} positives: ~95 % {lo:.3f}-{hi:.3f}"))
    quality = {t: _log_loss_check(t, test, preds, limits) for t in TARGETS} if champion is not None else {}
    checks += quality.values()
    c_tops, c_cpc, c_spend = _auction_stats(x, preds["challenger"]["ctr"], preds["challenger"]["cvr"], blocks, replay)
    if champion is None:
        for name in ("top24_overlap", "cpc", "expected_spend"):
            checks.append(Check(name, "both", None, None, None, "no champion", None, "first promotion"))
    else:
        o_tops, o_cpc, o_spend = _auction_stats(x, preds["champion"]["ctr"], preds["champion"]["cvr"], blocks, replay)
        overlap = float(np.mean([len(a & b) / max(len(a), 1) for a, b in zip(o_tops, c_tops, strict=True)]))
        checks.append(Check("top24_overlap", "both", None, None, overlap, f">= {limits.min_overlap:g}",
                            overlap >= limits.min_overlap))
        d_cpc = _rel(c_cpc, o_cpc)
        checks.append(Check("cpc", "both", o_cpc, c_cpc, d_cpc, f"|rel| <= {limits.max_cpc_change:g}",
                            abs(d_cpc) <= limits.max_cpc_change))
        d_sp = _rel(c_spend, o_spend)
        checks.append(Check("expected_spend", "both", o_spend, c_spend, d_sp,
                            f"|rel| <= {limits.max_spend_change:g}", abs(d_sp) <= limits.max_spend_change))
    for t in TARGETS:
        par = getattr(challenger, t).meta.extra.get("parity")
        if not isinstance(par, dict) or "max_abs_dp" not in par:
            checks.append(Check("parity", t, None, None, None, f"max <= {limits.max_parity_dp:g}", False,
                                "no framework-vs-ONNX parity recorded in the sidecar"))
        else:
            dp = float(par["max_abs_dp"])
            p999 = float(par["p999_abs_dp"]) if "p999_abs_dp" in par else dp
            checks.append(Check("parity", t, None, None, dp,
                                f"max <= {limits.max_parity_dp:g}, p99.9 <= {limits.max_parity_p999:g}",
                                dp <= limits.max_parity_dp and p999 <= limits.max_parity_p999,
                                f"p99.9 {p999:.3g} over {par.get('rows', '?')} rows"))
    checks = [_explained(c, quality) for c in checks]
    return PromotionReport(
        challenger=challenger.versions, champion=None if champion is None else champion.versions,
        dataset_id=dataset_id, checks=checks,
        replay={"golden_queries": len(blocks), "query_size": blocks[0][1] - blocks[0][0] if blocks else 0,
                "test_rows": len(x), "runtime": "onnxruntime " + challenger.ctr.providers[0]},
    )


def find_champion(model_dir: Path, family: str | None = None) -> tuple[Path, str] | None:
    """``(directory, family)`` of the serving champion: the ``CHAMPION`` pointer's release, else the
    top-level files of ``family`` (a model dir that predates promotions), else None."""
    model_dir = Path(model_dir)
    ptr = model_dir / CHAMPION
    if ptr.exists():
        d = json.loads(ptr.read_text())
        return model_dir / str(d["path"]), str(d["family"])
    if family is not None and (model_dir / f"{family}_ctr.onnx").exists():
        return model_dir, family
    return None


def release_name(family: str, models: Models) -> str:
    """``<family>-<ctr sha[:12]>-<cvr sha[:12]>``: a release directory's name (content-addressed)."""
    return f"{family}-{models.ctr.meta.onnx_sha256[:12]}-{models.cvr.meta.onnx_sha256[:12]}"


def install_release(src: Path, names: list[str], rel_dir: Path) -> None:
    """Copy ``names`` from ``src`` into ``rel_dir`` whole or not at all (fsynced temp dir, then one
    ``os.replace``); an existing ``rel_dir`` is kept (releases are content-addressed and immutable)."""
    if rel_dir.exists():
        return
    rel_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=rel_dir.parent.parent, prefix=f".tmp-{rel_dir.name}-"))
    try:
        for n in names:
            _fsync_copy(src / n, tmp / n)
        os.replace(tmp, rel_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def model_source(model: str, runs: Path) -> Path:
    """A CLI's MODEL argument: a directory with a model pair, or the artifacts of a run id under ``runs``."""
    src = Path(model)
    if src.is_dir():
        return src
    from bidder.lifecycle.tracking import RunStore

    return RunStore(runs, clock=lambda: 0.0).get(model).artifacts


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fsync_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with dst.open("rb") as f:
        os.fsync(f.fileno())


def _replace_file(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        _fsync_copy(src, Path(tmp))
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, text.encode())


def promote(
    challenger_dir: Path,
    *,
    model_dir: Path,
    test: Any,
    dataset_id: str,
    clock: Callable[[], float],
    force: bool = False,
    reason: str = "",
    limits: Limits = Limits(),
    replay: Replay = Replay(),
    champion_family: str | None = None,
) -> PromotionReport:
    """Gate ``challenger_dir`` against the champion of ``model_dir`` and install it when it passes (or
    when forced with a reason); see the module docstring for the files and their order."""
    if force and not reason.strip():
        raise ValueError("a forced promotion needs a reason")
    challenger_dir, model_dir = Path(challenger_dir), Path(model_dir)
    family = family_in(challenger_dir)
    challenger = load_models(challenger_dir, family, "cpu", 1, 1)  # refuses bad files before anything else
    found = find_champion(model_dir, champion_family or family)
    champion = load_models(found[0], found[1], "cpu", 1, 1) if found is not None else None
    report = compare(challenger, champion, test, limits=limits, replay=replay, dataset_id=dataset_id)
    release = release_name(family, challenger)
    report.release = release
    report.decision = "promoted" if report.passed else ("forced" if force else "refused")
    report.reason = reason
    now = clock()
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
    model_dir.mkdir(parents=True, exist_ok=True)
    reports = model_dir / "reports"
    reports.mkdir(exist_ok=True)
    report_path = reports / f"{stamp}-{release}.txt"
    previous = json.loads((model_dir / CHAMPION).read_text()) if (model_dir / CHAMPION).exists() else None
    line: dict[str, Any] = {"ts": datetime.fromtimestamp(now, UTC).isoformat(), "decision": report.decision,
                            "release": release, "family": family, "versions": challenger.versions,
                            "champion": report.champion, "reason": reason, "dataset_id": dataset_id,
                            "failed_checks": [c.why() for c in report.failed],
                            "explained_checks": [c.why() for c in report.explained], "report": str(report_path.name)}
    if report.decision != "refused":
        names = [f"{family}_{t}{ext}" for t in TARGETS for ext in (".onnx", ".json")]
        rel_dir = model_dir / "releases" / release
        install_release(challenger_dir, names, rel_dir)
        load_models(rel_dir, family, "cpu", 1, 1)  # the installed copy must load before anything points at it
        _write_text(report_path.with_suffix(".json"), json.dumps(report.to_dict(), indent=1) + "\n")
        _write_text(report_path, report.render())
        for n in names:
            _replace_file(rel_dir / n, model_dir / n)
        pointer = {"release": release, "family": family, "path": f"releases/{release}",
                   "versions": challenger.versions, "sha256": {n: _sha(rel_dir / n) for n in names},
                   "promoted_at": line["ts"], "forced": report.decision == "forced", "reason": reason,
                   "failed_checks": line["failed_checks"], "dataset_id": dataset_id,
                   "report": f"reports/{report_path.name}",
                   "previous": None if previous is None else previous.get("release")}
        _write_text(model_dir / CHAMPION, json.dumps(pointer, indent=1) + "\n")
    else:
        _write_text(report_path.with_suffix(".json"), json.dumps(report.to_dict(), indent=1) + "\n")
        _write_text(report_path, report.render())
    with (model_dir / LOG).open("a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return report


def trained_on(challenger_dir: Path) -> str:
    """The frozen dataset a challenger was trained on, as its CTR sidecar records it ('' if it names none)."""
    from bidder.query.model_meta import ModelMeta

    meta = ModelMeta.load(Path(challenger_dir) / f"{family_in(challenger_dir)}_ctr.json")
    return str(meta.training.get("dataset_id", ""))
