"""What a worker writes and how it survives failing to: sends retried until delivered, dead letters written
once per record, and poison records (a handler that raises on them every time) isolated and dead-lettered.

Every rejected record goes to ``dead-letters`` and its delivery is awaited before the agent moves on,
so its offset is never committed first. Outputs are sent with ``force=True`` (immediately, not held
until the source event is acked) and their deliveries awaited by the agents at the end of each batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from bidder.decoding import Rejection
from bidder.settings import Settings
from streams.deadletter import dead_letter_record
from streams.metrics import WorkerMetrics
from streams.workarounds import exit_for_restart

__all__ = ["InjectedFaultError", "Outputs", "WorkerNotReadyError"]

log = logging.getLogger(__name__)

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
"""refusals of a record for its size: sending it again cannot help"""

Handler = Callable[[Sequence[Any]], Awaitable[None]]
"""an agent's handler of a batch of events"""


class WorkerNotReadyError(RuntimeError):
    """This process cannot go on (its state did not catch up): not a poison record; the agent exits."""


class InjectedFaultError(RuntimeError):
    """Raised for records holding ``fault_marker`` (reliability tests of the poison-record path)."""


@dataclass
class Outputs:
    """The output topics of one worker process, and the dead letters of its inputs."""

    settings: Settings
    topics: dict[str, faust.TopicT]
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    counts: Counter[str] = field(default_factory=Counter)
    clock: Callable[[], float] = time.time
    _dead_lettered: OrderedDict[tuple[str, int, int, int], None] = field(default_factory=OrderedDict)
    """(topic, partition, offset, hash of the value) of the last 10,000 records dead-lettered: each is
    written once"""

    async def send(self, topic: str, key: bytes | None, value: bytes, *, partition: int | None = None,
                   give_up: bool = False) -> Any:
        """Queue a record now (not attached to the current event); returns its delivery future.

        ``give_up``: raise instead of exiting when the record cannot be delivered, at once for a record
        the producer or broker refuses for its size (sending it again cannot help); dead letters use it.

        A failed delivery is sent again with the same bytes for about 40 s (the broker restarting,
        Tansu answering ``UnknownError`` after its restart): outcomes, labels, dead letters and drift
        alerts are idempotent by their ids, so a repeat is harmless, and an exception out of an agent
        would crash it (faust-streaming's ``Agent._execute_actor`` marks the actor crashed; the batch
        was already taken from the stream and is never answered). Past that the process exits (70)
        and its supervisor restarts it. The ledger (``billing``) is not retried here: a line the broker
        wrote but did not acknowledge would come back as a second line for the same click;
        ``streams.agents.handle_clicks`` exits on a failed write and the fold is rebuilt from the ledger."""
        first = await self._queue(topic, key, value, partition)
        if topic == "billing":
            return first
        return asyncio.ensure_future(self._delivered(first, topic, key, value, partition=partition, give_up=give_up))

    async def _queue(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> Any:
        return await self.topics[topic].send(key=key, value=value, partition=partition, force=True)

    async def _delivered(self, fut: Any, topic: str, key: bytes | None, value: bytes, *, partition: int | None,
                         give_up: bool) -> Any:
        """``fut``'s record metadata, the same bytes sent again while the delivery fails (see ``send``)."""
        for attempt in range(1, 41):
            try:
                return await fut
            except Exception as exc:  # any failed delivery is retried the same way
                if give_up and isinstance(exc, _TOO_LARGE):
                    raise
                log.warning("send to %s failed (%r); sending the same bytes again (%d)", topic, exc, attempt)
                self.metrics.send_retries.labels(topic=topic).inc()
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                fut = await self._queue(topic, key, value, partition)
        try:
            return await fut
        except Exception:
            if give_up:
                raise
            exit_for_restart("send to %s still failing after 40 tries; exiting so the worker is restarted",
                             topic, exc_info=True)

    async def dead_letter(self, message: Any, rejection: Rejection) -> None:
        """Write the record's dead letter and wait for it (so its offset is never committed first).

        Once per record: a handler tried again after it raised (``handle_isolating``) may refuse the same
        record again. A dead letter that cannot be written (the producer or broker refuses it, or the
        broker does not take it for ~40 s) does not stop the agent: it is counted
        (``bidder_dead_letter_failures_total``), logged with the record's topic, partition and offset,
        and the agent moves on."""
        # the value's hash too: a memory-only broker that came back empty hands the same offsets out again
        where = (message.topic, int(message.partition), int(message.offset), hash(message.value))
        if where in self._dead_lettered:
            self.counts["dead_letter_repeats"] += 1
            return
        s = self.settings
        record = dead_letter_record(
            rejection, topic=message.topic, partition=message.partition, offset=message.offset,
            key=message.key, value=message.value, ts=self.clock(), max_bytes=s.dead_letter_max_bytes,
            keep_bytes=s.dead_letter_keep_bytes)
        try:
            await (await self.send("dead-letters", message.topic.encode(), record, give_up=True))
        except Exception as exc:
            self.counts["dead_letter_failed"] += 1
            self.metrics.dead_letter_failures.labels(topic=message.topic).inc()
            log.critical("dead letter of %s[%d]@%d (%s: %s) could not be written (%r, %d bytes); the record is "
                         "skipped", message.topic, message.partition, message.offset, rejection.reason,
                         rejection.detail[:200], exc, len(record))
            return
        self._dead_lettered[where] = None
        while len(self._dead_lettered) > 10_000:
            self._dead_lettered.popitem(last=False)
        self.counts[f"dead_letter:{rejection.reason}"] += 1
        self.metrics.dead_letters.labels(topic=message.topic, reason=rejection.reason).inc()
        log.warning("dead-lettered %s[%d]@%d: %s (%s)", message.topic, message.partition, message.offset,
                    rejection.reason, rejection.detail[:500])

    # -- poison records ------------------------------------------------------------------------------
    async def handle_isolating(self, topic: str, handler: Handler,
                               events: Sequence[Any]) -> None:
        """``handler(events)``; if it raises, each record alone, up to ``poison_attempts`` times.

        A record whose handling raises every time (a poison record) is dead-lettered with the
        exception (``handler_error``) and the agent goes on with the next; its offset is then
        committed like any other, so a restarted worker does not meet it again. Only the handlers'
        decision code can raise here: sends retry by themselves or exit (``send``), and
        :class:`WorkerNotReadyError` (this process cannot go on) is raised through. Effects of a batch that
        raised half-way are made again for the records tried alone: outputs are idempotent by their
        ids, dead letters are written once per record, and ``handle_clicks`` writes nothing until
        every decision of its batch is made."""
        try:
            await handler(events)
            return
        except WorkerNotReadyError:
            raise
        except Exception as exc:
            log.warning("%s: a batch of %d records raised %r; trying each alone", topic, len(events), exc)
        attempts = self.settings.poison_attempts
        for ev in events:
            for attempt in range(1, attempts + 1):
                try:
                    await handler([ev])
                    break
                except WorkerNotReadyError:
                    raise
                except Exception as exc:
                    self.metrics.handler_retries.labels(topic=topic).inc()
                    if attempt < attempts:
                        await asyncio.sleep(0.05 * attempt)
                        continue
                    m = ev.message
                    log.error("%s[%d]@%d raised on each of %d tries alone; dead-lettering it", m.topic,
                              m.partition, m.offset, attempts, exc_info=True)
                    self.counts["poison_records"] += 1
                    await self.dead_letter(m, Rejection(
                        "handler_error", f"{type(exc).__name__}: {exc} (raised on each of {attempts} tries)"))

    def with_fault_marker(self, handler: Handler, *, topic: str = ""
                          ) -> Handler:
        """``handler``, raising :class:`InjectedFaultError` for a batch holding a record whose value contains
        ``fault_marker``, and waiting before each record when ``fault_slow`` names ``topic`` (reliability
        tests only; the handler itself when neither is set)."""
        marker = self.settings.fault_marker.encode()
        slow_topic, _, delay = self.settings.fault_slow.partition(":")
        slow_s = float(delay) if slow_topic == topic and topic else 0.0
        if not marker and not slow_s:
            return handler

        async def faulty(events: Sequence[Any]) -> None:
            for ev in events:
                m = ev.message
                if marker and marker in (m.value or b""):
                    raise InjectedFaultError(f"{m.topic}[{m.partition}]@{m.offset} holds the fault marker")
            if slow_s:
                await asyncio.sleep(slow_s * len(events))
            await handler(events)

        return faulty

