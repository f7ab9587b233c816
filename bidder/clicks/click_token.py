"""Signed click tokens: a click carries what its auction decided, vouched for by the worker that ran it.

Each winner of an outcome gets a token, an HMAC-SHA256 (truncated to 128 bits, base64url) over the
query id, slot, listing, shop, price and the auction's time, keyed with a secret the workers share
(``BIDDER_CLICK_TOKEN_KEY``). The click carries the slot, price, auction time and token back, as an
ad server's click URL does; the bill agent verifies the token instead of looking the auction up, so no
worker needs to read every partition of ``auctions`` to price a click (``docs/capacity.md``, step 2).
A click whose fields do not match its token (a forged price, another shop, a listing that did not win,
a query that never ran) is refused ``bad_token``.

Key rotation: tokens are signed with the first key and verified against every key given; add the new
key in front, wait a click window, drop the old one.

>>> signer = ClickSigner([b"k1"])
>>> ad = {"slot": 0, "listing_id": 103, "shop_id": 7, "price": 0.25, "shown_at": 1000.5}
>>> token = signer.sign("q1", **ad)
>>> len(token), signer.verify(token, "q1", **ad)
(22, True)
>>> signer.verify(token, "q1", **{**ad, "price": 0.26})   # another price
False
>>> ClickSigner([b"k2", b"k1"]).verify(token, "q1", **ad)   # rotated: the old key still verifies
True
>>> ClickSigner([b"k2"]).verify(token, "q1", **ad)
False
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from collections.abc import Sequence

__all__ = ["DEV_KEY", "ClickSigner"]

DEV_KEY = "bidder-dev-click-token-key"
"""the key of the embedded default (``Settings.click_token_key``); a deployment sets its own (a Secret)"""

_FIELDS = struct.Struct("<qqqdd")
_TOKEN_BYTES = 16


class ClickSigner:
    """Signs an auction's winners and verifies the clicks on them."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(not k for k in keys):
            raise ValueError("at least one non-empty click token key is needed")
        self._keys = tuple(keys)
        self._signing = hmac.new(self._keys[0], digestmod=hashlib.sha256)
        self._verifying = tuple(hmac.new(k, digestmod=hashlib.sha256) for k in self._keys)

    @staticmethod
    def _message(query_id: str, fields: tuple[int, int, int, float, float]) -> bytes:
        return query_id.encode() + b"\x00" + _FIELDS.pack(*fields)

    @staticmethod
    def _digest(keyed: hmac.HMAC, message: bytes) -> bytes:
        mac = keyed.copy()  # the key's padded state is hashed once, in __init__
        mac.update(message)
        return mac.digest()[:_TOKEN_BYTES]

    def sign(self, query_id: str, *, slot: int, listing_id: int, shop_id: int, price: float, shown_at: float) -> str:
        """The token of one winner: ``price`` and ``shown_at`` exactly as the outcome writes them."""
        digest = self._digest(self._signing, self._message(query_id, (slot, listing_id, shop_id, price, shown_at)))
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify(self, token: str, query_id: str, *, slot: int, listing_id: int, shop_id: int, price: float,
               shown_at: float) -> bool:
        """Whether ``token`` was signed (with any of the keys) over exactly these fields."""
        try:
            given = base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4))
        except (ValueError, UnicodeEncodeError):
            return False
        if len(given) != _TOKEN_BYTES:
            return False
        try:
            message = self._message(query_id, (slot, listing_id, shop_id, price, shown_at))
        except (struct.error, UnicodeEncodeError):  # out of int64 range, a lone surrogate
            return False
        return any(hmac.compare_digest(self._digest(k, message), given) for k in self._verifying)
