"""What the queue hands out and how it schedules retries: :class:`RetryPolicy`,
:class:`Item` (a queued event), :class:`DeadItem` (a dead letter)."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

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


__all__ = ["RetryPolicy", "Item", "DeadItem", "Leased", "ids_of", "payloads_of", "REASON_MAX"]

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


def _slices(buf: bytes, offs: list):
    """``buf[offs[k]:offs[k + 1]]`` for each k, lazily."""
    return map(buf.__getitem__, map(slice, offs, offs[1:]))


class Leased(Sequence):
    """Events :meth:`DiskQueue.lease_packed` leased from fresh runs of packed rows, without an
    object per event: a sequence of the same :class:`Item` objects :meth:`DiskQueue.lease`
    would have returned, made the first time one is asked for (iteration, indexing), while
    :func:`ids_of`, :func:`payloads_of`, ``len`` and slicing (``items[i:j]``, another
    Leased) read the rows as they are.  The queue's settling methods (ack, retry,
    dead_letter, release) take it as they take a list.

    A run is ``(first id, payload, offsets, meta, meta offsets or None, enqueued_at,
    attempts, next_attempt_at, last_attempt_at, last_error)``: its ``len(offsets) - 1``
    events have ids ``first, first + 1, ...``; event j's payload is
    ``payload[offsets[j]:offsets[j + 1]]`` and its metadata the same slice of ``meta``
    (None when empty).  Offsets are absolute in the row's columns, so a slice shares them."""

    __slots__ = ("_runs", "_n", "_items")

    def __init__(self, runs: list, n: int) -> None:
        self._runs = runs
        self._n = n
        self._items: list | None = None

    def __len__(self) -> int:
        return self._n

    def _list(self) -> list:
        items = self._items
        if items is None:
            items = []
            for first, payload, po, meta, mo, enq, att, nxt, lat, lerr in self._runs:
                k = len(po) - 1
                pays = _slices(payload, po)
                if mo is None:
                    metas = repeat(None, k)
                else:
                    metas = [meta[a:b] or None for a, b in zip(mo, mo[1:])]
                items += map(Item, range(first, first + k), pays, metas, repeat(enq, k), repeat(att, k),
                             repeat(nxt, k), repeat(lat, k), repeat(lerr, k))
            self._items = items
        return items

    def __iter__(self):
        return iter(self._list())

    def __getitem__(self, i):
        if not isinstance(i, slice):
            return self._list()[i]
        start, stop, step = i.indices(self._n)
        if step != 1:
            return self._list()[i]
        if self._items is not None:
            return self._items[start:stop]
        runs = []
        at = 0
        for run in self._runs:
            k = len(run[2]) - 1
            a, b = max(start - at, 0), min(stop - at, k)
            if a < b:
                if a == 0 and b == k:
                    runs.append(run)
                else:
                    first, payload, po, meta, mo = run[:5]
                    runs.append((first + a, payload, po[a:b + 1], meta,
                                 None if mo is None else mo[a:b + 1], *run[5:]))
            at += k
            if at >= stop:
                break
        return Leased(runs, max(0, stop - start))

    def ids(self) -> list[int]:
        out: list[int] = []
        for run in self._runs:
            first = run[0]
            out += range(first, first + len(run[2]) - 1)
        return out

    def spans(self) -> list[tuple[bytes, list[int]]]:
        """``[(row payload, offsets)]``, one per run: the payloads as
        :func:`formats.syslog.frame_spans` takes them (no copy)."""
        return [(run[1], run[2]) for run in self._runs]

    def payloads(self) -> list[bytes]:
        out: list[bytes] = []
        for run in self._runs:
            out += _slices(run[1], run[2])
        return out

    def __repr__(self) -> str:
        return f"Leased({self._n} events in {len(self._runs)} runs)"


def ids_of(items) -> list[int]:
    """The ids of a lease (a :class:`Leased` or a list of :class:`Item`), in order."""
    if type(items) is Leased:
        return items.ids()
    return [it.id for it in items]


def payloads_of(items) -> list[bytes]:
    """The payloads of a lease (a :class:`Leased` or a list of :class:`Item`), in order."""
    if type(items) is Leased:
        return items.payloads()
    return [it.payload for it in items]


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
