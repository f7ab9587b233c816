"""The feature contract: what the CTR and CVR models read, in which order, and how it is gathered.

Every ``.onnx`` model ships a metadata file naming :data:`FEATURE_SPEC` (names, order, version);
loading a model whose spec differs is refused. Rows are (query, candidate) pairs; the matrix is
``(n_candidates, n_features)`` float32, built column by column from the catalog, the rolling stats
and the query context: never from per-candidate Python objects.

========================  =====================================================================
feature                   definition
========================  =====================================================================
relevance                 retrieval relevance of the candidate for the query, [0, 1]
ctr_smoothed              (clicks + m prior_ctr) / (impressions + m), decayed counters
cvr_smoothed              (conversions + m prior_ctr prior_cvr) / (clicks + m prior_ctr)
log_impressions           log1p(decayed impressions)
log_clicks                log1p(decayed clicks)
impression_recency        log1p(seconds since last impression), capped at 7 days (= never)
click_recency             log1p(seconds since last click), capped at 7 days (= never)
log_price                 log(price)
category_match            1 if the listing's category is the query's category
hour_sin, hour_cos        time of day on the circle
device_*                  one-hot device: mobile, desktop, app
page_*                    one-hot page: search, category, market
log_spend                 log1p(decayed spend on the listing)
========================  =====================================================================
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bidder.query.catalog import Catalog
from bidder.query.rolling import RollingStats

__all__ = ["DEVICES", "FEATURE_SPEC", "PAGES", "FeatureSpec", "Priors", "QueryContext", "gather"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

RECENCY_CAP_S = 7 * 86_400.0
DEVICES: tuple[str, ...] = ("mobile", "desktop", "app")
"""a query's ``device``, one-hot in ``device_*`` (the feature contract's vocabulary: queries naming another
device are rejected by ``bidder.decoding``)"""
PAGES: tuple[str, ...] = ("search", "category", "market")
"""a query's ``page``, one-hot in ``page_*``"""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Ordered, named float32 model inputs; ``version`` changes whenever meaning or order does."""

    version: int
    names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def fingerprint(self) -> str:
        """Short hash of version and names, stored in model metadata and checked at load."""
        text = f"{self.version}:" + ",".join(self.names)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "names": list(self.names),
            "dtype": "float32",
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(version=int(d["version"]), names=tuple(str(n) for n in d["names"]))

    def index(self, name: str) -> int:
        return self.names.index(name)


FEATURE_SPEC = FeatureSpec(
    version=1,
    names=(
        "relevance",
        "ctr_smoothed",
        "cvr_smoothed",
        "log_impressions",
        "log_clicks",
        "impression_recency",
        "click_recency",
        "log_price",
        "category_match",
        "hour_sin",
        "hour_cos",
        *(f"device_{d}" for d in DEVICES),
        *(f"page_{p}" for p in PAGES),
        "log_spend",
    ),
)


@dataclass(frozen=True, slots=True)
class Priors:
    """Where smoothed rates start before a listing has history."""

    prior_ctr: float = 0.02
    prior_cvr: float = 0.05
    strength: float = 50.0
    """pseudo-impressions the prior is worth"""


@dataclass(frozen=True, slots=True)
class QueryContext:
    """What the bidder knows about the search itself."""

    device: str
    page: str
    hour: int
    category: int
    """the query's category from query understanding; -1 if unknown"""


_CONTEXT_FIRST = FEATURE_SPEC.index("hour_sin")
_LOG_SPEND = FEATURE_SPEC.index("log_spend")
_CONTEXT_NAMES = ("hour_sin", "hour_cos", *(f"device_{d}" for d in DEVICES), *(f"page_{p}" for p in PAGES))
assert FEATURE_SPEC.names[:_CONTEXT_FIRST] == (
    "relevance", "ctr_smoothed", "cvr_smoothed", "log_impressions", "log_clicks", "impression_recency",
    "click_recency", "log_price", "category_match",
), "gather writes these columns by position"
assert tuple(FEATURE_SPEC.names[_CONTEXT_FIRST : _CONTEXT_FIRST + len(_CONTEXT_NAMES)]) == _CONTEXT_NAMES


@functools.lru_cache(maxsize=1024)
def _context_columns(device: str, page: str, hour: int) -> F64:
    """The features that are the same for every candidate of a query (hour, device, page), in spec
    order from ``hour_sin``; cached: a marketplace has a few hundred distinct contexts."""
    angle = 2.0 * math.pi * (hour % 24) / 24.0
    values = [math.sin(angle), math.cos(angle)]
    values += [float(device == d) for d in DEVICES] + [float(page == p) for p in PAGES]
    out: F64 = np.asarray(values, np.float64)
    out.flags.writeable = False
    return out


def gather(
    *,
    rows: I64,
    relevance: F64 | F32,
    context: QueryContext,
    catalog: Catalog,
    stats: RollingStats,
    priors: Priors,
    now: float,
    out: F32 | None = None,
) -> F32:
    """The ``(len(rows), FEATURE_SPEC.n_features)`` float32 matrix for one query's known candidates.

    ``out`` may be a preallocated buffer with at least ``len(rows)`` rows; the returned matrix is a
    view into it. Columns are computed in float64 into one contiguous ``(features, n)`` block (each
    feature a contiguous row, written in place) and cast into ``out`` with one transposing copy: a
    third of the time of writing 18 strided float32 columns one by one.
    """
    n = len(rows)
    x = np.empty((n, FEATURE_SPEC.n_features), np.float32) if out is None else out[:n]
    c = np.empty((FEATURE_SPEC.n_features, n), np.float64)
    s = stats.columns(rows, now=now)  # impressions, clicks, conversions, spend, last impression, last click
    m = priors.strength
    m_clicks = m * priors.prior_ctr
    c[0] = relevance
    np.add(s[1], m_clicks, out=c[1])
    c[1] /= s[0] + m
    np.add(s[2], m_clicks * priors.prior_cvr, out=c[2])
    c[2] /= s[1] + m_clicks
    np.log1p(s[0:2], out=c[3:5])
    recency = c[5:7]
    np.subtract(now, s[4:6], out=recency)
    np.clip(recency, 0.0, RECENCY_CAP_S, out=recency)
    np.log1p(recency, out=recency)
    np.maximum(np.take(catalog.price, rows), 1e-6, out=c[7])
    np.log(c[7], out=c[7])
    np.equal(np.take(catalog.category, rows), context.category, out=c[8])
    ctx = _context_columns(context.device, context.page, context.hour)
    c[_CONTEXT_FIRST : _CONTEXT_FIRST + len(ctx)] = ctx[:, None]
    np.log1p(s[3], out=c[_LOG_SPEND])
    x[...] = c.T
    return x
