"""A generated corpus of broken configs (issue 14, item 5): every one is refused with a
ConfigError that names the key and says what is wrong, never a traceback.

The corpus starts from a valid config that uses every kind (every source and sink type,
routes, the queue and retry tables, lookups, triage, audit) and breaks one key at a time: a
value of the wrong type, nan, inf, negative, zero, huge, empty, an unknown key beside it,
the key removed.  Each mutant goes through ``relay.config.loads`` (what ``validate`` and
``run`` call); a sample also through ``relay validate`` (exit 2, no traceback).  A mutant the
loader accepts is fine (the value was still valid); it must never raise anything else.
"""
from __future__ import annotations

import copy
import math
import random

import pytest

from relay.config import ConfigError, loads
from tests.harness import relay_cli


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        v = v.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(d: dict, prefix: str = "") -> str:
    scalars = [(k, v) for k, v in d.items() if not isinstance(v, dict) or not v or not _is_table(v)]
    tables = [(k, v) for k, v in d.items() if isinstance(v, dict) and v and _is_table(v)]
    out = []
    if prefix:
        out.append(f"[{prefix}]")
    out += [f'"{k}" = {toml_value(v)}' for k, v in scalars]
    for k, v in tables:
        out.append(to_toml(v, f'{prefix}."{k}"' if prefix else f'"{k}"'))
    return "\n".join(out) + "\n"


def _is_table(v: dict) -> bool:
    return True


def base(d) -> dict:
    sec = d / "secret.txt"
    sec.write_text("s3cr3t-value\n")
    lookup = d / "assets.csv"
    lookup.write_text("ip,owner,criticality\n10.0.0.1,alice,5\n")
    return {
        "relay": {"state_dir": str(d / "state"), "metrics_address": "127.0.0.1:0", "drain_timeout": 5.0,
                  "workers": 1, "log_level": "info",
                  "queue": {"max_rows": 1000, "max_bytes": 1000000, "full_policy": "block", "synchronous": "FULL"},
                  "retry": {"base": 1.0, "factor": 2.0, "cap": 60.0, "max_attempts": 5}},
        "sources": {
            "u": {"type": "udp", "address": "127.0.0.1:0", "max_message_size": 4096, "receive_buffer": 65536,
                  "allow": ["127.0.0.0/8"]},
            "t": {"type": "tcp", "address": "127.0.0.1:0", "max_connections": 10, "max_connections_per_ip": 5,
                  "idle_timeout": 30.0, "oversize": "drop"},
            "s": {"type": "tls", "address": "127.0.0.1:1", "tls_cert": str(d / "pki" / "server.pem"),
                  "tls_key": str(d / "pki" / "server.key"), "tls_ca": str(d / "pki" / "ca.pem"),
                  "tls_verify_client": True, "tls_client_names": ["CN:relay test client"]},
            "f": {"type": "falcon", "client_id": "id", "client_secret_file": str(sec), "poll_interval": 30,
                  "page_size": 100},
            "o": {"type": "qradar_offenses", "url": "https://qradar.example", "token_file": str(sec),
                  "poll_interval": 60},
        },
        "sinks": {
            "q": {"type": "syslog", "address": "127.0.0.1:514", "protocol": "tcp", "format": "leef",
                  "batch_size": 100, "leef_delimiter": "^", "queue": {"max_rows": 100},
                  "retry": {"max_attempts": 3}},
            "file": {"type": "file", "path": str(d / "out.log"), "format": "json"},
            "x": {"type": "xsoar", "url": "https://xsoar.example", "api_key_file": str(sec), "concurrency": 2,
                  "timeout": 5.0, "severity_thresholds": {"critical": 85, "high": 70, "medium": 40},
                  "custom_fields": {"actor": "extra.actor"}},
            "w": {"type": "xsoar_webhook", "url": "https://xsoar.example/instance/execute/relay",
                  "auth_header": "Authorization", "auth_value_file": str(sec), "linger": 0.2},
        },
        "routes": {"r": {"match": 'risk_score >= 70 and app_name == "SigmaIncident"', "sinks": ["q", "x"]},
                   "all": {"match": "true", "sinks": ["file", "w"], "final": True}},
        "lookups": {"assets": {"kind": "asset", "file": str(lookup)}},
        "triage": {"mode": "suggest"},
        "audit": {"max_bytes": 1000000},
    }


def leaves(d: dict, path=()):
    for k, v in d.items():
        if isinstance(v, dict) and v and not (path and path[-1] in ("severity_thresholds", "custom_fields")
                                              and False):
            yield path + (k,), v
            yield from leaves(v, path + (k,))
        else:
            yield path + (k,), v


BAD_VALUES = [float("nan"), float("inf"), -1, 0, 10 ** 15, -1.5, "", "x" * 300, True, [], ["x", 1], {"k": 1},
              "not-a-valid-value", "127.0.0.1:99999", "\x00", "../../etc/passwd"]


def mutants(cfg: dict, rng: random.Random):
    """(description, key path, config dict) for every leaf: each bad value, plus the key removed
    and an unknown key beside it."""
    for path, _ in list(leaves(cfg)):
        for v in BAD_VALUES:
            m = copy.deepcopy(cfg)
            t = m
            for k in path[:-1]:
                t = t[k]
            t[path[-1]] = v
            yield f"{'.'.join(path)} = {v!r:.40}", path, m
        m = copy.deepcopy(cfg)
        t = m
        for k in path[:-1]:
            t = t[k]
        del t[path[-1]]
        yield f"{'.'.join(path)} removed", path[:-1] or path, m
        if isinstance(_, dict):
            m = copy.deepcopy(cfg)
            t = m
            for k in path:
                t = t[k]
            t["no_such_key"] = 1
            yield f"{'.'.join(path)}.no_such_key", path + ("no_such_key",), m


def names_the_key(msg: str, path: tuple) -> bool:
    # the message names the key path, or a parent of it (a removed required key is named as
    # itself; a table that is no table by its own name)
    for i in range(len(path), 0, -1):
        if ".".join(path[:i]) in msg:
            return True
    return False


@pytest.fixture
def valid(tmp_path, pki):
    import shutil
    shutil.copytree(pki, tmp_path / "pki")
    cfg = base(tmp_path)
    loads(to_toml(cfg), file="base.toml", base_dir=tmp_path)   # the base itself is valid
    return cfg


def test_generated_broken_configs_never_traceback(valid, tmp_path):
    rng = random.Random(14)
    total = refused = 0
    unclear = []
    for desc, path, m in mutants(valid, rng):
        text = to_toml(m)
        total += 1
        try:
            loads(text, file="c.toml", base_dir=tmp_path, secrets=True)
        except ConfigError as e:
            refused += 1
            msg = str(e)
            if not names_the_key(msg, path) or len(msg) < len("c.toml: x: ") + 5:
                unclear.append((desc, msg))
        # anything else propagates: the test fails with the mutant's traceback
    print(f"\n{total} broken configs, {refused} refused with a ConfigError, {total - refused} still valid")
    assert refused > 0.6 * total
    assert not unclear, unclear[:10]


def test_syntax_errors_and_odd_files(tmp_path):
    for text in ("[relay\n", "a = \n", "[[sources]]\n", "sources = 5\n", "[sources.x]\n", "[sinks.y]\ntype=1\n",
                 "\x00\x01", "[relay]\nworkers = \"many\"\n", "[routes.r]\nmatch = \"(((\"\nsinks = []\n",
                 "[relay]\nstate_dir = \"\"\n", "[relay]\nmetrics_address = \"[::1\"\n"):
        with pytest.raises(ConfigError):
            loads(text, file="c.toml", base_dir=tmp_path)


def test_validate_cli_on_a_sample(valid, tmp_path):
    rng = random.Random(7)
    sample = [m for m in mutants(valid, rng)]
    rng.shuffle(sample)
    seen = 0
    for desc, path, m in sample:
        p = tmp_path / "m.toml"
        p.write_text(to_toml(m))
        r = relay_cli("validate", p)
        err = r.stderr.decode()
        assert "Traceback" not in err, (desc, err)
        if r.returncode == 2:
            assert err.startswith("invalid:") or "m.toml" in err, (desc, err)
            seen += 1
        else:
            assert r.returncode == 0, (desc, r.returncode, err)
        if seen >= 6:
            break
    assert seen >= 6
