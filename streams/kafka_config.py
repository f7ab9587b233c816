"""Kafka client configuration: :class:`~bidder.settings.Settings` -> aiokafka and Faust keyword arguments.

One mapping, two clients. The security fields of the settings decide what every client speaks:

==================  ==============================  =================================================
security_protocol   needs                           produces
==================  ==============================  =================================================
``PLAINTEXT``       nothing (no SASL/TLS fields)     no credentials
``SSL``             optional ``ssl_cafile``,         ``ssl_context`` (CA pinned when given; client
                    ``ssl_certfile``/``ssl_keyfile`` certificate for mutual TLS when given)
``SASL_PLAINTEXT``  ``sasl_mechanism``,              ``sasl_mechanism``, ``sasl_plain_username``,
                    ``sasl_username``,               ``sasl_plain_password`` (aiokafka uses the
                    ``sasl_password``                "plain" names for SCRAM too)
``SASL_SSL``        both of the above                both of the above
==================  ==============================  =================================================

A field that the chosen protocol would ignore (a CA file under ``PLAINTEXT``, a SASL user under
``SSL``) is refused with :class:`KafkaConfigError` instead: a credential that silently does nothing
is how a deployment ends up talking plaintext to a broker it believes is authenticated.

Timing: aiokafka consumers get ``fetch_max_wait_ms``, ``session_timeout_ms`` and
``heartbeat_interval_ms`` from the settings, producers ``linger_ms``. Faust takes seconds
(``broker_session_timeout``, ``broker_heartbeat_interval``, ``broker_commit_interval``,
``producer_linger``); faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for its worker
consumer, so that one setting cannot reach Faust through its config.

``faust`` and ``aiokafka`` are imported inside the functions that need them, so ``bidder`` imports
without them (the GPU benchmark runs with only numpy and onnxruntime installed).

>>> from bidder.settings import Settings
>>> kw = aiokafka_consumer_kwargs(Settings(kafka_bootstrap="k1:9092,k2:9092"))
>>> kw["bootstrap_servers"], kw["security_protocol"], kw["fetch_max_wait_ms"]
(['k1:9092', 'k2:9092'], 'PLAINTEXT', 10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    from bidder.settings import Settings

__all__ = [
    "KafkaConfigError",
    "aiokafka_admin_kwargs",
    "aiokafka_auth_kwargs",
    "aiokafka_consumer_kwargs",
    "aiokafka_producer_kwargs",
    "bootstrap_servers",
    "faust_app_kwargs",
    "faust_credentials",
    "pace_fetches",
    "ssl_context",
]

_SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
_SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})


class KafkaConfigError(ValueError):
    """The Kafka security settings are incomplete or contradict each other."""


def bootstrap_servers(settings: Settings, *, bootstrap: str | None = None) -> list[str]:
    """The ``host:port`` list to dial: ``bootstrap`` if given, else ``settings.kafka_bootstrap``.

    ``bootstrap`` is for the caller that started the embedded broker (``kafka_bootstrap`` unset).

    >>> from bidder.settings import Settings
    >>> bootstrap_servers(Settings(kafka_bootstrap=" a:1, b:2 "))
    ['a:1', 'b:2']
    >>> bootstrap_servers(Settings(), bootstrap="127.0.0.1:9092")
    ['127.0.0.1:9092']
    """
    raw = bootstrap if bootstrap is not None else settings.kafka_bootstrap
    servers = [s.strip() for s in (raw or "").split(",") if s.strip()]
    if not servers:
        raise KafkaConfigError("no Kafka bootstrap servers: set BIDDER_KAFKA_BOOTSTRAP")
    return servers


def _check(settings: Settings) -> None:
    protocol = settings.security_protocol
    sasl_fields = {
        "sasl_mechanism": settings.sasl_mechanism,
        "sasl_username": settings.sasl_username,
        "sasl_password": settings.sasl_password,
    }
    ssl_fields = {
        "ssl_cafile": settings.ssl_cafile,
        "ssl_certfile": settings.ssl_certfile,
        "ssl_keyfile": settings.ssl_keyfile,
    }
    if protocol in _SASL_PROTOCOLS:
        missing = [name for name, value in sasl_fields.items() if value is None]
        if missing:
            raise KafkaConfigError(f"security_protocol={protocol} needs {', '.join(missing)}")
    else:
        stray = [name for name, value in sasl_fields.items() if value is not None]
        if stray:
            raise KafkaConfigError(f"{', '.join(stray)} set but security_protocol={protocol} has no SASL")
    if protocol in _SSL_PROTOCOLS:
        if settings.ssl_keyfile is not None and settings.ssl_certfile is None:
            raise KafkaConfigError("ssl_keyfile is set without ssl_certfile")
    else:
        stray = [name for name, value in ssl_fields.items() if value is not None]
        if stray:
            raise KafkaConfigError(f"{', '.join(stray)} set but security_protocol={protocol} has no TLS")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for ``SSL``/``SASL_SSL`` (``None`` otherwise), built by aiokafka's helper.

    Without ``ssl_cafile`` the system's CA store is trusted. Hostnames are always checked.
    A missing or unreadable file raises here, at start-up, not at the first connection.
    """
    _check(settings)
    if settings.security_protocol not in _SSL_PROTOCOLS:
        return None
    from aiokafka.helpers import create_ssl_context

    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
    )
    return context


def aiokafka_auth_kwargs(settings: Settings) -> dict[str, Any]:
    """``security_protocol`` and, as the protocol needs them, SASL and ``ssl_context`` kwargs.

    Valid for ``AIOKafkaConsumer``, ``AIOKafkaProducer`` and ``AIOKafkaAdminClient``.

    >>> from bidder.settings import Settings
    >>> aiokafka_auth_kwargs(Settings())
    {'security_protocol': 'PLAINTEXT'}
    """
    _check(settings)
    kwargs: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in _SASL_PROTOCOLS:
        assert settings.sasl_password is not None  # guaranteed by _check
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    return kwargs


def pace_fetches(settings: Settings) -> None:
    """Pace this process's consumers against a broker that answers empty fetches at once
    (:mod:`bidder.replica.fetch_pacing`); called by the consumer and Faust factories below."""
    from bidder.replica.fetch_pacing import FetchPacing
    from streams.workarounds import install_fetch_pacing

    install_fetch_pacing(FetchPacing(max_wait_s=settings.fetch_max_wait_ms / 1000.0,
                                     floor_s=settings.fetch_floor_ms / 1000.0,
                                     ceiling_s=settings.fetch_idle_ceiling_ms / 1000.0,
                                     ratio=settings.fetch_idle_ratio))


def aiokafka_consumer_kwargs(settings: Settings, *, bootstrap: str | None = None) -> dict[str, Any]:
    """kwargs for ``aiokafka.AIOKafkaConsumer``: servers, auth and the consumer timing settings (and
    the process's consumers paced, :func:`pace_fetches`)."""
    pace_fetches(settings)
    return {
        "bootstrap_servers": bootstrap_servers(settings, bootstrap=bootstrap),
        **aiokafka_auth_kwargs(settings),
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
    }


def aiokafka_producer_kwargs(settings: Settings, *, bootstrap: str | None = None) -> dict[str, Any]:
    """kwargs for ``aiokafka.AIOKafkaProducer``: servers, auth and ``linger_ms``."""
    return {
        "bootstrap_servers": bootstrap_servers(settings, bootstrap=bootstrap),
        **aiokafka_auth_kwargs(settings),
        "linger_ms": settings.producer_linger_ms,
    }


def aiokafka_admin_kwargs(settings: Settings, *, bootstrap: str | None = None) -> dict[str, Any]:
    """kwargs for ``aiokafka.admin.AIOKafkaAdminClient`` (topic creation): servers and auth."""
    return {
        "bootstrap_servers": bootstrap_servers(settings, bootstrap=bootstrap),
        **aiokafka_auth_kwargs(settings),
    }


def faust_credentials(settings: Settings) -> Any:
    """The ``broker_credentials`` Faust expects: ``SASLCredentials``, ``SSLCredentials`` or ``None``.

    ``SASLCredentials`` with an ``ssl_context`` is Faust's spelling of ``SASL_SSL``.
    """
    _check(settings)
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    import faust

    context = ssl_context(settings)
    if protocol == "SSL":
        assert context is not None
        return faust.SSLCredentials(context)
    assert settings.sasl_password is not None  # guaranteed by _check
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value(),
        mechanism=settings.sasl_mechanism,
        ssl_context=context,
    )


def faust_app_kwargs(settings: Settings, *, bootstrap: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``faust.App(settings.app_id, **kwargs)``.

    Broker URLs, credentials (only when the protocol has any), session/heartbeat/commit timing,
    producer linger, topic partitions/replication and the data directory. Web and agent options
    belong to the caller. The app's consumers are paced (:func:`pace_fetches`).
    """
    pace_fetches(settings)
    kwargs: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in bootstrap_servers(settings, bootstrap=bootstrap)],
        "broker_session_timeout": settings.session_timeout_ms / 1000.0,
        "broker_heartbeat_interval": settings.heartbeat_interval_ms / 1000.0,
        "broker_commit_interval": settings.commit_interval_s,
        "producer_linger": settings.producer_linger_ms / 1000.0,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication,
        "datadir": str(settings.data_dir),
    }
    credentials = faust_credentials(settings)
    if credentials is not None:
        kwargs["broker_credentials"] = credentials
    return kwargs
