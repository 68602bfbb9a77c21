"""What the ``nats`` sink, the ``nats`` source and ``[relay.claims]`` share: the connection
settings (servers, credentials, timeouts), connecting with nats-py, and the JetStream stream
of the relay bus (created when missing).

nats-py is imported lazily: a relay without NATS kinds never imports it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("relay.nats")

__all__ = ["NatsSettings", "read_settings", "connect", "ensure_stream", "COMMON_KEYS", "BUS_KEYS"]

COMMON_KEYS = ("servers", "user", "password_env", "password_file", "token_env", "token_file", "connect_timeout")
BUS_KEYS = COMMON_KEYS + ("stream", "subject", "partitions")


@dataclass
class NatsSettings:
    servers: list = field(default_factory=list)
    user: str | None = None
    password: object = None        # relay.secrets.Secret
    token: object = None
    connect_timeout: float = 5.0
    stream: str = "relay-events"
    subject: str = "relay.events"
    partitions: int = 8
    extra: dict = field(default_factory=dict)   # the kind's own keys


def _servers(v):
    if not v:
        raise ValueError("must list at least one server, e.g. [\"nats://10.0.0.21:4222\"]")
    for s in v:
        if not isinstance(s, str) or not (s.startswith("nats://") or s.startswith("tls://")):
            raise ValueError(f"{s!r} is not a nats:// or tls:// URL")


def _token(v):
    import re
    if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
        raise ValueError(f"{v!r}: use letters, digits, '-' and '_' (a JetStream name)")


def _subject(v):
    import re
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v):
        raise ValueError(f"{v!r} is not a NATS subject without wildcards (tokens separated by '.')")


def read_settings(t, base_dir, *, servers_key: str = "servers", bus: bool = True) -> NatsSettings:
    from .checks import positive
    from .secrets import read_secret
    st = NatsSettings()
    st.servers = t.get(servers_key, list, required=True, check=_servers)
    st.user = t.get("user", str, None)
    st.password = read_secret(t, "password_env", "password_file", "NATS password", base_dir, required=False)
    st.token = read_secret(t, "token_env", "token_file", "NATS token", base_dir, required=False)
    if st.password is not None and st.user is None:
        raise t.err("user", "is required with password_env / password_file")
    if st.token is not None and st.user is not None:
        raise t.err("token_env", "set either a token or user + password, not both")
    st.connect_timeout = t.get("connect_timeout", float, 5.0, check=positive)
    if bus:
        st.stream = t.get("stream", str, "relay-events", check=_token)
        st.subject = t.get("subject", str, "relay.events", check=_subject)
        st.partitions = t.get("partitions", int, 8, check=lambda v: None if 1 <= v <= 1024 else
                              (_ for _ in ()).throw(ValueError(f"must be 1..1024, not {v}")))
    return st


async def connect(st: NatsSettings, name: str, **cb):
    """A nats-py client that reconnects for ever (every server in turn) once connected.  The
    first connection must succeed within ``connect_timeout`` per server (+1 s), else
    ConnectionError (nats-py would otherwise try for ever, holding the caller)."""
    import asyncio

    from nats.aio.client import Client
    kw = {}
    if st.user is not None:
        kw["user"] = st.user
        if st.password is not None:
            kw["password"] = st.password.reveal()
    if st.token is not None:
        kw["token"] = st.token.reveal()
    nc = Client()
    limit = st.connect_timeout * len(st.servers) + 1.0
    try:
        await asyncio.wait_for(nc.connect(servers=list(st.servers), name=name, connect_timeout=st.connect_timeout,
                                          allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                          ping_interval=5, max_outstanding_pings=3, **cb, **kw), limit)
    except BaseException as e:
        try:
            await nc.close()
        except Exception:
            pass
        if isinstance(e, asyncio.TimeoutError):
            raise ConnectionError(f"no NATS server answered within {limit:g} s ({', '.join(st.servers)})") from None
        raise
    return nc


async def ensure_stream(js, st: NatsSettings, *, replicas: int, max_age: float, duplicate_window: float,
                        max_bytes: int | None) -> None:
    """Create the bus stream when it does not exist (an existing one is left as it is; its
    subjects must cover ours)."""
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError
    want = f"{st.subject}.*"
    try:
        info = await js.stream_info(st.stream)
    except NotFoundError:
        cfg = StreamConfig(name=st.stream, subjects=[want], num_replicas=replicas, max_age=max_age,
                           duplicate_window=duplicate_window, max_bytes=max_bytes or -1)
        try:
            await js.add_stream(cfg)
            log.info("nats: created stream %s (subjects %s, %d replicas)", st.stream, want, replicas)
        except Exception as e:
            if "already in use" not in str(e):     # another relay created it meanwhile
                raise
        return
    subjects = info.config.subjects or []
    if want not in subjects and f"{st.subject}.>" not in subjects:
        raise ValueError(f"stream {st.stream} exists with subjects {subjects}, not {want}")
