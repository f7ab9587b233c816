"""The embedded brokers start on a free loopback port, answer Kafka metadata, and stop without leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bidder.broker import BrokerError, EmbeddedBroker, embedded_broker, free_port, probe_kafka


@pytest.mark.parametrize("kind", ["noida", "tansu"])
def test_embedded_broker_answers_and_stops(kind: str) -> None:
    with embedded_broker(kind) as b:  # type: ignore[arg-type]
        host, port = b.bootstrap.split(":")
        assert host == "127.0.0.1"
        assert probe_kafka(host, int(port)) >= 1
        pid = b.process.pid
    assert b.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(OSError):
        probe_kafka(host, int(port), timeout_s=0.5)


def test_probe_refuses_something_that_is_not_kafka() -> None:
    import socketserver
    import threading

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(1024)
            self.request.sendall(b"\x00\x00\x00\x08HTTP/1.1")

    with socketserver.TCPServer(("127.0.0.1", 0), Echo) as srv:
        threading.Thread(target=srv.handle_request, daemon=True).start()
        with pytest.raises(BrokerError):
            probe_kafka("127.0.0.1", srv.server_address[1])


def test_cli_broker_prints_bootstrap_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bidder", "broker", "--port", str(port), "--kind", "tansu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.strip() == f"bootstrap: 127.0.0.1:{port}"
        assert probe_kafka("127.0.0.1", port) >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "broker stopped" in proc.stdout.read().decode()
        time.sleep(0.2)
        with pytest.raises(OSError):
            probe_kafka("127.0.0.1", port, timeout_s=0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_start_fails_clearly_when_port_is_taken() -> None:
    with embedded_broker("tansu") as b, pytest.raises(BrokerError):
        EmbeddedBroker.start("tansu", port=b.port, timeout_s=5)
