"""Reads the output topics from the start and adds them up: what the demo shows and reconciles.

Everything printed by ``bidder demo`` comes from here (the topics), not from the worker's memory, so
the numbers reconcile with what any other consumer of the topics would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from bidder.labels.attribution import IMPRESSIONS_PREFIX
from bidder.settings import Settings
from streams.gap_repair import GapRepairer
from streams.tail import tail_consumer

__all__ = ["OutputTally", "TopicMonitor"]

OUTPUT_TOPICS = ["auctions", "billing", "dead-letters", "labels", "drift-alerts", "calibration-alerts"]


@dataclass
class OutputTally:
    """Totals over the output topics."""

    outcome_ids: set[str] = field(default_factory=set)
    outcomes_repeated: int = 0
    impressions: int = 0
    ledger: Counter[str] = field(default_factory=Counter)
    ledger_click_ids: dict[str, str] = field(default_factory=dict)
    charged_by_shop: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    revenue: float = 0.0
    unbilled_value: float = 0.0
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    conversions: set[str] = field(default_factory=set)
    label_records: int = 0
    model_versions: Counter[str] = field(default_factory=Counter)
    pctr_sum: float = 0.0
    pcvr_by_ad: dict[tuple[str, int], float] = field(default_factory=dict)
    """(query id, listing id) -> pCVR served, to join clicks to what was predicted for them"""
    pcvr_clicked_sum: float = 0.0
    """pCVR served, summed over the clicks decided (charged or unbilled)"""
    drift_alerts: Counter[str] = field(default_factory=Counter)
    """open alert episodes by feature:statistic (alert +1, recovered -1)"""
    drift_events: int = 0
    drift_alerts_warm_up: Counter[str] = field(default_factory=Counter)
    """the same, for episodes opened while the worker's features were warming up (``warm_up``)"""
    calibration_alerts: Counter[str] = field(default_factory=Counter)
    """(target version role) -> +1 per "out", -1 per "ok": > 0 while out of bounds"""
    last_record_at: float = field(default_factory=time.monotonic)
    records: int = 0

    def add(self, topic: str, value: bytes) -> None:
        self.records += 1
        self.last_record_at = time.monotonic()
        if topic == "labels" and value.startswith(IMPRESSIONS_PREFIX):
            self.label_records += 1  # an example on labels (written before impressions had a topic): skipped unparsed
            return
        rec: dict[str, Any] = orjson.loads(value)
        if topic == "auctions":
            qid = str(rec["query_id"])
            if qid in self.outcome_ids:
                self.outcomes_repeated += 1
                return
            self.outcome_ids.add(qid)
            self.impressions += len(rec["winners"])
            self.pctr_sum += sum(float(w["pctr"]) for w in rec["winners"])
            for w in rec["winners"]:
                self.pcvr_by_ad[(qid, int(w["listing_id"]))] = float(w["pcvr"])
            self.model_versions["/".join(f"{k}={v}" for k, v in sorted(rec["model_versions"].items()))] += 1
        elif topic == "billing":
            status = str(rec["status"])
            cid = str(rec["click_id"])
            if status != "duplicate" and cid in self.ledger_click_ids:
                status = "double_entry"  # would be a double charge: must never happen
            self.ledger[status] += 1
            if status in ("charged", "unbilled"):
                self.ledger_click_ids[cid] = status
                self.pcvr_clicked_sum += self.pcvr_by_ad.get((str(rec["query_id"]), int(rec["listing_id"])), 0.0)
            if status == "charged":
                self.charged_by_shop[int(rec["shop_id"])] += float(rec["amount"])
                self.revenue += float(rec["amount"])
            elif status == "unbilled":
                self.unbilled_value += float(rec["price"])
        elif topic == "dead-letters":
            self.dead_letters[(str(rec["source_topic"]), str(rec["reason"]))] += 1
        elif topic == "drift-alerts":
            self.drift_events += 1
            key = f"{rec.get('feature')}:{rec.get('statistic')}"
            open_ = self.drift_alerts_warm_up if rec.get("warm_up") else self.drift_alerts
            open_[key] += 1 if rec.get("kind") == "alert" else -1
        elif topic == "calibration-alerts":
            key = f"{rec.get('target')} {rec.get('version')} ({rec.get('role')})"
            self.calibration_alerts[key] += 1 if rec.get("state") == "out" else -1
        elif topic == "labels":
            self.label_records += 1
            if rec.get("type") == "label_update" and rec.get("converted"):
                self.conversions.add(str(rec["order_id"]))

    def dead_lettered(self, topic: str) -> int:
        return sum(n for (t, _), n in self.dead_letters.items() if t == topic)

    @property
    def clicks_decided(self) -> int:
        return self.ledger["charged"] + self.ledger["unbilled"]


class TopicMonitor:
    """Background reader of the output topics into an :class:`OutputTally`."""

    def __init__(self, settings: Settings, *, bootstrap: str) -> None:
        self.tally = OutputTally()
        self._settings = settings
        self._bootstrap = bootstrap
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = await tail_consumer(self._settings, self._bootstrap, OUTPUT_TOPICS, from_beginning=True)
        # a record a fetch skipped would make the printed numbers disagree with the topics
        repairer = GapRepairer(self._settings, bootstrap=self._bootstrap, name="monitor")

        async def run() -> None:
            try:
                while True:
                    batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                    for tp, records in batches.items():
                        for r in records:
                            for again in await repairer.missed_before(tp.topic, tp.partition, r.offset):
                                self.tally.add(tp.topic, again.value)
                            self.tally.add(tp.topic, r.value)
            finally:
                await consumer.stop()
                await repairer.stop()

        self._task = asyncio.create_task(run())

    async def settle(self, *, quiet_s: float = 2.0, timeout_s: float = 30.0) -> None:
        """Wait until no new output record has arrived for ``quiet_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and time.monotonic() - self.tally.last_record_at < quiet_s:  # noqa: ASYNC110
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
