"""The checks and the error every config reader uses: relay/config.py and the kinds' and
enrichment's own readers (a leaf module: it imports nothing of the relay)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["ConfigError", "parse_address", "positive", "non_negative", "http_url", "networks", "path_converter",
           "existing_file"]


class ConfigError(ValueError):
    def __init__(self, file: str, path: str, message: str) -> None:
        self.file, self.path, self.message = file, path, message
        where = f"{file}: {path}: " if path else f"{file}: "
        super().__init__(where + message)


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be 'host:port'")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not '[ipv6]:port'")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not 'host:port'")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} in {text!r} is not 0-65535")
    return host, int(port)


# Checks shared with the modules that read their own keys (sinks, pull sources, enrichment).
def positive(v):
    if v <= 0:
        raise ValueError(f"must be greater than 0, not {v}")


def non_negative(v):
    if v < 0:
        raise ValueError(f"must not be negative, not {v}")


def http_url(v: str) -> str:
    """An http(s) URL without credentials, query or fragment; trailing '/' removed."""
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (user:password@); use the *_env / *_file keys")
    if parts.query or parts.fragment:
        raise ValueError(f"{v!r} must not have a query or fragment")
    return v.rstrip("/")


def networks(v):
    """A list of CIDR strings -> ip_network objects (the ``allow`` lists)."""
    out = []
    for item in v:
        if not isinstance(item, str):
            raise ValueError(f"entries must be CIDR strings, not {item!r}")
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise ValueError(f"{item!r} is not an IP network: {e}") from None
    return out


def path_converter(base_dir: Path):
    """A check that turns a path string into a Path (``$VARS`` and ``~`` expanded, relative to
    ``base_dir``)."""
    def conv(v: str) -> Path:
        if not v:
            raise ValueError("must not be empty")
        p = Path(os.path.expandvars(v)).expanduser()
        return p if p.is_absolute() else base_dir / p
    return conv


def existing_file(base_dir: Path):
    """Like :func:`path_converter`, and the file must exist."""
    conv = path_converter(base_dir)

    def check(v: str) -> Path:
        p = conv(v)
        if not p.is_file():
            raise ValueError(f"file {str(p)!r} does not exist")
        return p
    return check
