"""Cluster-wide incident claims (``[relay.claims]``): before an XSOAR or ticket sink searches for
a dedup key and creates an incident, it takes an atomic claim on the key in a NATS JetStream
key-value bucket, so that of N relays exactly one creates the incident.

Protocol (per sink and dedup key; the KV key is ``<sink>.<blake2b-128 of the dedup key>``):

1. ``kv.create`` (put-if-absent: JetStream's expected-last-subject-sequence 0) of
   ``{"key", "relay", "at", "incident": null}``.  Won: this relay searches (the incident may
   exist from before claims, or from a holder that died after creating it), creates when the
   search misses, and writes the incident id into the claim (compare-and-set on the revision).
2. Lost: the claim's value says who holds it.
   * it names an incident: this relay records it in its local dedup store and skips (mode
     ``create``) or updates it (mode ``sync``); it never creates;
   * it names none yet: the holder is creating it; wait up to ``wait`` s for the id, polling;
   * it is this relay's own (a retry after a failed create): it goes on as the holder;
   * it named no incident for longer than ``claim_timeout`` s: the holder died between its
     claim and its create; take it over with a compare-and-set (only one relay can), then
     search and create as in 1.
3. A create that certainly did not happen (connection refused) deletes the claim (CAS), so
   another relay need not wait for ``claim_timeout``.

The local dedup store stays the first lookup (a cache: a key it knows is never claimed).
Claims live ``ttl`` s after their last write (the bucket's max age).  When NATS cannot be
reached, ``on_unavailable = "wait"`` (default) keeps the rows queued until it can;
``"search"`` goes on with search-before-create alone (a race between relays can then create a
duplicate) and counts it.  ``relay_claims_total{sink, result}``: won, lost (an incident id was
there), waited, taken_over, own, unavailable, bypassed.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass

import orjson

from .logs import LogLimiter
from .metrics import REGISTRY

log = logging.getLogger("relay.claims")
_LIMITER = LogLimiter(10.0, log)

__all__ = ["ClaimsConfig", "Claims", "Claim", "read_config", "configure", "current", "close", "RELAY_ID"]

#: this process, as named in the claims it holds
RELAY_ID = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass
class ClaimsConfig:
    nats: object            # relay.natsbus.NatsSettings (servers, credentials)
    bucket: str = "relay-claims"
    ttl: float = 604800.0
    replicas: int = 3
    wait: float = 30.0
    claim_timeout: float = 120.0
    on_unavailable: str = "wait"


KEYS = ("nats", "bucket", "ttl", "replicas", "wait", "claim_timeout", "on_unavailable", "user", "password_env",
        "password_file", "token_env", "token_file", "connect_timeout")


def read_config(t, base_dir) -> ClaimsConfig:
    from .checks import positive
    from .natsbus import _token, read_settings
    st = read_settings(t, base_dir, servers_key="nats", bus=False)
    c = ClaimsConfig(
        nats=st,
        bucket=t.get("bucket", str, "relay-claims", check=_token),
        ttl=t.get("ttl", float, 604800.0, check=positive),
        replicas=t.get("replicas", int, 3, check=lambda v: None if 1 <= v <= 5 else
                       (_ for _ in ()).throw(ValueError(f"must be 1..5, not {v}"))),
        wait=t.get("wait", float, 30.0, check=positive),
        claim_timeout=t.get("claim_timeout", float, 120.0, check=positive),
        on_unavailable=t.get("on_unavailable", str, "wait", choices=("wait", "search")),
    )
    t.finish()
    return c


class Claim:
    __slots__ = ("kv_key", "key", "owner", "incident", "revision")

    def __init__(self, kv_key: str, key: str, owner: bool, incident: str | None, revision: int | None) -> None:
        self.kv_key, self.key, self.owner, self.incident, self.revision = kv_key, key, owner, incident, revision


class ClaimsUnavailable(Exception):
    """NATS or the bucket cannot be reached (the caller decides: wait or search)."""


class ClaimWait(Exception):
    """Another relay holds the claim and has not named the incident within ``wait`` s."""


class Claims:
    def __init__(self, cfg: ClaimsConfig, registry=None, relay_id: str | None = None) -> None:
        self.cfg = cfg
        self.relay_id = relay_id or RELAY_ID
        self.registry = registry if registry is not None else REGISTRY
        self._nc = None
        self._kv = None
        self._lock = asyncio.Lock()
        self._counters: dict = {}

    def count(self, sink: str, result: str) -> None:
        c = self._counters.get((sink, result))
        if c is None:
            c = self._counters[(sink, result)] = self.registry.counter("relay_claims_total", sink=sink, result=result)
        c.value += 1

    @staticmethod
    def kv_key(sink: str, key: str) -> str:
        ns = re.sub(r"[^A-Za-z0-9_-]", "_", sink)
        return f"{ns}.{hashlib.blake2b(key.encode('utf-8', 'surrogateescape'), digest_size=16).hexdigest()}"

    async def _bucket(self):
        if self._kv is not None and self._nc is not None and not self._nc.is_closed:
            return self._kv
        async with self._lock:
            if self._kv is not None and self._nc is not None and not self._nc.is_closed:
                return self._kv
            from nats.js.errors import BucketNotFoundError
            from .natsbus import connect
            try:
                if self._nc is None or self._nc.is_closed:
                    self._nc = await connect(self.cfg.nats, "relay claims")
                js = self._nc.jetstream(timeout=5)
                try:
                    kv = await js.key_value(self.cfg.bucket)
                except BucketNotFoundError:
                    kv = await js.create_key_value(bucket=self.cfg.bucket, history=1, ttl=self.cfg.ttl,
                                                   replicas=self.cfg.replicas)
                    log.info("claims: created KV bucket %s (ttl %g s, %d replicas)", self.cfg.bucket, self.cfg.ttl,
                             self.cfg.replicas)
            except Exception as e:
                raise ClaimsUnavailable(f"{type(e).__name__}: {e}") from None
            self._kv = kv
            return kv

    def _value(self, key: str, incident: str | None) -> bytes:
        return orjson.dumps({"key": key, "relay": self.relay_id, "at": time.time(), "incident": incident})

    async def claim(self, sink: str, key: str) -> Claim:
        """Claim ``key`` for ``sink`` (see the module docstring).  Raises ClaimsUnavailable or
        ClaimWait."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
        kv = await self._bucket()
        k = self.kv_key(sink, key)
        deadline = time.monotonic() + self.cfg.wait
        waited = False
        try:
            while True:
                try:
                    rev = await kv.create(k, self._value(key, None))
                    self.count(sink, "won")
                    return Claim(k, key, True, None, rev)
                except KeyWrongLastSequenceError:
                    pass
                try:
                    e = await kv.get(k)
                except KeyNotFoundError:      # deleted or expired meanwhile: claim again
                    continue
                try:
                    v = orjson.loads(e.value or b"{}")
                except orjson.JSONDecodeError:
                    v = {}
                if v.get("incident"):
                    self.count(sink, "waited" if waited else "lost")
                    return Claim(k, key, False, str(v["incident"]), e.revision)
                stale = time.time() - float(v.get("at") or 0) > self.cfg.claim_timeout
                mine = v.get("relay") == self.relay_id
                if mine or stale:
                    try:
                        rev = await kv.update(k, self._value(key, None), last=e.revision)
                    except KeyWrongLastSequenceError:
                        continue              # someone else moved first: look again
                    self.count(sink, "own" if mine else "taken_over")
                    if not mine:
                        log.warning("claims: %s: took over the claim of %s (no incident after %g s)", key,
                                    v.get("relay"), self.cfg.claim_timeout)
                    return Claim(k, key, True, None, rev)
                if time.monotonic() >= deadline:
                    raise ClaimWait(f"{key} is claimed by {v.get('relay')} since "
                                    f"{time.time() - float(v.get('at') or 0):.1f} s, no incident yet")
                waited = True
                await asyncio.sleep(0.2)
        except (ClaimWait, asyncio.CancelledError):
            raise
        except Exception as e:
            raise ClaimsUnavailable(f"{type(e).__name__}: {e}") from None

    async def record(self, claim: Claim, incident: str) -> None:
        """Name the incident in a claim this relay holds (best effort: a failure leaves the claim
        to expire or be taken over; the incident exists and the search finds it)."""
        try:
            kv = await self._bucket()
            claim.revision = await kv.update(claim.kv_key, self._value(claim.key, incident), last=claim.revision)
            claim.incident = incident
        except Exception as e:
            _LIMITER.warning(("record",), "claims: could not record incident %s for %s: %s: %s", incident,
                             claim.key, type(e).__name__, e)

    async def release(self, claim: Claim) -> None:
        """Give up a claim whose create certainly did not happen (CAS delete)."""
        try:
            kv = await self._bucket()
            await kv.delete(claim.kv_key, last=claim.revision)
        except Exception as e:
            log.debug("claims: release of %s failed: %s", claim.key, e)

    async def close(self) -> None:
        nc, self._nc, self._kv = self._nc, None, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 3)
            except Exception:
                pass


_CURRENT: Claims | None = None


def configure(cfg: ClaimsConfig | None) -> Claims | None:
    """The process's claims (set by the server at start and on reload)."""
    global _CURRENT
    _CURRENT = Claims(cfg) if cfg is not None else None
    return _CURRENT


def current() -> Claims | None:
    return _CURRENT


async def close() -> None:
    global _CURRENT
    c, _CURRENT = _CURRENT, None
    if c is not None:
        await c.close()
