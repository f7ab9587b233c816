"""Kafka security settings reach aiokafka and Faust: PLAINTEXT, SASL (PLAIN/SCRAM), SSL, SASL_SSL.

TLS is checked with a real handshake: a throwaway CA signs a broker and a client certificate, and
the client context built from the settings talks to an in-memory TLS server that requires a client
certificate.
"""

from __future__ import annotations

import datetime as dt
import inspect
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol

from bidder.settings import Settings
from streams.kafka_config import (
    KafkaConfigError,
    aiokafka_admin_kwargs,
    aiokafka_auth_kwargs,
    aiokafka_consumer_kwargs,
    aiokafka_producer_kwargs,
    bootstrap_servers,
    faust_app_kwargs,
    faust_credentials,
    ssl_context,
)

BROKER_HOST = "kafka-0.kafka.test"


# --- a throwaway PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    broker_cert: Path
    broker_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    cn: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("bidder test CA")
    broker_key, broker_cert = _leaf(BROKER_HOST, ca_key, ca_cert, server=True)
    client_key, client_cert = _leaf("bidder-worker", ca_key, ca_cert, server=False)
    _, other_ca = _ca("some other CA")
    return Pki(
        ca=_write_cert(ca_cert, d / "ca.crt"),
        broker_cert=_write_cert(broker_cert, d / "broker.crt"),
        broker_key=_write_key(broker_key, d / "broker.key"),
        client_cert=_write_cert(client_cert, d / "client.crt"),
        client_key=_write_key(client_key, d / "client.key"),
        other_ca=_write_cert(other_ca, d / "other-ca.crt"),
    )


def _server_context(pki: Pki) -> ssl.SSLContext:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.broker_cert, pki.broker_key)
    server.load_verify_locations(pki.ca)
    server.verify_mode = ssl.CERT_REQUIRED  # the broker demands a client certificate (mutual TLS)
    return server


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> dict[str, Any]:
    """Run a TLS handshake in memory; return the client certificate as the server saw it."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=BROKER_HOST)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server verifies the client certificate after the client thinks it is done
            client.write(b"ping")
            s_in.write(c_out.read())
            assert server.read(4) == b"ping"
            return server.getpeercert() or {}
    raise AssertionError("handshake did not finish")


# --- settings helpers ----------------------------------------------------------------------------------


def _settings(**kwargs: Any) -> Settings:
    return Settings(kafka_bootstrap="k1:9092,k2:9093", **kwargs)


def _sasl(mechanism: str, protocol: str = "SASL_PLAINTEXT", **kwargs: Any) -> Settings:
    return _settings(
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username="bidder",
        sasl_password="s3cret",
        **kwargs,
    )


def _faust_app(settings: Settings) -> Any:
    return faust.App("auth-test", **faust_app_kwargs(settings))


def _faust_view_of_auth(settings: Settings) -> dict[str, Any]:
    """What faust-streaming itself hands to aiokafka for the credentials we configured."""
    conf = _faust_app(settings).conf
    return dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))


# --- PLAINTEXT -------------------------------------------------------------------------------------


def test_plaintext_has_no_credentials() -> None:
    s = _settings()
    assert aiokafka_auth_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert ssl_context(s) is None
    assert faust_credentials(s) is None
    assert "broker_credentials" not in faust_app_kwargs(s)
    assert _faust_view_of_auth(s) == {"security_protocol": "PLAINTEXT"}


def test_timing_settings_reach_aiokafka_and_faust() -> None:
    s = _settings(
        fetch_max_wait_ms=25,
        session_timeout_ms=9000,
        heartbeat_interval_ms=1500,
        commit_interval_s=2.5,
        producer_linger_ms=3,
        topic_partitions=6,
        topic_replication=3,
        data_dir=Path("/var/lib/bidder"),
    )
    consumer = aiokafka_consumer_kwargs(s)
    assert consumer["bootstrap_servers"] == ["k1:9092", "k2:9093"]
    assert (
        consumer["fetch_max_wait_ms"],
        consumer["session_timeout_ms"],
        consumer["heartbeat_interval_ms"],
    ) == (
        25,
        9000,
        1500,
    )
    assert aiokafka_producer_kwargs(s)["linger_ms"] == 3
    conf = _faust_app(s).conf
    assert [str(u) for u in conf.broker] == ["kafka://k1:9092", "kafka://k2:9093"]
    assert conf.broker_session_timeout == 9.0
    assert conf.broker_heartbeat_interval == 1.5
    assert conf.broker_commit_interval == 2.5
    assert conf.producer_linger == pytest.approx(0.003)
    assert conf.topic_partitions == 6
    assert conf.topic_replication_factor == 3
    assert Path(conf.datadir) == Path("/var/lib/bidder")


def test_kwargs_are_parameters_of_the_aiokafka_clients(pki: Pki) -> None:
    s = _sasl("SCRAM-SHA-256", "SASL_SSL", ssl_cafile=pki.ca)
    for cls, kwargs in (
        (AIOKafkaConsumer, aiokafka_consumer_kwargs(s)),
        (AIOKafkaProducer, aiokafka_producer_kwargs(s)),
        (AIOKafkaAdminClient, aiokafka_admin_kwargs(s)),
    ):
        params = inspect.signature(cls.__init__).parameters
        assert set(kwargs) <= set(params), (cls.__name__, set(kwargs) - set(params))


def test_bootstrap_override_and_missing_bootstrap() -> None:
    assert bootstrap_servers(Settings(), bootstrap="127.0.0.1:19092") == ["127.0.0.1:19092"]
    with pytest.raises(KafkaConfigError, match="BIDDER_KAFKA_BOOTSTRAP"):
        aiokafka_consumer_kwargs(Settings())


# --- SASL --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(mechanism: str) -> None:
    s = _sasl(mechanism)
    expected = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "bidder",
        "sasl_plain_password": "s3cret",
    }
    assert aiokafka_auth_kwargs(s) == expected
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_PLAINTEXT
    assert creds.mechanism.value == mechanism
    assert "s3cret" not in repr(creds)
    # Faust's own translation of our credentials equals our direct aiokafka mapping.
    assert _faust_view_of_auth(s) == {**expected, "ssl_context": None}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, mechanism: str) -> None:
    monkeypatch.setenv("BIDDER_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("BIDDER_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("BIDDER_SASL_MECHANISM", mechanism)
    monkeypatch.setenv("BIDDER_SASL_USERNAME", "svc-bidder")
    monkeypatch.setenv("BIDDER_SASL_PASSWORD", "from-a-secret")
    s = Settings()
    assert "from-a-secret" not in repr(s)
    kw = aiokafka_auth_kwargs(s)
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        mechanism,
        "svc-bidder",
        "from-a-secret",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
            "sasl_password",
        ),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p"}, "sasl_mechanism"),
        ({"security_protocol": "PLAINTEXT", "sasl_username": "u"}, "has no SASL"),
        ({"security_protocol": "SSL", "sasl_mechanism": "PLAIN"}, "has no SASL"),
        ({"security_protocol": "PLAINTEXT", "ssl_cafile": Path("/ca.crt")}, "has no TLS"),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
                "sasl_password": "p",
                "ssl_cafile": Path("/ca.crt"),
            },
            "has no TLS",
        ),
        ({"security_protocol": "SSL", "ssl_keyfile": Path("/k.pem")}, "without ssl_certfile"),
    ],
)
def test_contradictory_or_incomplete_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    s = _settings(**kwargs)
    for fn in (aiokafka_auth_kwargs, faust_app_kwargs, faust_credentials):
        with pytest.raises(KafkaConfigError, match=message):
            fn(s)


# --- TLS ---------------------------------------------------------------------------------------------


def test_ssl_context_trusts_the_given_ca_and_checks_hostnames(pki: Pki) -> None:
    ctx = ssl_context(_settings(security_protocol="SSL", ssl_cafile=pki.ca))
    assert ctx is not None
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname
    subjects = [dict(rdn[0] for rdn in c["subject"]) for c in ctx.get_ca_certs()]
    assert {"commonName": "bidder test CA"} in subjects


def test_ssl_mutual_tls_handshake_with_the_broker(pki: Pki) -> None:
    s = _settings(
        security_protocol="SSL", ssl_cafile=pki.ca, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key
    )
    kw = aiokafka_auth_kwargs(s)
    assert set(kw) == {"security_protocol", "ssl_context"}
    assert kw["security_protocol"] == "SSL"
    peer = _handshake(kw["ssl_context"], _server_context(pki))
    assert dict(rdn[0] for rdn in peer["subject"]) == {"commonName": "bidder-worker"}


def test_ssl_without_client_certificate_is_rejected_by_a_mtls_broker(pki: Pki) -> None:
    ctx = ssl_context(_settings(security_protocol="SSL", ssl_cafile=pki.ca))
    assert ctx is not None
    with pytest.raises(ssl.SSLError):
        _handshake(ctx, _server_context(pki))


def test_ssl_context_from_another_ca_refuses_the_broker(pki: Pki) -> None:
    ctx = ssl_context(_settings(security_protocol="SSL", ssl_cafile=pki.other_ca))
    assert ctx is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ctx, _server_context(pki))


def test_missing_ca_file_fails_at_configuration_time(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ssl_context(_settings(security_protocol="SSL", ssl_cafile=tmp_path / "absent.crt"))


def test_faust_ssl_credentials_carry_the_same_context(pki: Pki) -> None:
    s = _settings(
        security_protocol="SSL", ssl_cafile=pki.ca, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key
    )
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol is AuthProtocol.SSL
    view = _faust_view_of_auth(s)
    assert view["security_protocol"] == "SSL"
    _handshake(view["ssl_context"], _server_context(pki))


# --- SASL over TLS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl(pki: Pki, mechanism: str) -> None:
    s = _sasl(mechanism, "SASL_SSL", ssl_cafile=pki.ca)
    kw = aiokafka_auth_kwargs(s)
    assert kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
        mechanism,
        "bidder",
        "s3cret",
    )
    # SASL_SSL brokers authenticate the client by SASL, not by certificate: TLS with the pinned CA.
    server_ctx = _server_context(pki)
    server_ctx.verify_mode = ssl.CERT_NONE
    assert not _handshake(kw["ssl_context"], server_ctx)  # handshake done, no client certificate

    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_SSL
    assert creds.mechanism.value == mechanism
    view = _faust_view_of_auth(s)
    assert {k: v for k, v in view.items() if k != "ssl_context"} == {
        k: v for k, v in kw.items() if k != "ssl_context"
    }
    assert isinstance(view["ssl_context"], ssl.SSLContext)
