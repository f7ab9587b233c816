"""The public Python API is what ``bidder.__all__`` names: pinned here, so adding or removing a name is a
deliberate change of this file, and every name resolves to a documented object of the pure core."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import bidder

PINNED = {
    "AuctionOutcome", "AuctionResult", "BidPipeline", "BidderState", "CalibrationMonitor", "Catalog", "Click",
    "ClickBatch", "ClickDecision", "ClickIndex", "ClickSigner", "DriftMonitor", "DriftSettings", "FEATURE_SPEC",
    "Ledger",
    "LedgerBudget", "LedgerEntry", "Limits", "Listing", "ListingHistory", "Models", "OnnxScorer", "Priors",
    "Purchase", "Query", "QueryContext", "Rejection", "RollingStats", "Shop", "TOPICS", "Winner", "bids",
    "decode", "gather", "label_update", "load_models", "pacing_multiplier", "provisional_labels", "run_auction",
}


def test_the_public_api_is_pinned() -> None:
    assert set(bidder.__all__) == PINNED


def test_every_public_name_resolves_to_a_documented_object() -> None:
    for name in bidder.__all__:
        obj = getattr(bidder, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), f"bidder.{name} has no docstring"
            assert obj.__module__.startswith("bidder."), obj.__module__


def test_import_bidder_loads_nothing_until_used() -> None:
    code = ("import sys, bidder; print(sorted(m for m in sys.modules if m.startswith('bidder.') "
            "or m in ('numpy', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        bidder.NoSuchThing  # noqa: B018
