"""Pure decoding: bytes in, events out.  No sockets, no asyncio, no config files."""
from .event import Event, ParseError

__all__ = ["Event", "ParseError"]
