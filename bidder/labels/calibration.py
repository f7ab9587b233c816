"""Calibration monitor: observed CTR/CVR against the mean prediction, per model version, over a sliding window.

Fed with matured labels (:mod:`bidder.labels.attribution`: an impression's label is final once it is older
than the attribution window): for CTR every impression (``p`` = pCTR served, ``y`` = clicked), for CVR
every clicked impression (``p`` = pCVR served, ``y`` = converted). Per ``(target, model version)`` the
monitor keeps sums of ``p``, ``y`` and counts in time buckets of ``bucket_s``; the window is the last
``window_s`` seconds of event time. Its ratio is the same as the scoreboard's and the promotion gate's::

    ratio = mean predicted / observed rate        (1 = calibrated; > 1 over-predicts)

An alert (:class:`CalibrationAlert`) is emitted when a series' ratio leaves ``[low, high]`` and once more
when it comes back to ``[low + hysteresis, high - hysteresis]`` (``state`` "out" / "ok"), so a ratio
hovering at a bound does not flap; a series with fewer than ``min_positives`` positives in the
window is not judged (a ratio on a handful of clicks is noise). Pure: event time comes with each update,
no I/O; :meth:`gauges` is what the worker exports as metrics. ``snapshot``/``from_snapshot`` carry the
state across a rebalance.

>>> m = CalibrationMonitor(window_s=3600.0, bucket_s=600.0, min_positives=1)
>>> alerts = m.update("ctr", "v1", p=np.full(100, 0.2), y=np.r_[np.ones(10), np.zeros(90)], now=0.0)
>>> [(a.state, round(a.ratio, 2)) for a in alerts], round(m.gauges(now=0.0)[("ctr", "v1")].ratio, 2)
([('out', 2.0)], 2.0)
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt

__all__ = ["CalibrationAlert", "CalibrationGauge", "CalibrationMonitor"]

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class CalibrationGauge:
    """One series over the current window."""

    target: str
    version: str
    n: int
    positives: float
    mean_pred: float
    observed: float
    ratio: float
    """mean_pred / observed; NaN without positives"""
    logloss: float = math.nan
    """mean log loss of the window's examples (compares versions judged on the same impressions)"""


@dataclass(frozen=True, slots=True)
class CalibrationAlert:
    """A series crossed a bound: ``state`` "out" (left ``[low, high]``) or "ok" (came back)."""

    target: str
    version: str
    state: str
    ratio: float
    low: float
    high: float
    n: int
    positives: float
    ts: float


class CalibrationMonitor:
    """Sliding-window calibration per ``(target, model version)``; see the module docstring."""

    def __init__(self, *, window_s: float = 3600.0, bucket_s: float = 60.0, low: float = 0.95,
                 high: float = 1.05, min_positives: int = 50, hysteresis: float = 0.01) -> None:
        if not 0 < bucket_s <= window_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        if not 0 < low < 1 < high:
            raise ValueError("need 0 < low < 1 < high")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.low = low
        self.high = high
        self.min_positives = min_positives
        self.hysteresis = hysteresis
        self._buckets: dict[Key, dict[int, list[float]]] = defaultdict(dict)  # bucket -> [n, sum_p, sum_y]
        self._out: dict[Key, bool] = {}

    def _evict(self, key: Key, now: float) -> None:
        oldest = math.floor((now - self.window_s) / self.bucket_s) + 1
        b = self._buckets[key]
        for k in [k for k in b if k < oldest]:
            del b[k]

    def update(self, target: str, version: str, *, p: npt.ArrayLike, y: npt.ArrayLike,
               now: float) -> list[CalibrationAlert]:
        """Add matured examples (event time ``now``); returns the alerts this update caused."""
        pp = np.asarray(p, np.float64).ravel()
        yy = np.asarray(y, np.float64).ravel()
        if len(pp) != len(yy):
            raise ValueError(f"p and y differ in length: {len(pp)} vs {len(yy)}")
        key = (target, version)
        if len(pp):
            cell = self._buckets[key].setdefault(math.floor(now / self.bucket_s), [0.0, 0.0, 0.0, 0.0])
            cell[0] += len(pp)
            cell[1] += float(pp.sum())
            cell[2] += float(yy.sum())
            q = np.clip(pp, 1e-7, 1 - 1e-7)
            cell[3] += float(-(yy * np.log(q) + (1 - yy) * np.log1p(-q)).sum())
        return self._judge(key, now)

    def _gauge(self, key: Key, now: float) -> CalibrationGauge:
        self._evict(key, now)
        n = sp = sy = sl = 0.0
        for c in self._buckets[key].values():
            n, sp, sy, sl = n + c[0], sp + c[1], sy + c[2], sl + c[3]
        mean_p = sp / n if n else math.nan
        obs = sy / n if n else math.nan
        return CalibrationGauge(key[0], key[1], int(n), sy, mean_p, obs, mean_p / obs if sy > 0 else math.nan,
                                sl / n if n else math.nan)

    def _judge(self, key: Key, now: float) -> list[CalibrationAlert]:
        g = self._gauge(key, now)
        if g.positives < self.min_positives or not math.isfinite(g.ratio):
            return []
        was_out = self._out.get(key, False)
        h = self.hysteresis if was_out else 0.0
        out = not self.low + h <= g.ratio <= self.high - h
        if out == was_out:
            return []
        self._out[key] = out
        return [CalibrationAlert(key[0], key[1], "out" if out else "ok", g.ratio, self.low, self.high, g.n,
                                 g.positives, now)]

    def gauges(self, *, now: float) -> dict[Key, CalibrationGauge]:
        """Every series over the window ending at ``now``."""
        return {k: self._gauge(k, now) for k in list(self._buckets)}

    @property
    def alerting(self) -> list[Key]:
        """Series currently out of bounds."""
        return [k for k, v in self._out.items() if v]

    def snapshot(self) -> dict[str, Any]:
        return {"settings": {"window_s": self.window_s, "bucket_s": self.bucket_s, "low": self.low,
                             "high": self.high, "min_positives": self.min_positives,
                             "hysteresis": self.hysteresis},
                "series": [{"target": t, "version": v, "out": self._out.get((t, v), False),
                            "buckets": {str(b): c for b, c in bk.items()}} for (t, v), bk in self._buckets.items()]}

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> Self:
        m = cls(**snap["settings"])
        for s in snap["series"]:
            key = (str(s["target"]), str(s["version"]))
            m._buckets[key] = {int(b): [*(float(v) for v in c), 0.0, 0.0, 0.0, 0.0][:4]
                               for b, c in s["buckets"].items()}
            m._out[key] = bool(s["out"])
        return m
