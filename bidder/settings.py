"""The one place that reads the environment.

Every knob of the bidder is a field of :class:`Settings`, read from environment variables prefixed
``BIDDER_`` (``BIDDER_KAFKA_BOOTSTRAP``, ``BIDDER_PROVIDER``...). Below this module, code takes plain
constructor arguments; nothing else calls ``os.environ``. The Helm chart's ``values.yaml`` ``config:``
block maps one-to-one onto these fields (``config.kafkaBootstrap`` -> ``BIDDER_KAFKA_BOOTSTRAP``).

>>> Settings(kafka_bootstrap="k:9092").kafka_bootstrap
'k:9092'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bidder.clicks.click_token import DEV_KEY, ClickSigner

__all__ = ["DEFAULT_MODEL_DIR", "Settings"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "onnx_models"


class Settings(BaseSettings):
    """Frozen runtime settings; each field is ``BIDDER_<FIELD_NAME_UPPERCASE>``."""

    model_config = SettingsConfigDict(env_prefix="BIDDER_", frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, description="bootstrap servers; unset means start the embedded broker"
    )
    broker_kind: Literal["noida", "tansu"] = Field(
        default="noida", description="embedded broker used when kafka_bootstrap is unset"
    )
    topic_partitions: int = Field(default=4, ge=1, description="partitions of the keyed topics")
    topic_replication: int = Field(default=1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # Client timing. Faust's defaults (session 60 s, heartbeat 3 s, fetch wait 1500 ms) made every
    # group join wait 30 s and the median delivery 388 ms on the embedded broker; see README "Latency".
    fetch_max_wait_ms: int = Field(default=10, ge=1, le=5000)
    fetch_idle_ceiling_ms: float = Field(
        default=100.0, ge=1, description="a broker that answers empty fetches at once (noida-db) is polled at "
                                         "most this often by an idle consumer (bidder/replica/fetch_pacing.py)")
    fetch_floor_ms: float = Field(
        default=4.0, ge=0, description="a busy consumer polls a broker that does not hold fetches at most this often "
                                       "(bidder/replica/fetch_pacing.py)")
    replica_fetch_floor_ms: float = Field(
        default=100.0, ge=0, description="the replica and the catalog check, off the query path, poll a broker "
                                         "that does not hold fetches at most this often even while busy (20 ms "
                                         "cost a replica 8.2 % of a core at 50 q/s, 100 ms 3.3 %; docs/capacity.md)")
    fetch_idle_ratio: float = Field(
        default=0.5, gt=0, le=1, description="a busy consumer polls such a broker again after this share of "
                                             "its quiet time (bounds the delay a poll adds to a record)")
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    commit_interval_s: float = Field(default=1.0, gt=0)
    producer_linger_ms: int = Field(default=0, ge=0)

    # --- event validation --------------------------------------------------------------------------
    max_message_bytes: int = Field(default=256_000, ge=1024, description="larger events are rejected")
    max_candidates: int = Field(default=2000, ge=1)
    max_event_age_s: float = Field(default=86_400.0, gt=0, description="older timestamps are rejected")
    max_event_future_s: float = Field(default=300.0, gt=0, description="clock skew allowed ahead")
    dead_letter_max_bytes: int = Field(
        default=900_000, ge=16_384,
        description="a dead letter larger than this keeps only the original's size, sha256 and first bytes; "
                    "keep it under the producer's max request size and the broker's message.max.bytes (1 MB)")
    dead_letter_keep_bytes: int = Field(
        default=65_536, ge=0, le=262_144,
        description="bytes of the original key and value a truncated dead letter keeps")
    poison_attempts: int = Field(
        default=3, ge=1,
        description="times a record whose handling raises is tried alone before it is dead-lettered "
                    "(handler_error) and the agent moves on")
    fault_marker: str = Field(
        default="",
        description="reliability tests only: the agents' handlers raise for every record whose value "
                    "contains this text (empty: off)")
    fault_slow: str = Field(
        default="", pattern=r"^$|^(queries|clicks|purchases):[0-9]+(\.[0-9]+)?$",
        description="reliability tests only: TOPIC:SECONDS makes that topic's agent wait SECONDS before each "
                    "record it handles (a slow agent; empty: off)")

    # --- models and scoring ------------------------------------------------------------------------
    model_dir: Path = DEFAULT_MODEL_DIR
    model_family: Literal["mlp", "gbdt", "lr", "mlp_int8"] = "mlp"
    provider: Literal["cpu", "cuda"] = "cpu"
    intra_op_threads: int = Field(default=1, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)

    # --- micro-batching across queries (bidder/query/microbatch.py; pays off on a GPU, not on a CPU) ----
    latency_budget_ms: float = Field(default=50.0, gt=0, description="for queries that carry none")
    microbatch_enabled: bool = False
    microbatch_max_rows: int = Field(default=9600, ge=1, description="rows per scoring call")
    microbatch_max_wait_ms: float = Field(default=1.0, ge=0)
    overload_policy: Literal["reject", "fallback"] = Field(
        default="reject", description="what a query that cannot meet its deadline gets")
    fallback_family: Literal["mlp", "gbdt", "lr", "mlp_int8"] = Field(
        default="lr", description="cheaper models used when overload_policy is fallback")

    # --- bidding and auction -----------------------------------------------------------------------
    slots: int = Field(default=24, ge=1)
    reserve_price: float = Field(default=0.05, ge=0)
    min_bid: float = Field(default=0.02, ge=0)
    max_bid: float = Field(default=3.00, gt=0)

    # --- rolling features, billing, labels ---------------------------------------------------------
    feature_half_life_s: float = Field(default=3600.0, gt=0)
    warm_history_s: float = Field(
        default=3600.0, ge=0,
        description="rolling features are warm once the auctions folded span this much event time; before, "
                    "/readyz says warming and drift episodes that open are marked warm_up (0: always warm)")
    prior_ctr: float = Field(default=0.02, gt=0, lt=1)
    prior_cvr: float = Field(default=0.05, gt=0, lt=1)
    prior_strength: float = Field(default=50.0, gt=0, description="pseudo-impressions of the prior")
    attribution_window_s: float = Field(default=600.0, gt=0, description="purchase after click, at most")
    click_window_s: float = Field(default=900.0, gt=0, description="click after auction, at most")
    click_token_key: SecretStr = Field(
        default=SecretStr(DEV_KEY), description="signs each winner's click token (bidder/clicks/click_token.py); "
                                                "the embedded default's key unless set (a Secret in the chart)")
    click_token_previous_key: SecretStr | None = Field(
        default=None, description="still verifies click tokens while keys rotate (one click window)")
    aggregate_interval_ms: float = Field(
        default=250.0, gt=0, description="the aggregator publishes each changed listing's rolling counters at most "
                                         "once per this interval to listing-stats (bidder/replica/aggregation.py)")
    aggregate_checkpoint_s: float = Field(
        default=60.0, gt=0, description="each aggregated fold writes all its listings to listing-stats this often (in "
                                        "publish intervals), so compaction may drop the batches written before")
    aggregate_remember_records: int = Field(
        default=20_000, ge=0, description="a restarted aggregator re-reads this many records before its resume "
                                          "point of each source partition, only to recognise repeats of them")
    aggregator_embedded: bool = Field(
        default=True, description="each worker runs an aggregator (a member of the aggregator group, folding its "
                                  "share of the source partitions); false where a separate deployment runs them")
    purchase_click_wait_s: float = Field(
        default=5.0, ge=0, description="a purchase that finds no decided click waits at most this long for this "
                                       "worker's bill agent to decide the clicks of its partition sent before it "
                                       "(clicks and purchases are keyed by shop) before it is refused as unattributed")
    spend_publish_ms: float = Field(
        default=1000.0, gt=0, description="the bill agent publishes each changed billing partition's spend per shop "
                                          "today at most once per this interval to shop-spend, which every worker's "
                                          "auto-bidder paces with (bidder/clicks/shop_spend.py; pacing works over "
                                          "minutes, and the bill agent enforces the budget from its own ledger)")

    # --- feature drift (see bidder/monitoring/drift.py for what each statistic means) ----------------------
    drift_enabled: bool = True
    drift_sample_rate: float = Field(default=0.01, gt=0, le=1, description="share of served rows sampled")
    drift_window: int = Field(default=5000, ge=100, description="sampled rows per sliding window")
    drift_min_count: int = Field(default=2000, ge=1, description="sampled rows before anything is judged")
    drift_psi_threshold: float = Field(default=0.25, gt=0)
    drift_js_threshold: float = Field(default=0.2, gt=0, le=1)
    drift_scale_factor: float = Field(default=5.0, gt=1)
    drift_mean_threshold: float = Field(default=0.5, gt=0, description="standardized mean shift")
    drift_missing_threshold: float = Field(default=0.05, gt=0, le=1)

    # --- calibration monitor (bidder/labels/calibration.py): mean prediction / observed rate per model version
    calibration_window_s: float = Field(default=3600.0, gt=0, description="sliding window of matured labels")
    calibration_bucket_s: float = Field(default=60.0, gt=0, description="window granularity")
    calibration_low: float = Field(default=0.95, gt=0, lt=1, description="alert below this ratio")
    calibration_high: float = Field(default=1.05, gt=1, description="alert above this ratio")
    calibration_min_positives: int = Field(default=50, ge=1, description="positives before a series is judged")

    # --- worker ------------------------------------------------------------------------------------
    app_id: str = "bidder"
    commit_stall_s: float = Field(default=30.0, gt=0, description="no offset committed this long while records "
                                  "read wait for it: the worker exits to be restarted")
    gap_repair_wait_s: float = Field(
        default=1.0, ge=0, description="records a fetch skipped (an offset gap in a non-compacted topic) are "
                                       "fetched again for up to this long; 0 tries once (set it to 0 where "
                                       "producers use transactions: their markers leave gaps)")
    batch_max: int = Field(default=16, ge=1)
    batch_within_s: float = Field(
        default=0.0, ge=0, description="after taking the queries already waiting, wait this long once for more "
                                       "(0: no wait; streams/batching.py)")
    web_port: int = Field(default=6066, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    data_dir: Path = Path(".bidder")

    def click_signer(self) -> ClickSigner:
        """Signs winners with ``click_token_key``; verifies with it and ``click_token_previous_key``."""
        keys = [self.click_token_key, self.click_token_previous_key]
        return ClickSigner([k.get_secret_value().encode() for k in keys if k is not None])

    @model_validator(mode="after")
    def _dead_letters_fit(self) -> Self:
        # a truncated dead letter holds the kept key and value in base64 (4/3 each) beside its envelope
        need = 2 * (self.dead_letter_keep_bytes * 4 // 3 + 4) + 8192
        if need > self.dead_letter_max_bytes:
            raise ValueError(f"dead_letter_keep_bytes={self.dead_letter_keep_bytes} needs dead_letter_max_bytes >= "
                             f"{need}, got {self.dead_letter_max_bytes}")
        return self
