"""The checks and the error every config reader uses: relay/config.py and the kinds' and
enrichment's own readers (a leaf module: it imports nothing of the relay)."""
from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["ConfigError", "parse_address", "positive", "non_negative", "within", "http_url", "networks", "path_converter",
           "existing_file", "pem_certificates", "pem_key", "cert_and_key", "cert_summary"]


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


def within(lo, hi, unit: str = ""):
    """A check that ``lo <= v <= hi``: "must be lo..hi[ unit], not v"."""
    what = f"{lo}..{hi}" + (f" {unit}" if unit else "")

    def check(v):
        if not lo <= v <= hi:
            raise ValueError(f"must be {what}, not {v}")
    return check


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


# TLS files: `relay validate` loads them as `relay run` will, so a file that is no PEM
# certificate, an encrypted key or a key that does not match its certificate is a config
# error naming the key, not a failure at start-up (or at a reload).

def _read_pem(p: Path) -> str:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {str(p)!r}: {e.strerror or e}") from None
    return data.decode("ascii", "replace")


def pem_certificates(base_dir: Path):
    """An existing file of one or more PEM certificates that OpenSSL loads (a CA bundle or a
    certificate chain) -> its Path."""
    conv = existing_file(base_dir)

    def check(v: str) -> Path:
        p = conv(v)
        text = _read_pem(p)
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{str(p)!r} is not a PEM certificate file (no '-----BEGIN CERTIFICATE-----')")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
        except (ssl.SSLError, ValueError) as e:
            raise ValueError(f"{str(p)!r}: the certificate does not load: {getattr(e, 'reason', None) or e}") from None
        return p
    return check


def pem_key(base_dir: Path):
    """An existing, unencrypted PEM private key file -> its Path."""
    conv = existing_file(base_dir)

    def check(v: str) -> Path:
        p = conv(v)
        text = _read_pem(p)
        if "PRIVATE KEY-----" not in text:
            raise ValueError(f"{str(p)!r} is not a PEM private key file (no '-----BEGIN ... PRIVATE KEY-----')")
        if "ENCRYPTED" in text:
            raise ValueError(f"{str(p)!r} is an encrypted key: give the relay an unencrypted key readable only "
                             f"by its user")
        return p
    return check


def cert_and_key(cert: Path, key: Path | None, server: bool) -> None:
    """Load a certificate chain and its key as a TLS context would; ValueError saying why
    (a key that does not match, a chain OpenSSL refuses)."""
    def refuse():
        raise ValueError("the private key is encrypted")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert), str(key) if key else None, password=refuse)
    except ssl.SSLError as e:
        raise ValueError(f"{str(cert)!r} and {str(key or cert)!r} do not load together: "
                         f"{e.reason or e}") from None
    except OSError as e:
        raise ValueError(f"cannot load {str(cert)!r}: {e.strerror or e}") from None


def cert_summary(path) -> str:
    """``subject CN, expires <date>`` of a PEM certificate file, for the log (best effort)."""
    try:
        info = ssl._ssl._test_decode_cert(str(path))     # the stdlib's PEM reader (no network)
    except Exception:
        return str(path)
    cn = next((v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"), "?")
    return f"CN={cn}, expires {info.get('notAfter', '?')}"
