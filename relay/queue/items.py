"""What the queue hands out and how it schedules retries: :class:`RetryPolicy`,
:class:`Item` (a queued event), :class:`DeadItem` (a dead letter)."""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..secrets import redact

try:  # orjson is a project dependency; fall back to json so this module stands alone
    import orjson as _orjson

    _dumps = _orjson.dumps
    _loads = _orjson.loads
except ImportError:  # pragma: no cover
    import json as _json

    def _dumps(obj: dict) -> bytes:
        return _json.dumps(obj, separators=(",", ":")).encode()

    def _loads(raw: bytes):
        return _json.loads(raw)


__all__ = ["RetryPolicy", "Item", "DeadItem", "REASON_MAX"]

REASON_MAX = 2000  # characters of error text / reason kept per row


@dataclass(frozen=True)
class RetryPolicy:
    """Retry schedule.  Defaults follow the RhythmX integration guide: 60 s base, doubling,
    1 h cap, 5 attempts.  ``max_attempts=0`` means retry forever."""

    base: float = 60.0
    factor: float = 2.0
    cap: float = 3600.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("RetryPolicy: base and cap must be >= 0")
        if self.factor < 1:
            raise ValueError("RetryPolicy: factor must be >= 1")
        if self.max_attempts < 0:
            raise ValueError("RetryPolicy: max_attempts must be >= 0 (0 = forever)")

    def ceiling(self, attempts: int) -> float:
        """Upper bound of the delay after the ``attempts``-th failure (attempts >= 1)."""
        n = max(1, attempts) - 1
        try:
            raw = self.base * self.factor ** n
        except OverflowError:
            raw = float("inf")
        return min(self.cap, raw)

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay: uniform(0, min(cap, base * factor ** (attempts - 1)))."""
        return (rng or random).uniform(0.0, self.ceiling(attempts))


class Item:
    """A queued row as returned by :meth:`DiskQueue.lease` and :meth:`DiskQueue.list`.
    ``meta`` is decoded lazily."""

    __slots__ = ("id", "payload", "_meta_raw", "_meta", "enqueued_at", "attempts",
                 "next_attempt_at", "last_attempt_at", "last_error")

    def __init__(self, id: int, payload: bytes, meta_raw: bytes | None, enqueued_at: float,
                 attempts: int, next_attempt_at: float, last_attempt_at: float | None,
                 last_error: str | None) -> None:
        self.id = id
        self.payload = payload
        self._meta_raw = meta_raw
        self._meta = None
        self.enqueued_at = enqueued_at
        self.attempts = attempts
        self.next_attempt_at = next_attempt_at
        self.last_attempt_at = last_attempt_at
        self.last_error = last_error

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = _loads(self._meta_raw) if self._meta_raw else {}
        return self._meta

    def __repr__(self) -> str:
        return (f"Item(id={self.id}, attempts={self.attempts}, "
                f"next_attempt_at={self.next_attempt_at}, payload={self.payload[:40]!r})")


@dataclass
class DeadItem:
    """A dead-lettered row (:meth:`DiskQueue.list` with ``dlq=True``)."""

    id: int
    queue_id: int
    payload: bytes
    meta: dict
    enqueued_at: float
    attempts: int
    last_attempt_at: float | None
    last_error: str | None
    reason: str
    dead_at: float


def _item_id(item: "Item") -> int:
    return item.id


def _excerpt(text: str | None) -> str | None:
    """A failure reason as stored (dead letters, last_error): credentials removed, bounded."""
    if text is None:
        return None
    text = redact(str(text))
    return text if len(text) <= REASON_MAX else text[:REASON_MAX] + "...[truncated]"
