"""Warm-up is a state, not an alarm: a worker whose rolling features have not seen enough auction
history says "warming" with the reason, and drift episodes opened meanwhile are marked ``warm_up``."""

from __future__ import annotations

import orjson

from bidder.decoding import Limits
from bidder.monitoring.drift import DriftEvent
from bidder.replica.state import BidderState
from bidder.settings import Settings
from streams.monitor import OutputTally
from streams.probes import Probes

T0 = 1_767_272_400.0


def _runtime(warm_history_s: float) -> Probes:
    state = BidderState(half_life_s=3600.0, click_window_s=600.0, attribution_window_s=3600.0, limits=Limits())
    return Probes(settings=Settings(warm_history_s=warm_history_s), state=state, replica=None)  # type: ignore[arg-type]


def _outcome(qid: str, ts: float) -> bytes:
    return orjson.dumps({"v": 1, "type": "auction", "query_id": qid, "ts": ts, "user_id": 1, "winners": [],
                         "model_versions": {}, "timings_ms": {}, "n_candidates": 0, "n_unknown": 0})


def test_features_warm_once_the_folded_history_spans_long_enough() -> None:
    rt = _runtime(600.0)
    assert rt.warming(T0) == "no auction history yet (features are warm after 600 s of it)"
    rt.state.apply("auctions", 0, 0, _outcome("q0", T0), now=T0)
    assert rt.warming(T0 + 120) == "rolling features span 120 s of auction history of the 600 s they need"
    rt.state.apply("auctions", 0, 1, _outcome("q1", T0 - 900), now=T0)  # a restored, older record
    assert rt.state.history_from == T0 - 900
    assert rt.warming(T0 + 120) is None
    assert _runtime(0.0).warming(T0) is None


def test_warm_up_episodes_are_kept_apart_from_alerts() -> None:
    t = OutputTally()
    cold = DriftEvent("alert", "ctr_smoothed", "psi", 0.4, 0.25, 5000, 60.0, "m", T0, warm_up=True)
    real = DriftEvent("alert", "log_price", "scale", 9.0, 5.0, 5000, 60.0, "m", T0)
    for ev in (cold, real):
        t.add("drift-alerts", orjson.dumps(ev.to_dict()))
    assert dict(t.drift_alerts) == {"log_price:scale": 1}
    assert dict(t.drift_alerts_warm_up) == {"ctr_smoothed:psi": 1}
    assert DriftEvent.from_dict(orjson.loads(orjson.dumps(cold.to_dict()))) == cold
    assert cold.describe().endswith("(opened during warm-up)")
    recovered = DriftEvent("recovered", "ctr_smoothed", "psi", 0.1, 0.25, 5000, 60.0, "m", T0, warm_up=True)
    t.add("drift-alerts", orjson.dumps(recovered.to_dict()))
    assert t.drift_alerts_warm_up["ctr_smoothed:psi"] == 0
