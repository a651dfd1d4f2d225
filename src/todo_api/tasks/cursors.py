"""Listing cursors: opaque, signed, and bound to the listing that made them.

A cursor is the position after a page's last task (its sort key and id, for a keyset `WHERE (key, id) > …`) plus
what it was made for (owner, sort, order, filters, page size), signed with a key derived from the signing secret.
A cursor that was tampered with, or that comes back with other parameters, is a 400 naming `cursor`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from todo_api.errors import ValidationFailed

_TIMES = frozenset({"created_at", "updated_at", "due_at"})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Position:
    key: Any  # the sort column's value of the last task seen (a datetime, str, bool, int or None)
    task_id: uuid.UUID


class Cursors:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"todo-api listing cursor\x00" + secret.encode()).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:16]

    def encode(self, listing: str, sort_by: str, position: Position) -> str:
        key = position.key
        if sort_by in _TIMES and key is not None:
            key = key.isoformat()
        payload = orjson.dumps({"l": listing, "k": key, "i": str(position.task_id)})
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, cursor: str, listing: str, sort_by: str) -> Position:
        """The position in `cursor`, if it was made by this API for this very listing."""
        try:
            encoded, _, signature = cursor.partition(".")
            payload = _unb64(encoded)
            if not hmac.compare_digest(_unb64(signature), self._mac(payload)):
                raise ValueError("bad signature")
            data = orjson.loads(payload)
            if data["l"] != listing:
                raise _Mismatch
            key = data["k"]
            if sort_by in _TIMES and key is not None:
                key = datetime.fromisoformat(key)
            return Position(key, uuid.UUID(data["i"]))
        except _Mismatch:
            raise ValidationFailed.one(
                ["query", "cursor"], "This cursor belongs to a listing with other parameters", "cursor_mismatch"
            ) from None
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            raise ValidationFailed.one(["query", "cursor"], "Not a cursor this API made", "cursor_invalid") from None


class _Mismatch(Exception):
    pass


def listing_fingerprint(owner: str, parameters: dict[str, Any]) -> str:
    """What a cursor is bound to: the owner and every parameter of the listing but the position."""
    canonical = orjson.dumps({"owner": owner, **parameters}, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(canonical, digest_size=12).hexdigest()
