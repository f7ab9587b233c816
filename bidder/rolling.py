"""Per-listing rolling counters with exponential time decay, stored as columns.

Each counter ``c`` decays with half-life ``h``: read at time ``t`` it is
``c(t) = c(t0) * 2 ** (-(t - t0) / h)`` where ``t0`` is its last update. Updates decay the stored
value to the event time first, then add. Events that arrive late (``t < t0``) are decayed to ``t0``
and added there, so the counters never move backwards in time and the order of updates within one
decay step does not matter.

The smoothed rates the models read shrink toward a prior with ``m`` pseudo-impressions:
``ctr = (clicks + m * prior_ctr) / (impressions + m)``, ``cvr = (conversions + m' * prior_cvr) /
(clicks + m')`` with ``m' = m * prior_ctr`` (the pseudo-clicks the prior implies).

>>> s = RollingStats(half_life_s=10.0)
>>> s.record(np.array([0]), kind="impressions", now=0.0)
>>> round(float(s.view(np.array([0]), now=10.0).impressions[0]), 3)
0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["COUNTERS", "RollingStats", "StatsView"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Counter = Literal["impressions", "clicks", "conversions", "spend"]
COUNTERS: tuple[Counter, ...] = ("impressions", "clicks", "conversions", "spend")
NEVER = -np.inf


@dataclass(frozen=True, slots=True)
class StatsView:
    """Decayed counters of some rows at one instant."""

    impressions: F64
    clicks: F64
    conversions: F64
    spend: F64
    last_impression_at: F64
    """epoch seconds, ``-inf`` if never"""
    last_click_at: F64


class RollingStats:
    """Time-decayed impressions, clicks, conversions and spend per listing row."""

    def __init__(self, *, half_life_s: float, capacity: int = 1024) -> None:
        self.half_life_s = half_life_s
        self._values = np.zeros((len(COUNTERS), capacity), np.float64)
        self._updated_at = np.full(capacity, NEVER, np.float64)
        self._last_impression_at = np.full(capacity, NEVER, np.float64)
        self._last_click_at = np.full(capacity, NEVER, np.float64)

    @property
    def capacity(self) -> int:
        return int(self._values.shape[1])

    def _ensure(self, max_row: int) -> None:
        if max_row < self.capacity:
            return
        size = max(2 * self.capacity, max_row + 1)
        values = np.zeros((len(COUNTERS), size), np.float64)
        values[:, : self.capacity] = self._values
        self._values = values
        for name in ("_updated_at", "_last_impression_at", "_last_click_at"):
            old = getattr(self, name)
            new = np.full(size, NEVER, np.float64)
            new[: len(old)] = old
            setattr(self, name, new)

    def _decay(self, rows: I64, now: F64 | float) -> F64:
        dt = np.maximum(np.asarray(now, np.float64) - self._updated_at[rows], 0.0)
        factor: F64 = np.where(np.isfinite(dt), np.exp2(-dt / self.half_life_s), 0.0)
        return factor

    def record(
        self, rows: I64, *, kind: Counter, now: float | F64, amount: float | F64 = 1.0
    ) -> None:
        """Add ``amount`` of ``kind`` to each row (rows may repeat) at time ``now``."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return
        self._ensure(int(rows.max()))
        t = np.broadcast_to(np.asarray(now, np.float64), rows.shape)
        # bring each touched row forward to its newest event time (never backwards), then add
        uniq, inv = np.unique(rows, return_inverse=True)
        t_max = np.full(len(uniq), NEVER)
        np.maximum.at(t_max, inv, t)
        t_row = np.maximum(self._updated_at[uniq], t_max)
        self._values[:, uniq] *= self._decay(uniq, t_row)
        self._updated_at[uniq] = t_row
        # an amount that happened before the row's time is decayed by how late it is
        late = np.exp2(-(t_row[inv] - t) / self.half_life_s)
        np.add.at(self._values[COUNTERS.index(kind)], rows, np.asarray(amount, np.float64) * late)
        if kind == "impressions":
            np.maximum.at(self._last_impression_at, rows, t)
        elif kind == "clicks":
            np.maximum.at(self._last_click_at, rows, t)

    def view(self, rows: I64, *, now: float) -> StatsView:
        """Counters of ``rows`` decayed to ``now`` (rows beyond capacity read as never seen)."""
        rows = np.asarray(rows, np.int64)
        self._ensure(int(rows.max()) if len(rows) else 0)
        f = self._decay(rows, now)
        v = self._values[:, rows] * f
        return StatsView(
            impressions=v[0],
            clicks=v[1],
            conversions=v[2],
            spend=v[3],
            last_impression_at=self._last_impression_at[rows],
            last_click_at=self._last_click_at[rows],
        )

    def snapshot(self) -> dict[str, list[float]]:
        """Plain-data copy of the state (for changelogs and tests)."""
        return {
            "values": self._values.ravel().tolist(),
            "updated_at": self._updated_at.tolist(),
            "last_impression_at": self._last_impression_at.tolist(),
            "last_click_at": self._last_click_at.tolist(),
        }

    @classmethod
    def from_snapshot(cls, snap: dict[str, list[float]], *, half_life_s: float) -> RollingStats:
        out = cls(half_life_s=half_life_s, capacity=len(snap["updated_at"]))
        out._values = np.asarray(snap["values"], np.float64).reshape(len(COUNTERS), -1)
        out._updated_at = np.asarray(snap["updated_at"], np.float64)
        out._last_impression_at = np.asarray(snap["last_impression_at"], np.float64)
        out._last_click_at = np.asarray(snap["last_click_at"], np.float64)
        return out
