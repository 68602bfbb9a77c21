"""Credentials read from an environment variable or a file, never from the config text
or the command line, and never shown: ``repr``/``str`` of a :class:`Secret` hide the
value, and a Secret refuses to be pickled (it can't leak into a worker message or a log
record by accident).  Used by the XSOAR sinks and the pull sources."""
from __future__ import annotations

import os
import re
import secrets as _secrets
from pathlib import Path

__all__ = ["Secret", "read_secret", "read_tokens", "register", "redact", "REDACTED"]

REDACTED = "<redacted>"
#: Every credential value this process has read (and derived forms a client sends, such as
#: a Basic auth token): :func:`redact` removes them from any text that leaves the process:
#: log lines (relay/logs.py's formatter, tracebacks included), response excerpts, dead-letter
#: reasons.  A server that echoes our headers back must not put the key into a log or a
#: queue file.
_KNOWN: set[str] = set()
_MIN = 4        # shorter values would redact ordinary words; such a credential is no credential


def register(value: str) -> None:
    """Remember ``value`` as a secret to :func:`redact` (and its stripped form)."""
    if isinstance(value, str):
        for v in (value, value.strip()):
            if len(v) >= _MIN:
                _KNOWN.add(v)


def redact(text):
    """``text`` with every registered secret replaced by ``<redacted>`` (longest first, so a
    value containing another is removed whole).  Non-str values are returned unchanged."""
    if not _KNOWN or not isinstance(text, str):
        return text
    for v in sorted(_KNOWN, key=len, reverse=True):
        if v in text:
            text = text.replace(v, REDACTED)
    return text


class Secret:
    """A credential.  ``repr``/``str`` never show the value; ``reveal()`` does."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<redacted> from {self.source})"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other.source == self.source and \
            _secrets.compare_digest(other._value.encode(), self._value.encode())

    def __hash__(self) -> int:
        return hash(self.source)

    def __reduce__(self):  # never pickle a credential by accident
        raise TypeError("Secret cannot be pickled")


def read_secret(table, env_key: str, file_key: str, what: str, base_dir: Path, *,
                required: bool = True, literal: str | None = None) -> Secret | None:
    """A secret from an environment variable (``env_key``) or a file (``file_key``).
    ``literal``: a key that would hold the secret itself, refused (never in the config).
    With ``table.secrets`` false (``relay test-parse --config``) nothing is resolved."""
    if literal is not None and literal in table.data:
        raise table.err(literal, f"secrets are never written in the config: use {env_key} "
                                 f"(an environment variable) or {file_key}")
    env = table.get(env_key, str, None)
    path = table.get(file_key, str, None)
    if env is not None and path is not None:
        raise table.err(env_key, f"set either {env_key} or {file_key}, not both")
    if env is None and path is None:
        if required:
            raise table.err(env_key, f"is required: the name of an environment variable holding the {what} "
                                     f"(or {file_key}: a file holding it); secrets are never written in the "
                                     f"config or passed on the command line")
        return None
    if not getattr(table, "secrets", True):  # relay test-parse --config: no credentials needed
        return Secret("unresolved", f"${env}" if env is not None else str(path))
    if env is not None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise table.err(env_key, f"{env!r} is not an environment variable name")
        value = os.environ.get(env)
        if value is None:
            raise table.err(env_key, f"environment variable {env} is not set (it must hold the {what})")
        value = value.strip()
        if not value:
            raise table.err(env_key, f"environment variable {env} is empty (it must hold the {what})")
        return Secret(value, f"${env}")
    p = Path(os.path.expandvars(path)).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    try:
        value = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise table.err(file_key, f"cannot read the {what} from {str(p)!r}: "
                                  f"{getattr(e, 'strerror', None) or e}") from None
    if not value:
        raise table.err(file_key, f"{str(p)!r} is empty (it must hold the {what})")
    if "\n" in value:
        raise table.err(file_key, f"{str(p)!r} must hold the {what} on one line")
    return Secret(value, str(p))


def read_tokens(table, env_key: str, file_key: str, what: str, base_dir: Path, *,
                required: bool = True) -> tuple:
    """Several secrets (token rotation): ``env_key`` names one environment variable or a list
    of them, ``file_key`` one file or a list; each holds one token or several, separated by
    whitespace or newlines (lines starting with ``#`` are comments).  -> a tuple of
    :class:`Secret` (empty when neither key is set and ``required`` is false).  With
    ``table.secrets`` false (``relay test-parse --config``) nothing is resolved."""
    envs = table.get(env_key, (str, list), None)
    files = table.get(file_key, (str, list), None)
    envs = [envs] if isinstance(envs, str) else list(envs or ())
    files = [files] if isinstance(files, str) else list(files or ())
    if not envs and not files:
        if required:
            raise table.err(env_key, f"is required: the name of an environment variable holding the {what} "
                                     f"(or {file_key}: a file holding it); secrets are never written in the "
                                     f"config or passed on the command line")
        return ()
    for key, vals in ((env_key, envs), (file_key, files)):
        for v in vals:
            if not isinstance(v, str) or not v.strip():
                raise table.err(key, f"must be a name or a list of names, not {v!r}")
    if not getattr(table, "secrets", True):
        return tuple(Secret("unresolved", f"${e}") for e in envs) + tuple(Secret("unresolved", f) for f in files)
    out: list = []
    for env in envs:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise table.err(env_key, f"{env!r} is not an environment variable name")
        value = os.environ.get(env)
        if value is None:
            raise table.err(env_key, f"environment variable {env} is not set (it must hold the {what})")
        toks = _tokens(value)
        if not toks:
            raise table.err(env_key, f"environment variable {env} is empty (it must hold the {what})")
        out += [Secret(t, f"${env}") for t in toks]
    for path in files:
        p = Path(os.path.expandvars(path)).expanduser()
        if not p.is_absolute():
            p = base_dir / p
        try:
            value = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise table.err(file_key, f"cannot read the {what} from {str(p)!r}: "
                                      f"{getattr(e, 'strerror', None) or e}") from None
        toks = _tokens(value)
        if not toks:
            raise table.err(file_key, f"{str(p)!r} is empty (it must hold the {what})")
        out += [Secret(t, str(p)) for t in toks]
    return tuple(out)


def _tokens(text: str) -> list[str]:
    return [t for line in text.splitlines() if not line.lstrip().startswith("#") for t in line.split()]
