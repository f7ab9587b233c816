"""Prometheus metrics of one worker (prometheus_client, one registry per worker).

Names follow Prometheus conventions: ``bidder_`` prefix, base units (seconds, currency units as
``_amount``), ``_total`` for counters, labels for small closed sets only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["STAGES", "WorkerMetrics"]

STAGES = ("queue", "gather", "score", "bid", "auction", "total")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class WorkerMetrics:
    """Every metric a worker exports."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.stage_seconds = Histogram("bidder_query_stage_seconds", "Per-query time by pipeline stage",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queries = Counter("bidder_queries_total", "Queries answered with an auction outcome", registry=r)
        self.batch_size = Histogram("bidder_query_batch_size", "Queries per take() batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.dead_letters = Counter("bidder_dead_letters_total", "Events refused, by source topic and reason",
                                    ["topic", "reason"], registry=r)
        self.dead_letter_failures = Counter(
            "bidder_dead_letter_failures_total",
            "Refused events whose dead letter could not be written (logged with topic/partition/offset)",
            ["topic"], registry=r)
        self.handler_retries = Counter("bidder_handler_retries_total",
                                       "Records tried alone again after their handler raised", ["topic"],
                                       registry=r)
        self.clicks = Counter("bidder_clicks_total", "Clicks by ledger status (charged, unbilled, duplicate)",
                              ["status"], registry=r)
        self.charged = Counter("bidder_charged_amount_total", "Money charged to shops", registry=r)
        self.unbilled = Counter("bidder_unbilled_amount_total", "Price of clicks past the budget", registry=r)
        self.budget_exhausted = Counter("bidder_budget_exhausted_total",
                                        "Charges that used up a shop's daily budget", registry=r)
        self.conversions = Counter("bidder_conversions_total", "Purchases attributed to a click", registry=r)
        self.replica_lag = Gauge("bidder_replica_lag_records",
                                 "Records in replicated topics not yet folded into this worker's state",
                                 registry=r)
        self.consumer_lag = Gauge("bidder_consumer_lag_records",
                                  "Records in this worker's assigned partitions not yet processed", ["topic"],
                                  registry=r)
        self.log_truncations = Counter(
            "bidder_log_truncations_total",
            "Partitions whose high watermark fell below this worker's position (the broker came back "
            "empty, an unclean leader election), re-read from the start, by consumer (replica, group)",
            ["consumer"], registry=r)
        self.skipped_records = Counter(
            "bidder_skipped_records_total",
            "Records a fetch skipped (an offset gap), by consumer (replica, group) and outcome: fetched again "
            "and processed (repaired), or never found (absent: a transaction marker, or a record the broker "
            "lost)", ["consumer", "outcome"], registry=r)
        self.send_retries = Counter("bidder_send_retries_total", "Output records sent again after a failed "
                                    "delivery (same bytes), by topic", ["topic"], registry=r)
        self.model = Info("bidder_model", "Serving model versions and provider", registry=r)
        self.model_swaps = Counter("bidder_model_swaps_total", "Hot swaps of the serving models, by result",
                                   ["result"], registry=r)
        self.calibration = Gauge("bidder_calibration_ratio", "Mean prediction / observed rate, sliding window",
                                 ["target", "version", "role"], registry=r)
        self.calibration_logloss = Gauge("bidder_online_logloss",
                                         "Mean log loss on matured labels, sliding window",
                                         ["target", "version", "role"], registry=r)
        self.calibration_alerting = Gauge("bidder_calibration_alerting", "1 while a calibration alert is open",
                                          ["target", "version", "role"], registry=r)
        self.shadow_seconds = Histogram("bidder_shadow_seconds", "Shadow scoring time per batch",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.drift = Gauge("bidder_feature_drift", "Drift statistic per feature", ["feature", "statistic"],
                           registry=r)
        self.drift_alerts = Gauge("bidder_feature_drift_alerting", "1 while a drift alert is open",
                                  ["feature", "statistic"], registry=r)
        for s in STAGES:
            self.stage_seconds.labels(stage=s)
        for s in ("charged", "unbilled", "duplicate"):
            self.clicks.labels(status=s)
        for c in ("replica", "group"):
            self.log_truncations.labels(consumer=c)
            for outcome in ("repaired", "absent"):
                self.skipped_records.labels(consumer=c, outcome=outcome)
