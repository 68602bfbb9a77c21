"""Python side of the C prototype (bench/native_study/cext/fastpath.c): one reader per
connection, ``feed(read) -> [Event | ParseError, ...]``.

Fall-back rules of the prototype:
* a frame the C code does not cover comes back as its bytes and is parsed here by
  parsers.rfc5424.parse (per message, same result by construction);
* a read that is not plain LF framing (octet counting, NUL, junk, oversize) switches the
  connection to parsers.framing.Deframer for good (sticky: the prototype does not hand the
  Deframer's state back to C).  The bytes held over from the previous read are fed first.
"""
from __future__ import annotations

import fastpath
from parsers import rfc5424
from parsers.event import FORMAT_RFC5424, Event, ParseError
from parsers.framing import Deframer

fastpath.configure(Event, FORMAT_RFC5424)
parse_read = fastpath.parse_read
parse_one = fastpath.parse_one
_parse = rfc5424.parse


def _py(frame: bytes):
    try:
        return _parse(frame)
    except ParseError as e:
        return e


class Reader:
    __slots__ = ("pend", "deframer", "max_frame", "fallback_frames", "fallback_reads")

    def __init__(self, max_frame: int = 65536) -> None:
        self.pend = b""
        self.deframer = None
        self.max_frame = max_frame
        self.fallback_frames = 0
        self.fallback_reads = 0

    def feed(self, data: bytes) -> list:
        if self.deframer is not None:
            return [_py(f) for f in self.deframer.feed(data)]
        buf = self.pend + data if self.pend else data
        r = parse_read(buf, self.max_frame)
        if r is None:
            self.fallback_reads += 1
            self.deframer = Deframer(self.max_frame)
            self.pend = b""
            return [_py(f) for f in self.deframer.feed(buf)]
        recs, used, nfb = r
        self.pend = buf[used:]
        if nfb:
            self.fallback_frames += nfb
            recs = [_py(x) if x.__class__ is bytes else x for x in recs]
        return recs

    def close(self) -> list:
        if self.deframer is not None:
            return [_py(f) for f in self.deframer.close()]
        if not self.pend:
            return []
        d = Deframer(self.max_frame)
        out = [_py(f) for f in d.feed(self.pend)] + [_py(f) for f in d.close()]
        self.pend = b""
        return out


def count_deframe_parse(reads: list[bytes], n: int) -> None:
    """The benchmark's loop: every read through one Reader; checks the count."""
    r = Reader()
    feed = r.feed
    c = 0
    for x in reads:
        c += len(feed(x))
    c += len(r.close())
    assert c == n, c
