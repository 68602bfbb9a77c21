"""Access to the outside test vectors in ../shared/vectors and to our deviations files.

The vectors live beside the repository (``../shared/vectors``); CI clones the repo with
``shared/`` beside it.  ``RELAY_SHARED`` overrides the location.  A missing vectors
directory is an error, never a silent skip.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RELAY_SHARED", ROOT.parent / "shared"))
VECTORS = SHARED / "vectors"
DEVIATIONS = Path(__file__).resolve().parent / "deviations"


def load_jsonl(name: str) -> list[dict]:
    path = VECTORS / name
    if not path.exists():
        raise FileNotFoundError(f"test vectors not found at {path} (set RELAY_SHARED to the shared/ directory)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_json(name: str):
    path = VECTORS / name
    if not path.exists():
        raise FileNotFoundError(f"test vectors not found at {path} (set RELAY_SHARED to the shared/ directory)")
    return json.loads(path.read_text(encoding="utf-8"))


def deviations(name: str) -> dict[str, str]:
    """``{vector_id: reason}`` from tests/deviations/<name>.toml (``["id"] reason = "..."``)."""
    path = DEVIATIONS / f"{name}.toml"
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {k: v["reason"] for k, v in data.items()}


def input_bytes(case: dict) -> bytes:
    if "input_hex" in case:
        return bytes.fromhex(case["input_hex"])
    return case["input"].encode("utf-8")


def vector_params(cases: list[dict], dev: dict[str, str]) -> list:
    """One ``pytest.param`` per vector (id = vector id); the listed deviations are strict
    xfails raising AssertionError, so they must still disagree."""
    out = []
    for case in cases:
        marks = ()
        if case["id"] in dev:
            marks = pytest.mark.xfail(strict=True, raises=AssertionError, reason=dev[case["id"]])
        out.append(pytest.param(case, id=case["id"], marks=marks))
    return out


def raised(exc, fn, *args, **kw):
    """The exception ``fn`` raised; AssertionError (so strict xfails see a disagreement,
    not a crash) when it returned normally."""
    try:
        result = fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError(f"{fn.__name__}{args!r} returned {result!r} instead of raising {exc.__name__}")
