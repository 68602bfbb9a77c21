"""The XSOAR and ticket sinks' side of the cluster-wide claims (relay/claims.py)."""
from __future__ import annotations

from .. import claims
from ..logs import LogLimiter
from .base import UnavailableError

_LIMITER = LogLimiter(10.0, claims.log)


async def guard(sink, key: str):
    """For the sinks: the claim on ``key`` (``sink.claims`` when set, tests: several relays in
    one process; else the process's [relay.claims]) or None when claims are off (or bypassed while NATS
    is unreachable with ``on_unavailable = "search"``).  Raises the sink's UnavailableError
    while the claim cannot be decided."""
    c = getattr(sink, "claims", None) or claims.current()
    if c is None or not key:
        return None
    try:
        return await c.claim(sink.name, key)
    except claims.ClaimWait as e:
        raise UnavailableError(f"cluster claim: {e}", 1.0, reason="claim_wait") from None
    except claims.ClaimsUnavailable as e:
        if c.cfg.on_unavailable == "search":
            c.count(sink.name, "bypassed")
            _LIMITER.warning(("bypass", sink.name), "sink %s: claims unavailable (%s): search-before-create only",
                             sink.name, e)
            return None
        c.count(sink.name, "unavailable")
        raise UnavailableError(f"cluster claims unavailable (events stay queued): {e}", 2.0,
                               reason="claims") from None


async def won(sink, claim, incident_id: str) -> None:
    """The holder created (or found) the incident: name it in the claim."""
    c = getattr(sink, "claims", None) or claims.current()
    if c is not None and claim is not None and claim.owner:
        await c.record(claim, str(incident_id))


async def failed(sink, claim, exc: BaseException) -> None:
    """The holder's create failed; when it certainly did not happen (the destination could not
    be reached: UnavailableError), give the claim back so that no relay waits for it."""
    c = getattr(sink, "claims", None) or claims.current()
    if c is not None and claim is not None and claim.owner and isinstance(exc, UnavailableError):
        await c.release(claim)
