"""The marketplace's past as rolling state: what a deployment restores before it serves.

A worker's rolling features (impressions, clicks, conversions, spend, recency per listing) are the fold of
past auctions, ledger lines and conversions. A new deployment on a new cluster has none of those records,
so its features are colder than anything the models were trained on, and the drift monitor rightly
alarms. :class:`ListingHistory` is that fold, computed elsewhere (the offline world that trains the
shipped models, ``onnx_models/traffic.py``) and written as one record per listing to the compacted
``listing-history`` topic (``bidder simulate --history``); every worker's replica merges it into its
:class:`~bidder.query.rolling.RollingStats` (additive, so it does not matter whether it is read before or after
the live records that follow it).

Times are relative: a history holds counters decayed to its end and last-seen ages, and is placed at any
``end`` when it is written (the past ends when live traffic starts).

>>> from bidder.query.rolling import RollingStats
>>> s = RollingStats(half_life_s=3600.0, capacity=4)
>>> s.record(np.array([0, 0, 2]), kind="impressions", now=100.0)
>>> h = ListingHistory.from_stats(s, listing_ids=np.array([103, 203, 303, 403]), end=3700.0, span_s=3600.0)
>>> [(r["listing_id"], round(r["impressions"], 3)) for r in h.records(end=0.0)]
[(103, 1.0), (303, 0.5)]
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bidder.query.rolling import COUNTERS, RollingStats

__all__ = ["HISTORY_FILE", "HISTORY_TOPIC", "ListingHistory", "merge_record", "shipped_history", "world_key"]

HISTORY_TOPIC = "listing-history"
HISTORY_FILE = "history.npz"
"""beside the shipped models: the offline world's rolling state where their training traffic ended"""

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ListingHistory:
    """Per listing: rolling counters decayed to the history's end, and how long before it each was last seen."""

    listing_ids: I64
    counters: F64
    """``(4, n)`` impressions, clicks, conversions, spend, decayed to the end"""
    impression_age_s: F64
    """seconds from the last impression to the end (inf: never shown)"""
    click_age_s: F64
    span_s: float
    """how far back the history reaches"""
    half_life_s: float
    """the decay the counters were folded with; a worker with another half-life cannot use them"""
    world: str = ""
    """which world this is the past of (:func:`world_key`)"""

    @classmethod
    def from_stats(cls, stats: RollingStats, *, listing_ids: I64, end: float, span_s: float,
                   world: str = "") -> ListingHistory:
        """The state of ``stats`` at ``end``; row ``i`` of ``stats`` is listing ``listing_ids[i]``."""
        rows = np.arange(len(listing_ids), dtype=np.int64)
        cols = stats.columns(rows, now=end)
        return cls(
            listing_ids=np.asarray(listing_ids, np.int64),
            counters=np.ascontiguousarray(cols[: len(COUNTERS)], dtype=np.float64),
            impression_age_s=end - cols[4],
            click_age_s=end - cols[5],
            span_s=float(span_s),
            half_life_s=stats.half_life_s,
            world=world,
        )

    @property
    def n_seen(self) -> int:
        """Listings with any history (the rest have no record)."""
        return int(np.count_nonzero(self._seen()))

    def _seen(self) -> npt.NDArray[np.bool_]:
        seen: npt.NDArray[np.bool_] = np.isfinite(self.impression_age_s) | (self.counters.sum(axis=0) > 0)
        return seen

    def records(self, *, end: float) -> Iterator[dict[str, Any]]:
        """One ``listing-history`` record per listing with any history, the past ending at ``end``."""
        start = end - self.span_s
        for i in np.flatnonzero(self._seen()).tolist():
            imp, clk = float(self.impression_age_s[i]), float(self.click_age_s[i])
            yield {
                "listing_id": int(self.listing_ids[i]),
                **{k: float(self.counters[j, i]) for j, k in enumerate(COUNTERS)},
                "at": end,
                "last_impression": end - imp if math.isfinite(imp) else None,
                "last_click": end - clk if math.isfinite(clk) else None,
                "history_from": start,
                "half_life_s": self.half_life_s,
            }

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(
            buf, listing_ids=self.listing_ids, counters=self.counters.astype(np.float32),
            impression_age_s=self.impression_age_s.astype(np.float32), click_age_s=self.click_age_s.astype(np.float32),
            span_s=np.float64(self.span_s), half_life_s=np.float64(self.half_life_s), world=np.str_(self.world),
        )
        path.write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> ListingHistory:
        with np.load(path) as z:
            return cls(
                listing_ids=z["listing_ids"].astype(np.int64),
                counters=z["counters"].astype(np.float64),
                impression_age_s=z["impression_age_s"].astype(np.float64),
                click_age_s=z["click_age_s"].astype(np.float64),
                span_s=float(z["span_s"]),
                half_life_s=float(z["half_life_s"]),
                world=str(z["world"]),
            )


def shipped_history(model_dir: Path, *, world: str) -> ListingHistory | None:
    """The history shipped beside the models in ``model_dir`` if it is the past of ``world``, else None."""
    path = model_dir / HISTORY_FILE
    if not path.exists():
        return None
    history = ListingHistory.load(path)
    return history if history.world == world else None


def world_key(config: object, seed: int) -> str:
    """Names a seeded world (its config's repr and seed): a history only fits the world it came from."""
    return f"seed={seed} {config!r}"


def merge_record(stats: RollingStats, row: int, record: dict[str, Any]) -> None:
    """Fold one ``listing-history`` record into ``stats`` at ``row``."""
    last_imp, last_clk = record.get("last_impression"), record.get("last_click")
    stats.merge(
        np.array([row], np.int64),
        counters=np.array([[float(record[k])] for k in COUNTERS], np.float64),
        at=np.array([float(record["at"])]),
        last_impression=np.array([-math.inf if last_imp is None else float(last_imp)]),
        last_click=np.array([-math.inf if last_clk is None else float(last_clk)]),
    )
