"""Packed rows: up to ``PACK_EVENTS`` events / ``PACK_BYTES`` bytes in one queue row,
payloads and metadata concatenated, their lengths in ``lens`` (``array("I")``: the n payload
lengths, then the n metadata lengths).  Pure functions, no I/O: the ingest workers pack
what they render (:func:`pack_rows`) and the queue stores the rows as they are."""
from __future__ import annotations

from array import array
from bisect import bisect_right
from itertools import accumulate

from .items import _dumps

__all__ = ["PACK_EVENTS", "PACK_BYTES", "pack_rows", "unpack_rows", "encode_metas"]

PACK_EVENTS = 256          # events per packed row (at most)
PACK_BYTES = 256 << 10     # payload bytes per packed row (soft limit: one event may exceed it)


def _arr(blob: bytes | None) -> array:
    a = array("I")
    if blob:
        a.frombytes(blob)
    return a


def _row_live(n: int, payload_len: int, lens: bytes | None, done: bytes | None) -> tuple[int, int]:
    """(events, payload bytes) of a queue row that are not settled yet."""
    if not done:
        return n, payload_len
    d = _arr(done)
    if n == 1:
        return 0, 0
    ln = _arr(lens)
    return n - len(d), payload_len - sum(ln[o] for o in d)


def _split(row) -> list[tuple[bytes, bytes | None]]:
    """A queue row (``_Q_COLS`` order) -> [(payload, meta_raw)] for each of its n events."""
    payload, meta, n, lens = row[1], row[2], row[8], row[9]
    if n == 1:
        return [(payload, meta)]
    ln = _arr(lens)
    out = []
    p = m = 0
    for k in range(n):
        pl = ln[k]
        ml = ln[n + k]
        out.append((payload[p:p + pl], meta[m:m + ml] if ml else None))
        p += pl
        m += ml
    return out


def pack_rows(payloads: list, metas: list, sizes: list | None = None) -> list[tuple]:
    """Pack events (parallel lists: payload bytes, metadata as JSON bytes or None) into queue
    rows of up to PACK_EVENTS events / PACK_BYTES bytes (an event larger than that gets a row
    of its own): ``[(n, payload, meta, lens, payload_bytes)]`` for :meth:`DiskQueue.put_rows`.
    Pure (no I/O): the ingest workers call it."""
    if sizes is None:
        sizes = list(map(len, payloads))
    total = len(payloads)
    cum = list(accumulate(sizes))
    out = []
    i = 0
    while i < total:
        base = cum[i - 1] if i else 0
        j = min(total, i + PACK_EVENTS)
        if cum[j - 1] - base > PACK_BYTES:
            j = max(i + 1, bisect_right(cum, base + PACK_BYTES, i, j))
        n = j - i
        if n == 1:
            out.append((1, payloads[i], metas[i], None, sizes[i]))
        else:
            ms = metas[i:j]
            lens = array("I", sizes[i:j])
            lens.extend([len(m) if m else 0 for m in ms])
            meta = b"".join([m for m in ms if m])
            out.append((n, b"".join(payloads[i:j]), meta or None, lens.tobytes(), cum[j - 1] - base))
        i = j
    return out


def encode_metas(metas: list, dumps=_dumps) -> list:
    """Queue metadata -> what a row stores: a dict as JSON bytes, bytes as they are, an empty
    one as None.  Consecutive events mostly share one dict (relay.pipeline.Pipeline.stage_into
    never mutates it), encoded once."""
    out = []
    last = enc = None
    for m in metas:
        if not m:
            out.append(None)
        elif type(m) is bytes:
            out.append(m)
        else:
            if m is not last:
                last, enc = m, dumps(m)
            out.append(enc)
    return out


def unpack_rows(rows: list) -> list[tuple[bytes, bytes | None]]:
    """The inverse of :func:`pack_rows`: ``[(payload, meta)]``."""
    out = []
    for n, payload, meta, lens, _ in rows:
        out += _split((0, payload, meta, 0, 0, 0, 0, 0, n, lens))
    return out


def _pack(items: list[tuple[bytes, bytes | None]]) -> tuple[bytes, bytes | None, bytes | None]:
    """[(payload, meta_raw)] -> (payload, meta, lens) columns of one row."""
    if len(items) == 1:
        return items[0][0], items[0][1], None
    plens = [len(p) for p, _ in items]
    mlens = [len(m) if m else 0 for _, m in items]
    metas = b"".join([m for _, m in items if m])
    return b"".join([p for p, _ in items]), metas or None, array("I", plens + mlens).tobytes()


def _as_bytes(payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
