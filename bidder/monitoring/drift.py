"""Feature drift: live windows of served feature vectors and model outputs judged against references.

The monitor samples served ``(n, d)`` feature rows at ``sample_rate`` (an injected generator decides
which), keeps the last ``window`` sampled rows in a ring buffer (one per model input, one for the model
outputs ``pctr``/``pcvr``), and every ``eval_every`` new sampled rows, once ``min_count`` are held,
computes per column against its :class:`~bidder.monitoring.profile.FeatureProfile`:

- **psi**, population stability index over the reference's quantile bins (first and last bins open):
  ``sum((a - e) * ln(a / e))`` with live shares ``a`` and reference shares ``e`` floored at 1e-4.
  Rule of thumb: < 0.1 stable, 0.1-0.25 moving, > 0.25 shifted.
- **js**, Jensen-Shannon *distance* (square root of the divergence, base 2, in [0, 1]) over the same bins.
- **scale**, ``(q99 - q01)`` live over reference: a location-free spread ratio, so a column that is
  multiplied by ``k`` reads ``k`` whatever its median or sign (a median ratio is useless for features
  centred on 0 or negative). It fires as soon as ~2% of the window is scaled, because the high (or low)
  quantile moves first. Columns whose reference spread is ~0 (constants) are not judged.
- **mean**, ``(live mean - reference mean) / reference std`` over finite values: a standardized
  mean shift. It sees a shift that moves values *within* their reference bins (a one-hot column
  shifted by half a unit keeps every value in its own bin, so PSI/JS stay flat).
- **missing**, the share of NaN/inf values in the window; it fires when it exceeds the reference
  missing rate by ``missing_threshold``.

Bins, quantiles and means ignore missing values: PSI/JS/scale/mean see finite values only.

Alerts are episodes with hysteresis: one ``alert`` event when a (column, statistic) crosses its
threshold, one ``recovered`` event when it falls below ``threshold * recover_ratio`` (for scale:
``|ln ratio| < ln(scale_factor) * recover_ratio``). ``seasonal`` columns follow the clock (a
minutes-long window of ``hour_sin`` is one point of the training day), so only missing values and an
upward scale are judged for them, the scale as a magnitude ratio ``max(|q01|, |q99|)`` live over
reference (their live spread is ~0); their other statistics are still computed for gauges.

Rows of one query share per-query features (device, page, hour); the window must span many queries
for those to be judged fairly: the defaults (1% of 600 candidates -> ~6 rows a query, 5,000 rows)
span ~800 queries.

>>> from bidder.monitoring.profile import FeatureProfile
>>> rng = np.random.default_rng(0)
>>> ref = FeatureProfile.from_values("x", rng.normal(3.0, 1.0, 20_000))
>>> mon = DriftMonitor((ref,), settings=DriftSettings(sample_rate=1.0, window=1000, min_count=500),
...                    rng=np.random.default_rng(1), model_version="m1")
>>> mon.update(rng.normal(3.0, 1.0, (2000, 1)).astype(np.float32), None, now=0.0)
[]
>>> [(e.kind, e.feature, e.statistic) for e in
...  mon.update(10 * rng.normal(3.0, 1.0, (2000, 1)).astype(np.float32), None, now=1.0)]
[('alert', 'x', 'psi'), ('alert', 'x', 'js'), ('alert', 'x', 'scale'), ('alert', 'x', 'mean')]
"""

from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bidder.monitoring.profile import FeatureProfile

__all__ = [
    "PREDICTION_NAMES",
    "STATISTICS",
    "ColumnDrift",
    "DriftEvent",
    "DriftMonitor",
    "DriftSettings",
    "column_drift",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Statistic = Literal["psi", "js", "scale", "mean", "missing"]
Source = Literal["feature", "prediction"]
STATISTICS: tuple[Statistic, ...] = ("psi", "js", "scale", "mean", "missing")
PREDICTION_NAMES: tuple[str, ...] = ("pctr", "pcvr")
_EPS = 1e-4
_NAN = float("nan")


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """Knobs of the drift monitor (mapped one-to-one onto ``BIDDER_DRIFT_*``)."""

    sample_rate: float = 0.01
    """share of served candidate rows copied into the window (1% of 600 -> ~6 rows a query)"""
    window: int = 5000
    """sampled rows kept per window (ring buffer); ~800 queries at the defaults"""
    min_count: int = 2000
    """sampled rows held before anything is judged"""
    min_finite: int = 200
    """finite values a column needs before PSI/JS/scale are judged"""
    eval_every: int = 50
    """new sampled rows between two evaluations (an evaluation sorts the window)"""
    psi_threshold: float = 0.25
    js_threshold: float = 0.2
    """Jensen-Shannon distance, base 2"""
    scale_factor: float = 5.0
    """spread ratio beyond which (either direction) the scale detector fires"""
    mean_threshold: float = 0.5
    """|standardized mean shift| (in reference standard deviations) that fires"""
    missing_threshold: float = 0.05
    """missing share above the reference's missing rate that fires"""
    recover_ratio: float = 0.5
    """an alert clears below ``threshold * recover_ratio`` (hysteresis)"""
    seasonal: tuple[str, ...] = ("hour_sin", "hour_cos")
    """columns that follow the clock: judged for missing values and upward scale only"""

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not 1 <= self.min_count <= self.window:
            raise ValueError(f"need 1 <= min_count <= window, got {self.min_count}, {self.window}")
        if self.eval_every < 1 or self.min_finite < 1:
            raise ValueError("eval_every and min_finite must be >= 1")
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {self.scale_factor}")
        if not 0.0 < self.recover_ratio <= 1.0:
            raise ValueError(f"recover_ratio must be in (0, 1], got {self.recover_ratio}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seasonal"] = list(self.seasonal)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftSettings:
        return cls(**{**d, "seasonal": tuple(d.get("seasonal", ()))})


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """One alert episode boundary, as sent to the ``drift-alerts`` topic."""

    kind: Literal["alert", "recovered"]
    feature: str
    """model input name, or ``pctr``/``pcvr`` when ``source == "prediction"``"""
    statistic: Statistic
    value: float
    """the statistic when the episode started or cleared"""
    threshold: float
    """the bound that was crossed (alert) or undershot (recovered)"""
    window: int
    """sampled rows the statistic was computed over"""
    window_s: float
    """seconds between the oldest and the newest row of the window"""
    model_version: str
    ts: float
    """epoch seconds of the update that produced the event"""
    source: Source = "feature"
    warm_up: bool = False
    """the episode opened while the worker's rolling features were still warming up (their history
    shorter than ``BIDDER_WARM_HISTORY_S``): the served features really differ from training then"""

    def to_dict(self) -> dict[str, Any]:
        return {"type": "drift", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftEvent:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def describe(self) -> str:
        """A one-line log message.

        >>> DriftEvent("alert", "relevance", "scale", 9.71, 5.0, 5000, 812.0, "mlp-3", 1.0).describe()
        'drift alert: feature relevance scale=9.71 (threshold 5) over 5000 rows/812s, model mlp-3'
        """
        return (
            f"drift {self.kind}: {self.source} {self.feature} {self.statistic}={self.value:.3g} "
            f"(threshold {self.threshold:.3g}) over {self.window} rows/{self.window_s:.0f}s, "
            f"model {self.model_version}" + (" (opened during warm-up)" if self.warm_up else "")
        )


@dataclass(frozen=True, slots=True)
class ColumnDrift:
    """Current statistics of one monitored column (NaN until computable)."""

    psi: float = _NAN
    js: float = _NAN
    scale: float = _NAN
    mean: float = _NAN
    missing: float = _NAN
    n: int = 0
    """rows in the window"""
    n_finite: int = 0

    def get(self, statistic: Statistic) -> float:
        return float(getattr(self, statistic))


def _quantile(sorted_finite: F32 | F64, q: float) -> float:
    """Linear-interpolated quantile of an ascending array (numpy's default method)."""
    pos = q * (len(sorted_finite) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_finite) - 1)
    frac = pos - lo
    return float(sorted_finite[lo]) * (1.0 - frac) + float(sorted_finite[hi]) * frac


def column_drift(
    sorted_col: F32 | F64, profile: FeatureProfile, *, min_finite: int = 1, seasonal: bool = False
) -> ColumnDrift:
    """PSI, JS distance, spread ratio, standardized mean shift and missing share of one window column.

    ``sorted_col`` is the window's values sorted ascending with missing values as trailing NaNs.
    ``seasonal`` columns (a short window sees one point of their cycle, spread ~0) get a magnitude
    ratio instead of a spread ratio: ``max(|q01|, |q99|)`` live over reference.

    >>> ref = FeatureProfile.from_values("x", np.arange(1000.0))
    >>> d = column_drift(np.sort(np.arange(1000.0) * 10), ref)
    >>> round(d.scale, 2), round(d.psi, 2) > 0.25, round(d.mean, 1), d.missing
    (10.0, True, 15.6, 0.0)
    """
    n = len(sorted_col)
    k = n - int(np.count_nonzero(np.isnan(sorted_col)))
    missing = (n - k) / n if n else _NAN
    if k < min_finite or k == 0:
        return ColumnDrift(missing=missing, n=n, n_finite=k)
    fin = sorted_col[:k]
    edges = np.asarray(profile.edges, np.float64)
    # values below the first edge count in the first bin, at or above the last in the last bin
    cum = np.searchsorted(fin, edges[1:-1], side="left")
    counts = np.diff(np.concatenate([[0], cum, [k]])).astype(np.float64)
    a = counts / k
    e = np.asarray(profile.fractions, np.float64)
    a_f, e_f = np.maximum(a, _EPS), np.maximum(e, _EPS)
    psi = float(np.sum((a_f - e_f) * np.log(a_f / e_f)))
    m = 0.5 * (a + e)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_a = np.where(a > 0, a * np.log2(a / m), 0.0)
        kl_e = np.where(e > 0, e * np.log2(e / m), 0.0)
    js = math.sqrt(max(0.0, 0.5 * float(kl_a.sum() + kl_e.sum())))
    lo, hi = _quantile(fin, 0.01), _quantile(fin, 0.99)
    if seasonal:
        ref_size, size = max(abs(profile.q01), abs(profile.q99)), max(abs(lo), abs(hi))
    else:
        ref_size, size = profile.q99 - profile.q01, hi - lo
    degenerate = ref_size <= 1e-6 * max(1.0, abs(profile.q01), abs(profile.q99))
    scale = _NAN if degenerate else size / ref_size
    if profile.std <= 1e-9 * max(1.0, abs(profile.mean)):
        mean = _NAN
    else:
        mean = (float(fin.mean(dtype=np.float64)) - profile.mean) / profile.std
    return ColumnDrift(psi=psi, js=js, scale=scale, mean=mean, missing=missing, n=n, n_finite=k)


@dataclass(slots=True)
class _Window:
    """Ring buffer of the last ``size`` sampled rows of some columns, stored column-major."""

    names: tuple[str, ...]
    size: int
    values: F32 = field(init=False)
    ts: F64 = field(init=False)
    pos: int = 0
    count: int = 0
    since_eval: int = 0

    def __post_init__(self) -> None:
        self.values = np.full((len(self.names), self.size), np.nan, np.float32)
        self.ts = np.zeros(self.size, np.float64)

    def push(self, rows: F32, now: float) -> None:
        """Append ``(k, len(names))`` rows (non-finite values are stored as NaN)."""
        rows = rows[-self.size :]
        k = len(rows)
        if k == 0:
            return
        idx = (self.pos + np.arange(k)) % self.size
        self.values[:, idx] = np.where(np.isfinite(rows), rows, np.float32(np.nan)).T
        self.ts[idx] = now
        self.pos = int((self.pos + k) % self.size)
        self.count = min(self.count + k, self.size)
        self.since_eval += k

    def span_s(self, now: float) -> float:
        oldest = self.ts[self.pos] if self.count == self.size else self.ts[0]
        return float(now - oldest) if self.count else 0.0

    def sorted(self) -> F32:
        out: F32 = np.sort(self.values[:, : self.count], axis=1)
        return out


class DriftMonitor:
    """Sliding-window drift detectors over served features and model outputs of one model version.

    ``references`` are the model's input profiles in feature-spec order; ``prediction_references``
    profile its outputs (named ``pctr``/``pcvr`` by convention, matched by ``FeatureProfile.name``
    against the keys of ``preds``).
    """

    def __init__(
        self,
        references: tuple[FeatureProfile, ...],
        prediction_references: tuple[FeatureProfile, ...] = (),
        *,
        settings: DriftSettings | None = None,
        rng: np.random.Generator,
        model_version: str = "",
    ) -> None:
        self.references = references
        self.prediction_references = prediction_references
        self.settings = settings or DriftSettings()
        self.rng = rng
        self.model_version = model_version
        s = self.settings
        self._features = _Window(tuple(p.name for p in references), s.window)
        self._preds = _Window(tuple(p.name for p in prediction_references), s.window)
        self._stats: dict[str, ColumnDrift] = {}
        self._alerting: set[tuple[str, Statistic]] = set()
        self._n_seen = 0
        self._n_sampled = 0

    # --- reading ------------------------------------------------------------------------------------
    @property
    def statistics(self) -> dict[str, ColumnDrift]:
        """Latest statistics per column (features, then predictions); empty before the first judgement."""
        return dict(self._stats)

    @property
    def alerting(self) -> frozenset[tuple[str, Statistic]]:
        """(column, statistic) pairs inside an alert episode now."""
        return frozenset(self._alerting)

    @property
    def n_seen(self) -> int:
        """served rows offered to the monitor"""
        return self._n_seen

    @property
    def n_sampled(self) -> int:
        return self._n_sampled

    def gauges(self) -> dict[str, dict[str, float]]:
        """``{column: {statistic: value}}`` for Prometheus gauges (NaN until computable)."""
        return {name: {st: d.get(st) for st in STATISTICS} for name, d in self._stats.items()}

    def live_values(self, name: str) -> F32:
        """Finite values of one column in the current window (a copy, in arrival order)."""
        for w in (self._features, self._preds):
            if name in w.names:
                col = w.values[w.names.index(name), : w.count]
                out: F32 = col[np.isfinite(col)].copy()
                return out
        raise KeyError(name)

    # --- learning -----------------------------------------------------------------------------------
    def update(self, x: F32, preds: dict[str, F32] | None, now: float) -> list[DriftEvent]:
        """Offer one batch of served rows (and their model outputs); returns the episode events."""
        n = len(x)
        if x.ndim != 2 or x.shape[1] != len(self.references):
            raise ValueError(f"expected (n, {len(self.references)}) features, got {x.shape}")
        self._n_seen += n
        rate = self.settings.sample_rate
        take = np.arange(n) if rate >= 1.0 else np.flatnonzero(self.rng.random(n) < rate)
        self._n_sampled += len(take)
        self._features.push(np.asarray(x[take], np.float32), now)
        if preds is not None and self._preds.names:
            cols = [np.asarray(preds[p], np.float32)[take] for p in self._preds.names]
            self._preds.push(np.stack(cols, axis=1), now)
        events = self._judge(self._features, self.references, "feature", now)
        events += self._judge(self._preds, self.prediction_references, "prediction", now)
        return events

    def _judge(
        self, w: _Window, refs: tuple[FeatureProfile, ...], source: Source, now: float
    ) -> list[DriftEvent]:
        s = self.settings
        if w.count < s.min_count or w.since_eval < s.eval_every or not refs:
            return []
        w.since_eval = 0
        srt = w.sorted()
        span = w.span_s(now)
        events: list[DriftEvent] = []
        for j, ref in enumerate(refs):
            seasonal = source == "feature" and ref.name in s.seasonal
            d = column_drift(srt[j], ref, min_finite=s.min_finite, seasonal=seasonal)
            self._stats[ref.name] = d
            for st in STATISTICS:
                ev = self._episode(ref, st, d.get(st), source)
                if ev is not None:
                    kind, threshold = ev
                    events.append(
                        DriftEvent(
                            kind=kind,
                            feature=ref.name,
                            statistic=st,
                            value=d.get(st),
                            threshold=threshold,
                            window=w.count,
                            window_s=span,
                            model_version=self.model_version,
                            ts=now,
                            source=source,
                        )
                    )
        return events

    def _episode(
        self, ref: FeatureProfile, st: Statistic, v: float, source: Source
    ) -> tuple[Literal["alert", "recovered"], float] | None:
        """Alert/recover decision for one statistic with hysteresis; None when nothing changes."""
        if math.isnan(v):
            return None
        s = self.settings
        seasonal = source == "feature" and ref.name in s.seasonal
        key = (ref.name, st)
        if st == "scale":
            bound = math.log(s.scale_factor)
            lr = math.log(max(v, 1e-12))
            if seasonal:
                lr = max(lr, 0.0)
            over, clear = abs(lr) > bound, abs(lr) < bound * s.recover_ratio
            threshold = s.scale_factor if lr >= 0 else 1.0 / s.scale_factor
            recovered_at = math.exp(math.copysign(bound * s.recover_ratio, lr))
        elif st == "missing":
            over = v > ref.missing_rate + s.missing_threshold
            clear = v < ref.missing_rate + s.missing_threshold * s.recover_ratio
            threshold = ref.missing_rate + s.missing_threshold
            recovered_at = ref.missing_rate + s.missing_threshold * s.recover_ratio
        elif st == "mean":
            if seasonal:
                return None
            t = s.mean_threshold
            over, clear = abs(v) > t, abs(v) < t * s.recover_ratio
            threshold = math.copysign(t, v)
            recovered_at = math.copysign(t * s.recover_ratio, v)
        else:
            if seasonal:
                return None
            t = s.psi_threshold if st == "psi" else s.js_threshold
            over, clear, threshold, recovered_at = v > t, v < t * s.recover_ratio, t, t * s.recover_ratio
        if key not in self._alerting and over:
            self._alerting.add(key)
            return "alert", threshold
        if key in self._alerting and clear:
            self._alerting.discard(key)
            return "recovered", recovered_at
        return None

    # --- state --------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain-data state (JSON-friendly; windows as base64 bytes); the generator is the caller's
        and is not included. The windows refill in minutes, so a worker may also start empty."""

        def win(w: _Window) -> dict[str, Any]:
            return {
                # little-endian float32/float64 bytes, base64: a 5000-row window is ~0.5 MB, not 1.4
                "values": base64.b64encode(w.values.astype("<f4").tobytes()).decode(),
                "ts": base64.b64encode(w.ts.astype("<f8").tobytes()).decode(),
                "pos": w.pos,
                "count": w.count,
                "since_eval": w.since_eval,
            }

        return {
            "settings": self.settings.to_dict(),
            "model_version": self.model_version,
            "references": [p.to_dict() for p in self.references],
            "prediction_references": [p.to_dict() for p in self.prediction_references],
            "features": win(self._features),
            "predictions": win(self._preds),
            # NaN is not JSON: unknown statistics travel as null
            "statistics": {
                k: {f: (None if isinstance(v, float) and math.isnan(v) else v) for f, v in asdict(d).items()}
                for k, d in self._stats.items()
            },
            "alerting": sorted([list(k) for k in self._alerting]),
            "n_seen": self._n_seen,
            "n_sampled": self._n_sampled,
        }

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any], *, rng: np.random.Generator) -> DriftMonitor:
        out = cls(
            tuple(FeatureProfile.from_dict(p) for p in snap["references"]),
            tuple(FeatureProfile.from_dict(p) for p in snap["prediction_references"]),
            settings=DriftSettings.from_dict(snap["settings"]),
            rng=rng,
            model_version=str(snap["model_version"]),
        )
        for w, d in ((out._features, snap["features"]), (out._preds, snap["predictions"])):
            values = np.frombuffer(base64.b64decode(d["values"]), "<f4")
            w.values = values.astype(np.float32).reshape(len(w.names), w.size)
            w.ts = np.frombuffer(base64.b64decode(d["ts"]), "<f8").astype(np.float64)
            w.pos, w.count, w.since_eval = int(d["pos"]), int(d["count"]), int(d["since_eval"])

        def num(v: Any) -> float:
            return _NAN if v is None else float(v)

        out._stats = {
            k: ColumnDrift(
                psi=num(d["psi"]),
                js=num(d["js"]),
                scale=num(d["scale"]),
                mean=num(d["mean"]),
                missing=num(d["missing"]),
                n=int(d["n"]),
                n_finite=int(d["n_finite"]),
            )
            for k, d in snap["statistics"].items()
        }
        out._alerting = {(str(a), b) for a, b in snap["alerting"]}
        out._n_seen, out._n_sampled = int(snap["n_seen"]), int(snap["n_sampled"])
        return out
