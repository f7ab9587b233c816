"""The hostile generator's truth agrees with the strict decoder, kind by kind (no broker)."""

from __future__ import annotations

import numpy as np
import pytest

from bidder.decoding import Limits, Rejection, decode
from streams.harness.hostile import KINDS, HostileFactory

NOW = 1_800_000_000.0


def factory(seed: int = 0) -> HostileFactory:
    listings = [(100 + i, 7 + i % 3) for i in range(40)]
    return HostileFactory(rng=np.random.default_rng(seed), now=NOW, listings=listings)


def test_there_are_about_thirty_kinds_covering_the_issue_list() -> None:
    assert len(KINDS) >= 30
    for k in ("truncated_json", "invalid_utf8", "root_array", "missing_field", "extra_field",
              "wrong_type_bool",
              "duplicate_key", "nan", "infinity", "1e400", "5000_digits", "deep_nesting", "oversize",
              "negative_price", "unknown_listings", "future_ts", "stale_ts", "null_key", "empty_value",
              "control_chars", "forged_click_token", "purchase_before_click"):
        assert k in KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_decoder_gives_the_recorded_reason(kind: str) -> None:
    rec = factory().make(kind, 3)
    got = decode(rec.topic, rec.value, now=NOW, limits=Limits())
    if rec.decoder_only:
        assert isinstance(got, Rejection), got
        assert got.reason == rec.reason, (got, rec.reason)
    else:  # refused later, by the worker (catalog, click token key, record key): the body itself is valid
        assert not isinstance(got, Rejection), got


def test_mix_is_seeded_and_ids_are_unique() -> None:
    a, b = factory(5).mix(2), factory(5).mix(2)
    assert [(r.kind, r.key, r.value) for r in a] == [(r.kind, r.key, r.value) for r in b]
    assert len(a) == 2 * len(KINDS)
    values = [r.value for r in a if r.value]
    assert len(set(values)) >= len(values) - 4  # a few constant-bodied kinds may repeat
