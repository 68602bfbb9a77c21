"""Build one variant of the study into bench/native_study/build/<tool>/ (git-ignored).

  build.py mypyc    copies parsers/ and formats/ there and compiles MODULES with mypyc
  build.py cython   the same with Cython 3 (pure-Python mode: the .py files as they are)
  build.py cext     compiles cext/fastpath.c (the hand-written CPython-API prototype)

The originals are never edited: the copies are made fresh on every build, then the patches in
patches/<tool>/*.patch (if any) are applied to the copies.  The compiled modules' .py files
are removed from the copy, so an import cannot silently take the pure-Python one.
Run with the study's venv: .venv-study/bin/python bench/native_study/build.py mypyc
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD = HERE / "build"
MODULES = ["parsers/framing.py", "parsers/rfc5424.py",
           "formats/render.py", "formats/leef.py", "formats/syslog.py"]


def copy_tree(dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for pkg in ("parsers", "formats"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for p in sorted((HERE / "patches" / dst.name).glob("*.patch")):
        subprocess.run(["patch", "-p1", "-i", str(p)], cwd=dst, check=True)


def run(cmd, cwd) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def strip_sources(dst: Path) -> None:
    for m in MODULES:
        (dst / m).unlink()


def main() -> None:
    tool = sys.argv[1]
    dst = BUILD / tool
    py = sys.executable
    if tool == "mypyc":
        copy_tree(dst)
        # mypyc type-checks first (mypy); --ignore-missing-imports: orjson etc. have stubs or not
        run([py, "-m", "mypyc", *MODULES], cwd=dst)
        strip_sources(dst)
    elif tool == "cython":
        copy_tree(dst)
        env = dict(os.environ)
        run([py, "-m", "cython", "-3", *MODULES], cwd=dst)
        inc = sysconfig.get_paths()["include"]
        ext = sysconfig.get_config_var("EXT_SUFFIX")
        for m in MODULES:
            c = dst / m.replace(".py", ".c")
            so = dst / m.replace(".py", ext)
            run(["gcc", "-O2", "-shared", "-fPIC", "-I", inc, "-o", str(so), str(c)], cwd=dst)
        strip_sources(dst)
    elif tool == "cext":
        dst.mkdir(parents=True, exist_ok=True)
        inc = sysconfig.get_paths()["include"]
        ext = sysconfig.get_config_var("EXT_SUFFIX")
        run(["gcc", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", "-I", inc,
             "-o", str(dst / ("fastpath" + ext)), str(HERE / "cext" / "fastpath.c")], cwd=dst)
        shutil.copy(HERE / "cext" / "fastpath_wrap.py", dst / "fastpath_wrap.py")
    else:
        raise SystemExit(f"unknown tool {tool!r} (mypyc, cython, cext)")


if __name__ == "__main__":
    main()
