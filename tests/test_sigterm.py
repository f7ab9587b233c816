"""Commands that start children stop them all on SIGTERM and leave no temporary data (issue 18).

``bidder demo`` and ``bidder bench e2e`` run as real processes with a private ``TMPDIR``; once they have
started their broker and a Python child (the worker, or the echo agent), they get SIGTERM, as
``timeout``, CI runners and Kubernetes send it. Then no process of theirs may be left and ``TMPDIR``
must be empty but for onnxruntime's own ``.ses`` file (written by ``import onnxruntime`` under that
fixed name, whoever imports it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.broker

NOT_OURS = {".ses"}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.parametrize("args", [["demo", "--seconds", "120", "--json"],
                                  ["bench", "e2e", "--rate", "20", "--seconds", "120", "--json"]],
                         ids=["demo", "bench-e2e"])
def test_sigterm_stops_every_child_and_removes_temporary_data(args: list[str], tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "BIDDER_KAFKA_BOOTSTRAP"}
    env["TMPDIR"] = str(tmp)
    with (tmp_path / "stderr.log").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bidder", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            for p in _descendants(proc.pid):
                seen.setdefault(p.pid, p)
            names = " ".join(" ".join(p.cmdline()) for p in seen.values() if p.is_running())
            if "noida" in names and ("bidder worker" in names or "streams.echo" in names):
                break
            time.sleep(0.5)
        assert proc.poll() is None, ("the command ended before it started its children: "
                                     + (tmp_path / "stderr.log").read_text(errors="replace")[-2000:])
        time.sleep(2.0)  # mid-run: traffic flowing
        for p in _descendants(proc.pid):
            seen.setdefault(p.pid, p)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        assert code != 0  # interrupted, not a finished run
        end = time.monotonic() + 15
        while _alive(list(seen.values())) and time.monotonic() < end:
            time.sleep(0.2)
        assert not _alive(list(seen.values())), f"left running after SIGTERM: {_alive(list(seen.values()))}"
        left = sorted(p.name for p in tmp.iterdir() if p.name not in NOT_OURS)
        assert not left, f"temporary data left behind: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
