"""CPU time of named processes over a measured window (psutil): CPU per query, idle cost.

A latency figure alone hides a process that spins: on a 2-core machine the broker, the traffic driver
and the worker share the cores, so a benchmark reports each one's CPU seconds over the window, divided
by what it served (``bidder bench e2e``'s ``cpu_ms_per_query``, ``bidder bench idle``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

import psutil

__all__ = ["CpuMeter", "listener_pid", "local_broker_pid"]


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine (the embedded broker), or None."""
    with contextlib.suppress(psutil.AccessDenied):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    return None


def local_broker_pid(bootstrap: str) -> int | None:
    """The process of a broker on this machine's loopback (``127.0.0.1:PORT``), else None."""
    if not bootstrap.startswith(("127.0.0.1:", "localhost:")):
        return None
    return listener_pid(int(bootstrap.rsplit(":", 1)[1]))


def _cpu_s(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(t.user + t.system)


class CpuMeter:
    """CPU seconds (user + system, all threads) each process used between :meth:`start` and :meth:`stop`.

    ``pids`` maps a name to a process id (None: not measured, e.g. a broker on another machine) or to a list
    of them (a group of processes, e.g. the workers of one consumer group): a group's figure is the sum, its
    members' figures are in :attr:`parts` (:meth:`part_shares`, :meth:`part_ms_per`).
    """

    def __init__(self, pids: Mapping[str, int | Sequence[int] | None]) -> None:
        self._members: dict[str, list[psutil.Process]] = {}
        for name, pid in pids.items():
            if pid is not None:
                self._members[name] = [psutil.Process(p) for p in ([pid] if isinstance(pid, int) else pid)]
        self._names = list(pids)
        self._start: dict[str, list[float | None]] = {}
        self._t0 = 0.0
        self.wall_s = 0.0
        self.seconds: dict[str, float | None] = {}
        self.parts: dict[str, list[float | None]] = {}
        """CPU seconds of each process of a name, in the order given"""

    def start(self) -> CpuMeter:
        self._start = {name: [_cpu_s(p) for p in procs] for name, procs in self._members.items()}
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float | None]:
        """CPU seconds per name over the window (None where unmeasured or a process is gone)."""
        self.wall_s = time.monotonic() - self._t0
        self.parts = {}
        for name, procs in self._members.items():
            ends = [_cpu_s(p) for p in procs]
            self.parts[name] = [None if end is None or begin is None else end - begin
                                for end, begin in zip(ends, self._start.get(name, [None] * len(procs)), strict=True)]
        out: dict[str, float | None] = dict.fromkeys(self._names)
        for name, part in self.parts.items():
            out[name] = None if not part or None in part else sum(v for v in part if v is not None)
        self.seconds = out
        return out

    def share_of_core(self) -> dict[str, float | None]:
        """CPU seconds / wall seconds per name (1.0 = one core busy)."""
        return {k: None if v is None else round(v / max(self.wall_s, 1e-9), 4) for k, v in self.seconds.items()}

    def ms_per(self, n: int) -> dict[str, float | None]:
        """CPU milliseconds per unit of work (e.g. per answered query)."""
        return {k: _ms_per(v, n) for k, v in self.seconds.items()}

    def part_shares(self, name: str) -> list[float | None]:
        """CPU seconds / wall seconds of each process of ``name``."""
        return [None if v is None else round(v / max(self.wall_s, 1e-9), 4) for v in self.parts.get(name, [])]

    def part_ms_per(self, name: str, n: int) -> list[float | None]:
        """CPU milliseconds of each process of ``name`` per unit of work done by all of them."""
        return [_ms_per(v, n) for v in self.parts.get(name, [])]


def _ms_per(seconds: float | None, n: int) -> float | None:
    return None if seconds is None or n <= 0 else round(seconds * 1000.0 / n, 3)
