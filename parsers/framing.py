"""Incremental RFC 6587 deframer for syslog over TCP (and TLS, RFC 5425).

Pure decoding: bytes in, frames out.  No sockets, no asyncio, no I/O.  One
:class:`Deframer` per connection; call :meth:`Deframer.feed` with every read and
:meth:`Deframer.close` at end of stream.  Frames are the SYSLOG-MSG bytes,
without MSG-LEN or trailer.

Framing is decided per frame by the frame's first byte (after blank separators):

* ``1``-``9``: octet counting, ``MSG-LEN SP SYSLOG-MSG`` with MSG-LEN =
  NONZERO-DIGIT *DIGIT, at most :data:`MAX_LEN_DIGITS` digits.  A digit run that
  is longer, starts with ``0``, or is not followed by SP is *not* framing: it is
  reported as ``bad_length`` and the bytes are read as a non-transparent
  (line) frame, like syslog-ng does with ``99999999999 a``.
* ``<`` or any other printable byte (or a byte >= 0x80): non-transparent
  framing, ``SYSLOG-MSG TRAILER``.  The trailer is LF (``trailer=b"\\n"``,
  default) or NUL (``trailer=b"\\0"``); with ``nul_trailer=True`` (default) NUL
  also ends a frame when the trailer is LF.  A CR just before an LF is stripped
  (CRLF senders).
* blank bytes (SP, TAB, CR, LF, NUL) between frames are skipped silently.
* other control bytes (C0 except the blanks, and DEL) at a frame start are
  junk: reported as ``garbage``, then discarded up to the next *resync point*:
  the byte after the next trailer, a ``<PRI>`` start (``<`` + 1-3 digits +
  ``>``), or an octet frame start ``MSG-LEN SP <PRI>``, whichever comes first.

Octet context: right after an octet-counted frame, the next frame must look
like a frame: a digit run, or ``<PRI>``.  Anything else is reported as
``garbage`` (a sender whose MSG-LEN is wrong, e.g. counting characters instead
of UTF-8 bytes, lands us mid-message) and resynced as above, so an
octet-counted stream without LFs cannot wedge.  The context ends with the next
non-transparent frame.  Consequence: a line without PRI straight after an
octet-counted frame on the same connection is treated as garbage.  Limit (of
RFC 6587 itself): if a too-short MSG-LEN leaves stray bytes ending in digits,
they run into the next MSG-LEN (``..."1" + "12 <13>..."`` reads as ``112``), and
that frame comes out wrong; the stream still recovers after it.

Speed: per frame one ``bytes.find`` (memchr) and one slice for LF frames, one
short ``find`` + ``int`` + slice for octet-counted frames; no per-byte Python
loops except over blank separators and junk.  See ``bench/bench_framing.py``.

Size limits and memory: the deframer never holds more than ``max_frame`` +
:data:`SLACK` bytes between calls, whatever the input (see
:attr:`Deframer.buffered`).

* An octet-counted frame with MSG-LEN > ``max_frame``: ``oversize="truncate"``
  emits its first ``max_frame`` bytes as soon as they are there and discards
  the rest as it arrives (streaming, nothing buffered); ``oversize="drop"``
  discards the whole frame the same way.
* A non-transparent frame longer than ``max_frame``: the same, and the rest is
  discarded up to the next trailer.

Reporting: every oversize, bad length, garbage run and truncation at close is
counted in :attr:`Deframer.stats` (keys :data:`PROBLEM_KINDS`, plus
``discarded_bytes`` and ``problems_dropped``) and recorded as a
:class:`FrameProblem` ``(kind, offset, detail)``; :meth:`Deframer.drain_problems`
returns and clears the records.  ``offset`` is the 0-based byte offset in the
connection's stream.  At most :data:`MAX_PENDING_PROBLEMS` records are kept
between drains (the counters are always complete).

End of stream (:meth:`Deframer.close`): a non-transparent frame without its
trailer is still a message and is returned (CR stripped).  An octet-counted
frame cut short is *not* returned as a valid frame: it is reported as
``partial_at_close`` and dropped, or, with ``close(partial=True)``, reported
*and* returned (as the last frame of the list).  A stream that ends inside the
discarded tail of an oversize octet frame is reported as ``partial_at_close``
too.  After ``close()`` the deframer is back at its initial state (stats kept).

Decoding only: the encoders (octet counting and LF framing for output) live in
formats/syslog.py (``frame_batch``, ``frame_octet``, ``frame_lf``, ``frame``).
"""
from __future__ import annotations

from typing import NamedTuple

from .native import lf_frames as _lf_frames    # the native accelerator's simple-LF loop, or None

__all__ = [
    "Deframer",
    "FrameProblem",
    "MAX_LEN_DIGITS",
    "SLACK",
    "PROBLEM_KINDS",
    "MAX_PENDING_PROBLEMS",
]

#: MSG-LEN with more digits than this is not framing (count < 1e9).
MAX_LEN_DIGITS = 9
#: Bytes buffered beyond ``max_frame`` at most (MSG-LEN + SP, or a CR, or a
#: short tail kept while resyncing junk).
SLACK = 16
#: Problem kinds, also the counter keys in :attr:`Deframer.stats`.
PROBLEM_KINDS = ("oversize_truncated", "oversize_dropped", "bad_length", "garbage", "partial_at_close")
#: Problem records kept between :meth:`Deframer.drain_problems` calls.
MAX_PENDING_PROBLEMS = 1000

_START, _SKIP, _DISCARD, _JUNK = 0, 1, 2, 3
_BLANK = frozenset(b" \t\r\n\0")
_JUNK_TAIL = MAX_LEN_DIGITS + 1 + 5  # "123456789 <191" is the longest undecided candidate
#: Deframe a read after a pending line where it lies (Deframer.feed); False: the whole read is
#: appended to the pending bytes first (the reference the tests compare with).
_SPLIT_HEAD = True


class FrameProblem(NamedTuple):
    """One reported framing problem."""
    kind: str      # one of PROBLEM_KINDS
    offset: int    # 0-based byte offset in the stream where it was seen
    detail: str    # words for a human


def _pri_ok(buf: bytes, q: int, n: int) -> int:
    """Does ``buf[q:]`` (which starts with '<') start with ``<PRI>`` (1-3 digits)?
    1 yes, 0 no, -1 cannot tell yet (buffer ends first)."""
    j = q + 1
    k = 0
    while j < n:
        c = buf[j]
        if 48 <= c <= 57:
            k += 1
            if k > 3:
                return 0
        elif c == 62:
            return 1 if k else 0
        else:
            return 0
        j += 1
    return -1


class Deframer:
    """Incremental RFC 6587 deframer for one TCP connection (see module doc).

    ``feed(data)`` returns the complete frames found so far; ``close()`` the
    trailing one at end of stream.  Problems go to :attr:`stats` and
    :meth:`drain_problems`.
    """

    __slots__ = ("max_frame", "oversize", "trailer", "nul_trailer", "stats",
                 "_trunc", "_tb", "_nul", "_pend", "_need", "_wait",
                 "_state", "_skip", "_octx", "_fed", "_problems")

    def __init__(self, max_frame: int = 65536, oversize: str = "truncate",
                 trailer: bytes = b"\n", nul_trailer: bool = True) -> None:
        if not isinstance(max_frame, int) or max_frame < 1:
            raise ValueError("max_frame must be a positive int")
        if oversize not in ("truncate", "drop"):
            raise ValueError("oversize must be 'truncate' or 'drop'")
        if trailer not in (b"\n", b"\0"):
            raise ValueError("trailer must be b'\\n' or b'\\0'")
        self.max_frame = max_frame
        self.oversize = oversize
        self.trailer = trailer
        self.nul_trailer = bool(nul_trailer)
        self._trunc = oversize == "truncate"
        self._tb = trailer
        self._nul = self.nul_trailer and trailer != b"\0"   # NUL as a second trailer
        self.stats: dict[str, int] = dict.fromkeys(PROBLEM_KINDS, 0)
        self.stats["discarded_bytes"] = 0
        self.stats["problems_dropped"] = 0
        self._problems: list[FrameProblem] = []
        self._fed = 0
        self._reset()

    def _reset(self) -> None:
        self._pend = bytearray()        # pending bytes: start of an incomplete frame, or junk tail
        self._need = 0                  # process again once len(_pend) >= _need
        self._wait = False              # ... or once a trailer arrives
        self._state = _START
        self._skip = 0                  # bytes still to discard in _SKIP
        self._octx = False              # last frame was octet-counted

    # ------------------------------------------------------------------ API

    @property
    def buffered(self) -> int:
        """Bytes held between calls (always <= max_frame + SLACK)."""
        return len(self._pend)

    def drain_problems(self) -> list[FrameProblem]:
        """Problem records since the last call, oldest first; clears them."""
        p = self._problems
        self._problems = []
        return p

    def feed(self, data: bytes) -> list[bytes]:
        """Take one read; return the frames it completed, in order."""
        out: list[bytes] = []
        n = len(data)
        if not n:
            return out
        if type(data) is not bytes:
            data = bytes(data)
        self._fed += n
        st = self._state
        if st == _SKIP:
            k = self._skip
            if n <= k:
                self._skip = k - n
                self.stats["discarded_bytes"] += n
                return out
            self.stats["discarded_bytes"] += k
            self._skip = 0
            self._state = _START
            data = data[k:]
        elif st == _DISCARD:
            e = self._find_end(data, 0)
            if e < 0:
                self.stats["discarded_bytes"] += n
                return out
            self.stats["discarded_bytes"] += e + 1
            self._state = _START
            data = data[e + 1:]
            if not data:
                return out
        pend = self._pend
        if pend:
            e = self._find_end(data, 0) if self._wait and self._state == _START else -1
            if e >= 0 and _SPLIT_HEAD:
                # the usual case: the pending start of a line ends at the first trailer of this
                # read.  Only that frame is put together; the rest of the read is deframed where
                # it lies (copying a 1 MiB read into the buffer twice was 2x its bytes, and
                # fresh memory for each copy).  Same frames and problems (tests/test_framing.py).
                rest = n - e - 1
                pend += memoryview(data)[:e + 1]
                head = bytes(pend)
                pend.clear()
                self._fed -= rest       # stream offsets: head ends e + 1 bytes into this read
                self._run(head, out, False)
                self._fed += rest
                if not rest:
                    return out
                if not pend and self._state == _START:
                    self._run(data, out, False, start=e + 1)
                    return out
                self._fed -= rest       # (not reached: a frame ends at that trailer) the rest as a read
                out += self.feed(data[e + 1:])
                return out
            pend += data
            if self._state == _START and len(pend) < self._need and (
                    not self._wait or (self._tb not in data and not (self._nul and b"\0" in data))):
                return out
            buf = bytes(pend)
            pend.clear()
        else:
            buf = data
        self._run(buf, out, False)
        return out

    def close(self, partial: bool = False) -> list[bytes]:
        """End of stream: return the last unterminated non-transparent frame, if
        any.  An octet-counted frame cut short is reported (``partial_at_close``)
        and returned only when ``partial`` is true.  Resets the deframer."""
        out: list[bytes] = []
        if self._state == _SKIP:
            self._problem("partial_at_close", self._fed,
                          f"stream ended {self._skip} bytes short of the end of an oversize octet-counted frame")
        elif self._pend:
            buf = bytes(self._pend)
            self._pend.clear()
            self._run(buf, out, True, partial)
        self._reset()
        return out

    # ------------------------------------------------------------ internals

    def _problem(self, kind: str, offset: int, detail: str) -> None:
        self.stats[kind] += 1
        if len(self._problems) < MAX_PENDING_PROBLEMS:
            self._problems.append(FrameProblem(kind, offset, detail))
        else:
            self.stats["problems_dropped"] += 1

    def _find_end(self, buf: bytes, p: int) -> int:
        """Index of the next trailer byte at or after p, or -1."""
        e = buf.find(self._tb, p)
        if self._nul:
            z = buf.find(b"\0", p, e if e >= 0 else len(buf))
            if z >= 0:
                return z
        return e

    def _resync(self, buf: bytes, p: int) -> int:
        """Next resync point in junk starting at p: a frame start index, or -1
        if there is none in buf (the caller keeps a short tail)."""
        n = len(buf)
        e = self._find_end(buf, p)
        lim = e if e >= 0 else n
        q = buf.find(b"<", p, lim)
        while q >= 0:
            ok = _pri_ok(buf, q, n)
            if ok < 0:          # buffer ends inside a candidate: decide with more data
                return -1
            if ok:
                s = q - 1       # "MSG-LEN SP <PRI>"?
                if s > p and buf[s] == 32:
                    d = s
                    while d > p and 48 <= buf[d - 1] <= 57:
                        d -= 1
                    if 0 < s - d <= MAX_LEN_DIGITS and buf[d] != 48:
                        return d
                return q
            q = buf.find(b"<", q + 1, lim)
        return e + 1 if e >= 0 else -1

    def _junk(self, buf: bytes, p: int, eof: bool, scan: int) -> int:
        """Discard junk from p, looking for a resync point from scan; return the
        resync index, or -1 after keeping a short tail (state _JUNK)."""
        r = self._resync(buf, scan)
        if r >= 0:
            self.stats["discarded_bytes"] += r - p
            self._state = _START
            return r
        n = len(buf)
        keep = n if eof else max(scan, n - _JUNK_TAIL)
        self.stats["discarded_bytes"] += keep - p
        self._state = _JUNK
        if keep < n:
            self._pend += memoryview(buf)[keep:]
        return -1

    def _leave(self, buf: bytes, pos: int, need: int, wait: bool) -> None:
        self._pend += memoryview(buf)[pos:]
        self._need = need
        self._wait = wait

    def _run(self, buf: bytes, out: list, eof: bool, partial: bool = False, start: int = 0) -> None:
        """Deframe ``buf[start:]`` (``buf`` ends where the stream read so far ends)."""
        n = len(buf)
        base = self._fed - n            # stream offset of buf[0]
        pos = start
        if self._state == _JUNK:
            pos = self._junk(buf, start, eof, start)
            if pos < 0:
                return
        mf = self.max_frame
        tb = self._tb
        trunc = self._trunc
        nz = buf.find(b"\0", start) if self._nul else -1
        octx = self._octx
        append = out.append
        fast = _lf_frames
        tbyte = tb[0]
        nul = self._nul
        while pos < n:
            c = buf[pos]
            if c == 60 and not octx and fast is not None:
                # simple LF frames in C (same frames; parsers/native.py); the rest below
                p2 = fast(buf, pos, out, mf, tbyte, nul)
                if p2 != pos:
                    pos = p2
                    continue
            if c == 60:                                         # '<'
                if octx:
                    ok = _pri_ok(buf, pos, n)
                    if ok < 0 and not eof:
                        self._leave(buf, pos, n - pos + 1, False)
                        break
                    if ok == 0:
                        self._problem("garbage", base + pos,
                                      "no <PRI> after '<' following an octet-counted frame")
                        pos = self._junk(buf, pos, eof, pos + 1)
                        if pos < 0:
                            break
                        continue
            elif 48 <= c <= 57:                                 # digit: octet counting?
                sp = buf.find(b" ", pos + 1, pos + MAX_LEN_DIGITS + 1)
                if sp >= 0:
                    hdr = buf[pos:sp]
                    bad = c == 48 or not hdr.isdigit()
                elif not eof and n - pos <= MAX_LEN_DIGITS and buf[pos:].isdigit():
                    self._leave(buf, pos, n - pos + 1, False)   # MSG-LEN still arriving
                    break
                else:
                    bad = True
                if not bad:
                    size = int(hdr)
                    start = sp + 1
                    octx = True
                    if size <= mf:
                        end = start + size
                        if end <= n:
                            append(buf[start:end])
                            pos = end
                            continue
                        if eof:
                            self._problem("partial_at_close", base + pos,
                                          f"stream ended inside an octet-counted frame: {n - start} of {size} bytes")
                            if partial and start < n:
                                append(buf[start:])
                            pos = n
                            break
                        self._leave(buf, pos, end - pos, False)
                        break
                    # oversize octet-counted frame
                    if trunc:
                        end = start + mf
                        if end > n:
                            if eof:
                                self._problem("partial_at_close", base + pos,
                                              f"stream ended inside an oversize octet-counted frame: "
                                              f"{n - start} of {size} bytes")
                                if partial and start < n:
                                    append(buf[start:])
                                pos = n
                                break
                            self._leave(buf, pos, end - pos, False)
                            break
                        append(buf[start:end])
                        self._problem("oversize_truncated", base + pos,
                                      f"octet-counted frame of {size} bytes truncated to {mf}")
                        skip = size - mf
                        pos = end
                    else:
                        self._problem("oversize_dropped", base + pos,
                                      f"octet-counted frame of {size} bytes > max {mf} dropped")
                        skip = size
                        pos = start
                    if skip <= n - pos:
                        self.stats["discarded_bytes"] += skip
                        pos += skip
                        continue
                    self.stats["discarded_bytes"] += n - pos
                    if eof:
                        self._problem("partial_at_close", base + n,
                                      f"stream ended {skip - (n - pos)} bytes short of the end of an "
                                      f"oversize octet-counted frame")
                    else:
                        self._skip = skip - (n - pos)
                        self._state = _SKIP
                    pos = n
                    break
                # not framing
                run = buf[pos:pos + MAX_LEN_DIGITS + 2]
                self._problem("bad_length", base + pos, f"invalid octet count at frame start: {run!r}")
                if octx:
                    pos = self._junk(buf, pos, eof, pos + 1)
                    if pos < 0:
                        break
                    continue
                # fall through: read it as a non-transparent frame
            elif c in _BLANK:
                pos += 1
                continue
            elif c < 32 or c == 127 or octx:
                self._problem("garbage", base + pos,
                              f"byte 0x{c:02x} at frame start after an octet-counted frame" if octx
                              else f"control byte 0x{c:02x} at frame start")
                pos = self._junk(buf, pos, eof, pos + 1)
                if pos < 0:
                    break
                continue
            # ---- non-transparent frame starting at pos
            e = buf.find(tb, pos)
            if nz >= 0:
                if nz < pos:
                    nz = buf.find(b"\0", pos)
                if nz >= 0 and (e < 0 or nz < e):
                    e = nz
            if e < 0:
                if not eof:
                    if n - pos <= mf + 1:                       # +1: a CR may come before the LF
                        self._octx = octx
                        self._leave(buf, pos, mf + 2, True)
                        return
                    if trunc:
                        append(buf[pos:pos + mf])
                        self._problem("oversize_truncated", base + pos,
                                      f"line longer than {mf} bytes truncated")
                        self.stats["discarded_bytes"] += n - pos - mf
                    else:
                        self._problem("oversize_dropped", base + pos, f"line longer than {mf} bytes dropped")
                        self.stats["discarded_bytes"] += n - pos
                    self._state = _DISCARD
                    octx = False
                    break
                e = end = n                                     # unterminated at end of stream
                if end > pos and buf[end - 1] == 13 and tb == b"\n":
                    end -= 1
            else:
                end = e
                if e > pos and buf[e - 1] == 13 and buf[e] == 10:
                    end = e - 1
            if end - pos <= mf:
                append(buf[pos:end])
            elif trunc:
                append(buf[pos:pos + mf])
                self._problem("oversize_truncated", base + pos,
                              f"line of {end - pos} bytes truncated to {mf}")
                self.stats["discarded_bytes"] += end - pos - mf
            else:
                self._problem("oversize_dropped", base + pos, f"line of {end - pos} bytes > max {mf} dropped")
                self.stats["discarded_bytes"] += end - pos
            pos = e + 1
            octx = False
        self._octx = octx
