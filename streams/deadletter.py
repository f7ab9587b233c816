"""The dead-letter record: why an event was refused, where it came from, and its original bytes.

A dead letter always fits on the topic. The original's bytes travel base64-encoded (they may not be
UTF-8), which adds a third: a refused 900 KB record would make a 1.2 MB dead letter, over the
producer's ``max_request_size`` and the broker's ``message.max.bytes`` (1 MB by default), and a dead
letter that cannot be written stops the agent on the record it was refusing. So when the whole record
would pass ``max_bytes`` (``BIDDER_DEAD_LETTER_MAX_BYTES``), it keeps the original's size and sha256
and only its first ``keep_bytes`` (``BIDDER_DEAD_LETTER_KEEP_BYTES``, key and value alike), with
``"truncated": true``; the reason stays the original reason. Every dead letter carries
``value_size``/``value_sha256`` so a truncated one can still be matched to the record it came from.

>>> from bidder.decoding import Rejection
>>> import orjson
>>> big = b"x" * 5000
>>> rec = orjson.loads(dead_letter_record(Rejection("too_large", "5000 bytes"), topic="queries", partition=0,
...     offset=7, key=b"q1", value=big, ts=1.0, max_bytes=4096, keep_bytes=100))
>>> rec["truncated"], rec["value_size"], len(original_bytes(rec)), rec["reason"]
(True, 5000, 100, 'too_large')
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from bidder.decoding import Rejection

__all__ = ["DETAIL_MAX_CHARS", "dead_letter_record", "original_bytes"]

DETAIL_MAX_CHARS = 2000
"""a rejection's detail is cut to this many characters (an exception text can be long)"""


def _b64(data: bytes | None, keep: int | None) -> str | None:
    if data is None:
        return None
    return base64.b64encode(data if keep is None else data[:keep]).decode()


def dead_letter_record(
    rejection: Rejection, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    ts: float, max_bytes: int = 900_000, keep_bytes: int = 65_536,
) -> bytes:
    """JSON for ``dead-letters``, at most ``max_bytes`` long whatever the original's size."""
    detail = rejection.detail if len(rejection.detail) <= DETAIL_MAX_CHARS else (
        rejection.detail[:DETAIL_MAX_CHARS] + f"... ({len(rejection.detail)} characters)")
    record: dict[str, Any] = {
        "v": 1,
        "type": "dead_letter",
        "reason": rejection.reason,
        "detail": detail,
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "key_b64": _b64(key, None),
        "value_b64": _b64(value, None),
        "value_size": None if value is None else len(value),
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "truncated": False,
        "ts": ts,
    }
    out = orjson.dumps(record)
    if len(out) <= max_bytes:
        return out
    record.update(key_b64=_b64(key, keep_bytes), value_b64=_b64(value, keep_bytes), truncated=True,
                  key_size=None if key is None else len(key))
    out = orjson.dumps(record)
    if len(out) > max_bytes:
        raise ValueError(f"a truncated dead letter is {len(out)} bytes, over max_bytes={max_bytes}: "
                         f"keep_bytes={keep_bytes} is too large for it")
    return out


def original_bytes(record: dict[str, Any]) -> bytes | None:
    """The refused value as it arrived (its first bytes only when ``record["truncated"]``)."""
    v = record.get("value_b64")
    return None if v is None else base64.b64decode(v)
