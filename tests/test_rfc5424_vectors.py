"""Every case in ../shared/vectors/rfc5424.jsonl, strict and (where the vector says) lenient.

A vector we disagree with on purpose is listed in tests/deviations/rfc5424.toml with
its reason; such a case is asserted to still disagree, so the list stays true.
"""
from __future__ import annotations

import pytest

from parsers import ParseError, rfc5424
from tests.vectors import deviations, input_bytes, load_jsonl

CASES = load_jsonl("rfc5424.jsonl")
DEVIATIONS = deviations("rfc5424")
RESULTS = {"passed": 0, "deviations": 0}

KEYMAP = {"appname": "app_name", "structured_data": "sd"}


def _compare(ev, expected: dict, case_id: str) -> list[str]:
    problems = []
    for key, want in expected.items():
        if key == "pri_raw":
            continue  # we keep no pri_raw: pri is None and the note carries the value
        if key == "epoch":
            if ev.time_unix is None or abs(ev.time_unix - want) > 1e-6:
                problems.append(f"epoch: want {want}, got {ev.time_unix}")
            continue
        got = getattr(ev, KEYMAP.get(key, key))
        if key == "msg":
            if isinstance(want, dict):  # non-UTF-8 MSG given as hex
                got_b = None if got is None else got.encode("utf-8", "surrogateescape")
                if got_b != bytes.fromhex(want["hex"]):
                    problems.append(f"msg bytes: want {want['hex']}, got {got_b!r}")
                continue
            if isinstance(want, str) and want.startswith("\ufeff"):
                want = want[1:] or None  # we strip the BOM (formats.md 1.1)
        if key == "timestamp" and isinstance(want, str) and " (" in want:
            want = want.split(" (")[0]  # "… (receiver local zone assumed)": text kept as received
        if got != want:
            problems.append(f"{key}: want {want!r}, got {got!r}")
    return problems


def _run(case: dict):
    data = input_bytes(case)
    outcome = {}
    try:
        ev = rfc5424.parse(data)
        outcome["strict"] = ("ok", _compare(ev, case["expected"], case["id"]) if case["valid"] else None)
    except ParseError as e:
        assert 0 <= e.offset <= len(data), f"offset {e.offset} outside the input"
        assert e.reason
        outcome["strict"] = ("error", e)
    if "lenient_expected" in case:
        try:
            ev = rfc5424.parse(data, lenient=True)
            outcome["lenient"] = ("ok", _compare(ev, case["lenient_expected"], case["id"]))
        except ParseError as e:
            outcome["lenient"] = ("error", e)
    return outcome


def _agrees(case: dict, outcome: dict) -> list[str]:
    problems = []
    kind, detail = outcome["strict"]
    if case["valid"]:
        if kind == "error":
            problems.append(f"strict: rejected a valid message: {detail}")
        elif detail:
            problems.extend("strict " + p for p in detail)
    elif kind == "ok":
        problems.append("strict: accepted an invalid message")
    if "lenient" in outcome:
        kind, detail = outcome["lenient"]
        if kind == "error":
            problems.append(f"lenient: rejected: {detail}")
        elif detail:
            problems.extend("lenient " + p for p in detail)
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vector(case):
    problems = _agrees(case, _run(case))
    if case["id"] in DEVIATIONS:
        assert problems, f"{case['id']} is listed as a deviation but now agrees: remove it from tests/deviations/rfc5424.toml"
        RESULTS["deviations"] += 1
        return
    assert not problems, "\n".join(problems)
    RESULTS["passed"] += 1


def test_deviations_name_real_vectors():
    ids = {c["id"] for c in CASES}
    assert set(DEVIATIONS) <= ids


def test_zz_summary(capsys):
    with capsys.disabled():
        print(f"\nrfc5424 vectors: {len(CASES)} cases, {RESULTS['passed']} agree, "
              f"{RESULTS['deviations']} listed deviations (tests/deviations/rfc5424.toml)")
