"""The dead-letter record: why an event was refused, where it came from, and its original bytes."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from bidder.decoding import Rejection

__all__ = ["dead_letter_record", "original_bytes"]


def dead_letter_record(
    rejection: Rejection, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    ts: float,
) -> bytes:
    """JSON for ``dead-letters``; bytes travel base64-encoded because they may not be UTF-8."""
    return orjson.dumps({
        "v": 1,
        "type": "dead_letter",
        "reason": rejection.reason,
        "detail": rejection.detail,
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "key_b64": None if key is None else base64.b64encode(key).decode(),
        "value_b64": None if value is None else base64.b64encode(value).decode(),
        "ts": ts,
    })


def original_bytes(record: dict[str, Any]) -> bytes | None:
    """The refused value, as it arrived."""
    v = record.get("value_b64")
    return None if v is None else base64.b64decode(v)
