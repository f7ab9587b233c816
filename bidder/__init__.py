"""bidder: the pure core of a streaming real-time ad bidder (numpy and ONNX Runtime, no I/O).

The public API is the names in ``__all__``, pinned by ``tests/test_public_api.py``; they are loaded on
first use (``bidder.BidPipeline`` imports ``bidder.query.pipeline`` then), so ``import bidder`` costs nothing.
The query path, in order: :func:`decode` a query, :class:`BidPipeline` (rows -> :func:`gather` features
-> :func:`load_models` scorers -> :func:`bids` -> :func:`run_auction`) -> :class:`AuctionOutcome`;
clicks: :class:`ClickBatch` over a :class:`Ledger` (their tokens: :class:`ClickSigner`); purchases:
:class:`ClickIndex`; monitors: :class:`DriftMonitor`, :class:`CalibrationMonitor`. ``docs/architecture.md`` is the map.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "AuctionOutcome": "events",
    "Click": "events",
    "Listing": "events",
    "Purchase": "events",
    "Query": "events",
    "Shop": "events",
    "Winner": "events",
    "Limits": "decoding", "Rejection": "decoding", "decode": "decoding",
    "TOPICS": "topics",
    "Catalog": "query.catalog",
    "RollingStats": "query.rolling",
    "FEATURE_SPEC": "query.features",
    "Priors": "query.features",
    "QueryContext": "query.features",
    "gather": "query.features",
    "Models": "query.scoring", "OnnxScorer": "query.scoring", "load_models": "query.scoring",
    "bids": "query.autobid",
    "AuctionResult": "query.auction", "run_auction": "query.auction",
    "pacing_multiplier": "query.pacing",
    "LedgerBudget": "query.budget",
    "Ledger": "clicks.billing", "LedgerEntry": "clicks.billing",
    "ClickBatch": "clicks.click_decisions", "ClickDecision": "clicks.click_decisions",
    "ClickSigner": "clicks.click_token",
    "ClickIndex": "labels.attribution",
    "label_update": "labels.attribution",
    "provisional_labels": "labels.attribution",
    "BidderState": "replica.state",
    "BidPipeline": "query.pipeline",
    "DriftMonitor": "monitoring.drift", "DriftSettings": "monitoring.drift",
    "CalibrationMonitor": "labels.calibration",
    "ListingHistory": "replica.history",
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
