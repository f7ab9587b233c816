"""What a worker watches in what it serves: feature and prediction drift after each batch
(``bidder/monitoring/drift.py``, alerts on ``drift-alerts``) and the calibration of each model version on matured
labels (``bidder/labels/calibration.py``, alerts on ``calibration-alerts``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import orjson

from bidder.labels.calibration import CalibrationAlert, CalibrationMonitor
from bidder.query.pipeline import BidPipeline
from bidder.replica.state import BidderState
from streams.outputs import Outputs
from streams.serving import Serving

__all__ = ["Monitors"]

log = logging.getLogger(__name__)


@dataclass
class Monitors:
    """Drift and calibration watching of one worker process; alerts are written through ``out``."""

    out: Outputs
    state: BidderState
    pipeline: BidPipeline
    serving: Serving | None
    warming: Callable[[float], str | None]
    """why the rolling features are still warming up at a time, or None (``Probes.warming``)"""
    calibration: CalibrationMonitor = field(default_factory=lambda: CalibrationMonitor(window_s=3600.0))
    _roles: dict[tuple[str, str], str] = field(default_factory=dict)
    _warm_up_episodes: set[tuple[str, str]] = field(default_factory=set)
    """(feature, statistic) of drift episodes opened while the features were warming up"""

    async def watch_calibration(self) -> None:
        """Matured labels (``bidder/labels/auction_log.py``: clicks final after the click window, conversions
        after the attribution window too) judge each model version that predicted them, the serving one
        and the shadow on the same impressions; alerts go to ``calibration-alerts``."""
        matured = self.state.auctions.take_matured()
        if not matured:
            return
        cal = self.calibration
        for m in matured:
            series = [("serving", m.version, m.p)]
            if m.shadow_version and len(m.shadow_p) == len(m.y):
                series.append(("shadow", m.shadow_version, m.shadow_p))
            for role, version, p in series:
                self._roles[(m.target, version)] = role
                for alert in cal.update(m.target, version, p=p, y=m.y, now=m.ts):
                    await self.calibration_alert(alert, role)
        now = max(m.ts for m in matured)
        for (target, version), g in cal.gauges(now=now).items():
            labels = {"target": target, "version": version, "role": self._roles.get((target, version), "serving")}
            if g.ratio == g.ratio:  # not NaN
                self.out.metrics.calibration.labels(**labels).set(g.ratio)
            if g.logloss == g.logloss:
                self.out.metrics.calibration_logloss.labels(**labels).set(g.logloss)

    async def calibration_alert(self, alert: CalibrationAlert, role: str) -> None:
        log.warning("calibration %s: %s %s (%s) ratio %.3f outside [%.2f, %.2f] over %d examples", alert.state,
                    alert.target, alert.version, role, alert.ratio, alert.low, alert.high, alert.n)
        record = {"v": 1, "type": "calibration_alert", **asdict(alert), "role": role}
        await (await self.out.send("calibration-alerts", alert.target.encode(), orjson.dumps(record)))
        self.out.metrics.calibration_alerting.labels(target=alert.target, version=alert.version, role=role).set(
            1.0 if alert.state == "out" else 0.0)
        self.out.counts[f"calibration_{alert.state}"] += 1

    async def watch_drift(self, now: float) -> None:
        """Feed what was just served to the drift monitor (after the outcomes are out)."""
        scored = self.pipeline.last_scored
        drift = None if self.serving is None else self.serving.drift
        if drift is None or scored is None:
            return
        x, pctr, pcvr = scored
        warming = self.warming(now) is not None
        for event in drift.update(x, {"pctr": pctr, "pcvr": pcvr}, now):
            episode = (event.feature, event.statistic)
            if event.kind == "alert" and warming:
                self._warm_up_episodes.add(episode)
            if episode in self._warm_up_episodes:
                event = replace(event, warm_up=True)  # noqa: PLW2901 - the same event, marked
                if event.kind == "recovered":
                    self._warm_up_episodes.discard(episode)
            log.warning("%s", event.describe())
            await (await self.out.send("drift-alerts", event.feature.encode(), orjson.dumps(event.to_dict())))
            self.out.metrics.drift_alerts.labels(feature=event.feature, statistic=event.statistic).set(
                1.0 if event.kind == "alert" else 0.0)
            self.out.counts[f"drift_{event.kind}"] += 1
        self.out.counts["drift_batches"] += 1
        if self.out.counts["drift_batches"] % 50 == 1:
            for feature, stats in drift.gauges().items():
                for statistic, value in stats.items():
                    self.out.metrics.drift.labels(feature=feature, statistic=statistic).set(value)

