"""bidder: the pure core of a streaming real-time ad bidder (numpy and ONNX Runtime, no I/O).

The public API is the names in ``__all__``, pinned by ``tests/test_public_api.py``; they are loaded on
first use (``bidder.BidPipeline`` imports ``bidder.pipeline`` then), so ``import bidder`` costs nothing.
The query path, in order: :func:`decode` a query, :class:`BidPipeline` (rows -> :func:`gather` features
-> :func:`load_models` scorers -> :func:`bids` -> :func:`run_auction`) -> :class:`AuctionOutcome`;
clicks: :class:`ClickBatch` over a :class:`Ledger`; purchases: :class:`ClickIndex`; monitors:
:class:`DriftMonitor`, :class:`CalibrationMonitor`. ``docs/architecture.md`` is the map.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "AuctionOutcome": "events", "Click": "events", "Listing": "events", "Purchase": "events", "Query": "events",
    "Shop": "events", "Winner": "events",
    "Limits": "decoding", "Rejection": "decoding", "decode": "decoding",
    "TOPICS": "topics",
    "Catalog": "catalog",
    "RollingStats": "rolling",
    "FEATURE_SPEC": "features", "Priors": "features", "QueryContext": "features", "gather": "features",
    "Models": "scoring", "OnnxScorer": "scoring", "load_models": "scoring",
    "bids": "autobid",
    "AuctionResult": "auction", "run_auction": "auction",
    "pacing_multiplier": "pacing",
    "LedgerBudget": "budget",
    "Ledger": "billing", "LedgerEntry": "billing",
    "ClickBatch": "click_decisions", "ClickDecision": "click_decisions",
    "ClickIndex": "attribution", "label_update": "attribution", "provisional_labels": "attribution",
    "BidderState": "state",
    "BidPipeline": "pipeline",
    "DriftMonitor": "drift", "DriftSettings": "drift",
    "CalibrationMonitor": "calibration",
    "ListingHistory": "history",
}

__all__ = [*_HOME]  # noqa: PLE0604 - the names _HOME loads lazily


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'bidder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bidder.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
