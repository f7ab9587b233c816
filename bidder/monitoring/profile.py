"""Reference distribution of one feature (or one model output), as stored in model metadata.

A profile keeps quantile bin edges fitted on the training data and the share of training values in
each bin, plus summary statistics. Drift detectors compare live windows against it: population
stability index and Jensen-Shannon distance over the same bins, ratio of medians/high quantiles, and
the missing (NaN) rate. Features with few distinct values (flags, one-hots) get one bin per value.

>>> p = FeatureProfile.from_values("x", np.arange(100, dtype=np.float32))
>>> len(p.edges) - 1 == len(p.fractions), round(p.median, 1), p.missing_rate
(True, 49.5, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureProfile", "bin_counts", "profile_matrix"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    """Training-time distribution of one column."""

    name: str
    edges: tuple[float, ...]
    """increasing bin edges; the first and last bins are open to -inf / +inf when binning live data"""
    fractions: tuple[float, ...]
    """share of non-missing training values per bin (sums to 1)"""
    mean: float
    median: float
    std: float
    q01: float
    q99: float
    missing_rate: float
    n: int

    @classmethod
    def from_values(cls, name: str, values: npt.ArrayLike, *, n_bins: int = 10) -> FeatureProfile:
        v = np.asarray(values, np.float64).ravel()
        finite = v[np.isfinite(v)]
        missing = 1.0 - len(finite) / max(len(v), 1)
        if len(finite) == 0:
            return cls(name, (0.0, 1.0), (1.0,), 0.0, 0.0, 0.0, 0.0, 0.0, missing, len(v))
        distinct = np.unique(finite)
        if len(distinct) <= n_bins:
            # one bin per value: edges halfway between neighbours
            mids = (distinct[1:] + distinct[:-1]) / 2.0
            edges = np.concatenate([[distinct[0] - 0.5], mids, [distinct[-1] + 0.5]])
        else:
            edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, n_bins + 1)))
        counts = bin_counts(finite, edges)
        return cls(
            name=name,
            edges=tuple(float(e) for e in edges),
            fractions=tuple(float(c) for c in counts / counts.sum()),
            mean=float(finite.mean()),
            median=float(np.median(finite)),
            std=float(finite.std()),
            q01=float(np.quantile(finite, 0.01)),
            q99=float(np.quantile(finite, 0.99)),
            missing_rate=float(missing),
            n=len(v),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "edges": list(self.edges),
            "fractions": list(self.fractions),
            "mean": self.mean,
            "median": self.median,
            "std": self.std,
            "q01": self.q01,
            "q99": self.q99,
            "missing_rate": self.missing_rate,
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureProfile:
        return cls(
            name=str(d["name"]),
            edges=tuple(float(e) for e in d["edges"]),
            fractions=tuple(float(f) for f in d["fractions"]),
            mean=float(d["mean"]),
            median=float(d["median"]),
            std=float(d["std"]),
            q01=float(d["q01"]),
            q99=float(d["q99"]),
            missing_rate=float(d["missing_rate"]),
            n=int(d["n"]),
        )


def bin_counts(finite: F64, edges: F64 | tuple[float, ...]) -> F64:
    """Counts per bin of ``edges``; values outside fall into the first/last bin."""
    e = np.asarray(edges, np.float64)
    idx = np.clip(np.searchsorted(e, finite, side="right") - 1, 0, len(e) - 2)
    out: F64 = np.bincount(idx, minlength=len(e) - 1).astype(np.float64)
    return out


def profile_matrix(x: npt.ArrayLike, names: tuple[str, ...] | list[str]) -> tuple[FeatureProfile, ...]:
    """One profile per column of an ``(n, d)`` matrix."""
    m = np.asarray(x)
    return tuple(FeatureProfile.from_values(name, m[:, j]) for j, name in enumerate(names))
