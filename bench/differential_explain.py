"""Which inputs changed between two differential dumps, by the character class they hold.

    .venv/bin/python bench/differential_explain.py OLD.jsonl NEW.jsonl [-n 20000]

Every differing record is traced back to its input (bench/differential.corpus, the same -n)
and classified: a raw NUL, a raw TAB, a NUL/TAB escaped in a JSON body (``\\t``, ``\\u0000``),
bytes that are not UTF-8, or OTHER.  Issue 14 changed exactly the first four (NUL and TAB
sanitising in LEEF/CEF, header fields that are not UTF-8 rendered instead of dead-lettered):
an OTHER is an unintended change.  Exit status 1 when there is an OTHER.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def classify(raw: bytes) -> str:
    if b"\0" in raw:
        return "NUL"
    if b"\t" in raw:
        return "TAB"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "non-UTF-8"
    if any(e in raw for e in (b"\\t", b"\\u0000", b"\\u0009")):
        return "escaped NUL/TAB (JSON body)"
    return "OTHER"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("-n", type=int, default=20000)
    a = ap.parse_args()
    import differential
    msgs = differential.corpus(a.n)
    records: dict[str, int] = {}
    inputs: dict[str, set] = {}
    other = []
    with open(a.old, encoding="utf-8") as fa, open(a.new, encoding="utf-8") as fb:
        for x, y in zip(fa, fb):
            if x == y:
                continue
            d = json.loads(x)
            k = "pulled event" if d["src"].startswith("pull") else classify(msgs[d["i"]])
            records[k] = records.get(k, 0) + 1
            inputs.setdefault(k, set()).add((d["src"][:4] == "pull", d["i"]))
            if k == "OTHER" and len(other) < 5:
                other.append(msgs[d["i"]][:200])
    print(f"{len(msgs)} corpus inputs; differing records by what their input holds:")
    for k in sorted(records):
        print(f"  {k:<30} {records[k]:>7} records from {len(inputs[k]):>6} distinct inputs")
    for o in other:
        print("  OTHER:", o)
    return 1 if "OTHER" in records else 0


if __name__ == "__main__":
    sys.exit(main())
