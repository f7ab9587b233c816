"""Worker processes for the demo, the benchmarks and the tests: start, wait ready, signal, stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.broker import free_port

__all__ = ["WorkerProcess", "stop_process"]


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 30.0) -> int:
    """SIGTERM a child started with ``start_new_session=True`` (its own process group) and wait; SIGKILL the
    group if it does not stop in time, and anything it left in its group after. Returns the exit code."""

    def signal_group(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    if process.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            process.wait(timeout=10)
    signal_group(signal.SIGKILL)
    return int(process.returncode)


@dataclass
class WorkerProcess:
    """One ``bidder worker`` subprocess with its own web port and log file."""

    process: subprocess.Popen[bytes]
    web_port: int
    log_path: Path

    @classmethod
    def start(cls, *, bootstrap: str, log_path: Path, env: dict[str, str] | None = None) -> WorkerProcess:
        port = free_port()
        full_env = {**os.environ, **(env or {}), "BIDDER_KAFKA_BOOTSTRAP": bootstrap,
                    "BIDDER_WEB_PORT": str(port)}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "bidder", "worker"], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
                                    start_new_session=True)
        return cls(process=proc, web_port=port, log_path=log_path)

    def get(self, path: str, *, timeout_s: float = 2.0) -> tuple[int, Any]:
        """GET a worker endpoint; returns (status, decoded JSON or text)."""
        url = f"http://127.0.0.1:{self.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                body = resp.read()
                status = int(resp.status)
        except urllib.error.HTTPError as err:
            body, status = err.read(), int(err.code)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def wait_ready(self, *, timeout_s: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; log:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, body = self.get("/readyz")
                last = body
                if status == 200:
                    return dict(body)
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready after {timeout_s}s ({last}); log:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, *, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time (:func:`stop_process`)."""
        return stop_process(self.process, timeout_s=timeout_s)
