"""Reporting results: one block per case, the summary line, JUnit XML."""
from __future__ import annotations

import datetime as _dt
import os
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from .model import Result
from .compare import _clip


# =============================================================================== reports

def format_result(res: Result, *, verbose_pass: bool = True) -> str:
    c = res.case
    where = f"  [{c.path or c.input_path}]" if (c.path or c.input_path) else ""
    if res.status == "pass":
        return f"ok    {c.name}\n" if verbose_pass else ""
    tag = {"fail": "FAIL", "error": "ERROR", "new": "NEW"}[res.status]
    lines = [f"{tag:<5} {c.name}{where}"] + ["    " + p for p in res.problems]
    return "\n".join(lines) + "\n"



def counts(results: list[Result]) -> tuple[int, int]:
    passed = sum(1 for r in results if r.ok)
    return passed, len(results) - passed



def summary_line(results: list[Result]) -> str:
    """The plain ``N passed, N failed`` line CI systems read."""
    p, f = counts(results)
    return f"{p} passed, {f} failed"



_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")



def _xml_text(s: str) -> str:
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}", s)



def write_junit(results: list[Result], path: str | os.PathLike, suite: str = "relay.cases") -> None:
    """JUnit XML: <testsuites><testsuite tests= failures= errors= skipped= time=>
    <testcase classname= name= time=> with <failure> or <error> and the diff as text."""
    total_time = sum(r.seconds for r in results)
    failures = sum(1 for r in results if r.status in ("fail", "new"))
    errors = sum(1 for r in results if r.status == "error")
    root = ET.Element("testsuites", name=suite, tests=str(len(results)), failures=str(failures),
                      errors=str(errors), time=f"{total_time:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
                       errors=str(errors), skipped="0", time=f"{total_time:.3f}",
                       timestamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                       hostname=socket.gethostname())
    for r in results:
        c = r.case
        group, _, leaf = c.name.rpartition("/")
        attrs = {"classname": _xml_text(f"{suite}.{group.replace('/', '.')}" if group else suite),
                 "name": _xml_text(leaf or c.name), "time": f"{r.seconds:.3f}"}
        src = c.path or c.input_path
        if src is not None:
            attrs["file"] = str(src)
        tc = ET.SubElement(ts, "testcase", **attrs)
        if r.status != "pass":
            first = next((p for p in r.problems if p.strip()), r.status)
            el = ET.SubElement(tc, "error" if r.status == "error" else "failure",
                               message=_xml_text(_clip(first.strip(), 300)),
                               type={"fail": "mismatch", "new": "no-expected-file", "error": "case-error"}[r.status])
            el.text = _xml_text("\n".join(r.problems))
    ET.indent(root)
    data = ET.tostring(root, encoding="unicode", xml_declaration=False)
    Path(path).write_text('<?xml version="1.0" encoding="UTF-8"?>\n' + data + "\n", encoding="utf-8")
