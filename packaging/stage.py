#!/usr/bin/python3.11
"""Build the relay payload shared byte for byte by the .deb and the .rpm.

    stage.py --src TREE --wheels DIR --out PAYLOAD --tmp SCRATCH

Offline.  TREE is a pristine copy of the project (pyproject.toml, README.md, relay/, ...).
PAYLOAD gets:

    opt/relay/                  a pip-less venv on the target's /usr/bin/python3.11, holding the
                                hash-locked requirements.lock and the relay wheel, relocated to
                                /opt/relay, byte-compiled (unchecked-hash .pyc: /opt is read-only)
    usr/bin/relay               -> /opt/relay/bin/relay
    etc/relay/relay.toml        the default config (a conffile)
    usr/lib/sysusers.d/relay.conf, usr/lib/tmpfiles.d/relay.conf
    usr/share/doc/relay/        README.md, docs/*.md
    usr/share/relay/monitoring/ the Grafana dashboard and the Prometheus alerting rules

The systemd unit is not in the payload: each package installs it where its distribution
wants it (deb: dh_installsystemd, rpm: %{_unitdir}).
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "/opt/relay"
TARGET_PY = "/usr/bin/python3.11"


def log(msg: str) -> None:
    print(f"stage: {msg}", file=sys.stderr, flush=True)


def clean_env() -> dict:
    """No PIP_* from the host (this machine pre-configures find-links, indexes, constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_CONFIG_FILE="/dev/null", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1", LC_ALL="C.UTF-8", TZ="UTC")
    return env


def run(*cmd, **kw) -> None:
    subprocess.run([str(c) for c in cmd], check=True, env=kw.pop("env", clean_env()), **kw)


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pinned_wheels(wheels: Path, scratch: Path) -> Path:
    """Check every wheel against wheels.sha256 and expose only those to pip."""
    only = scratch / "wheels"
    only.mkdir()
    for line in (HERE / "wheels.sha256").read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(None, 1)
        name = name.strip()
        src = wheels / name
        if not src.is_file():
            sys.exit(f"stage: missing wheel {src} (run packaging/lock --fetch once, online)")
        if sha256(src) != digest:
            sys.exit(f"stage: {src}: sha256 does not match packaging/wheels.sha256")
        shutil.copy2(src, only / name)
    return only


def record_hash(p: Path) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(p.read_bytes()).digest()).rstrip(b"=").decode()


def fix_records(site: Path, removed: set[Path], changed: set[Path]) -> None:
    """Keep every RECORD true after relocation: drop removed files, rehash edited ones."""
    for rec in site.glob("*.dist-info/RECORD"):
        rows = list(csv.reader(io.StringIO(rec.read_text())))
        out = []
        for row in rows:
            if not row:
                continue
            f = (site / row[0]).resolve() if not row[0].startswith("/") else Path(row[0])
            if f in removed:
                continue
            if f in changed:
                row = [row[0], record_hash(f), str(f.stat().st_size)]
            out.append(row)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(out)
        rec.write_text(buf.getvalue())


def build(args) -> None:
    src, out, scratch = args.src.resolve(), args.out.resolve(), args.tmp.resolve()
    os.umask(0o022)
    wheels = pinned_wheels(args.wheels.resolve(), scratch)
    lock = HERE / "requirements.lock"
    build_lock = HERE / "build-requirements.lock"
    pip_whl = next(wheels.glob("pip-*.whl"))

    # 1. a pinned build venv (pip, setuptools, wheel from the hashed build lock), pip run from its wheel
    bv = scratch / "buildvenv"
    run(TARGET_PY, "-m", "venv", "--without-pip", bv)
    pipopts = ["--isolated", "--no-index", "--find-links", wheels, "--only-binary=:all:", "--no-cache-dir"]
    run(bv / "bin/python", pip_whl / "pip", "install", "-q", *pipopts, "--require-hashes", "-r", build_lock)

    # 2. the relay wheel, built without network or build isolation from the pristine tree
    #    The native accelerator (parsers/_speedups.c, setup.py) is compiled here: the build
    #    path is mapped out of the object so two builds from trees at different paths give the
    #    same .so (reproducibility), and a wheel without it (no setup.py, no compiler) is refused.
    pw = scratch / "projwheel"
    cenv = clean_env()
    cenv["CFLAGS"] = f"-ffile-prefix-map={src}=. -ffile-prefix-map={scratch}=."
    run(bv / "bin/python", "-m", "pip", "wheel", "-q", "--isolated", "--no-index", "--no-build-isolation",
        "--no-deps", "--no-cache-dir", "-w", pw, src, env=cenv)
    relay_whl = next(pw.glob("relay-*.whl"))
    if not relay_whl.name.endswith("-cp311-cp311-linux_x86_64.whl"):
        sys.exit(f"stage: {relay_whl.name} is not a CPython 3.11 x86_64 wheel: the native accelerator "
                 "(parsers/_speedups.c) was not built (is setup.py in the tree?)")
    log(f"built {relay_whl.name}")

    # 3. the target venv: the target's python3.11, no pip, no activate scripts
    venv = out / PREFIX.lstrip("/")
    if out.exists():
        shutil.rmtree(out)
    run(TARGET_PY, "-m", "venv", "--without-pip", venv)
    py = venv / "bin/python"
    inst = [bv / "bin/python", "-m", "pip", "--python", py, "install", "-q", *pipopts, "--no-compile",
            "--no-warn-script-location"]
    run(*inst, "--require-hashes", "-r", lock)
    run(*inst, "--no-deps", relay_whl)

    # 4. relocate from the build path to /opt/relay
    site = next(venv.glob("lib/python3.*/site-packages"))
    removed: set[Path] = set()
    changed: set[Path] = set()
    bindir = venv / "bin"
    keep = {"relay", "python", "python3", "python3.11"}
    for f in sorted(bindir.iterdir()):
        if f.name not in keep:
            removed.add(f.resolve() if not f.is_symlink() else f)
            f.unlink()
    relay_bin = bindir / "relay"
    text = relay_bin.read_bytes()
    relay_bin.write_bytes(text.replace(str(venv).encode(), PREFIX.encode()))
    changed.add(relay_bin.resolve())
    for f in site.glob("*.dist-info/direct_url.json"):
        removed.add(f.resolve())
        f.unlink()
    cfg = venv / "pyvenv.cfg"
    cfg.write_text("".join(l for l in cfg.read_text().splitlines(True) if not l.startswith("command")))
    inc = venv / "include"          # empty headers dir made by venv
    if inc.is_dir() and not any(f for _d, _s, fs in os.walk(inc) for f in fs):
        shutil.rmtree(inc)
    # wheels ship their extensions with debug info: strip them (deterministic; both
    # packages get the stripped file, so dh_strip / brp-strip are off).
    for so in sorted(site.rglob("*.so")):
        run("strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", so)
        changed.add(so.resolve())
    fix_records(site, removed, changed)

    # 5. byte-compile with the target interpreter, build path stripped (deterministic: unchecked-hash)
    run(py, "-m", "compileall", "-q", "-f", "-j", "0", "--invalidation-mode", "unchecked-hash",
        "-s", out, "-p", "/", site)

    # 6. nothing may still name a build path
    needles = [str(out).encode(), str(scratch).encode(), str(src).encode()]
    for dirpath, _dirs, files in os.walk(out):
        for n in files:
            p = Path(dirpath, n)
            if p.is_symlink():
                if any(x in os.readlink(p).encode() for x in needles):
                    sys.exit(f"stage: symlink {p} points into the build tree")
                continue
            data = p.read_bytes()
            for x in needles:
                if x in data:
                    sys.exit(f"stage: {p} still contains the build path {x.decode()}")

    # 7. system files shared by both packages
    (out / "usr/bin").mkdir(parents=True)
    os.symlink(f"{PREFIX}/bin/relay", out / "usr/bin/relay")
    for rel, srcf, mode in [
        ("etc/relay/relay.toml", HERE / "relay.toml", 0o644),
        ("usr/lib/sysusers.d/relay.conf", HERE / "relay.sysusers", 0o644),
        ("usr/lib/tmpfiles.d/relay.conf", HERE / "relay.tmpfiles", 0o644),
        ("usr/share/doc/relay/README.md", src / "README.md", 0o644),
        ("usr/share/doc/relay/copyright", HERE / "copyright", 0o644),
        ("usr/share/relay/monitoring/relay-dashboard.json", HERE / "monitoring" / "relay-dashboard.json", 0o644),
        ("usr/share/relay/monitoring/relay-alerts.yml", HERE / "monitoring" / "relay-alerts.yml", 0o644),
    ] + [(f"usr/share/doc/relay/docs/{d.name}", d, 0o644) for d in sorted((src / "docs").glob("*.md"))]:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(srcf, dst)
        dst.chmod(mode)

    # 8. normalise: modes (0755 for dirs and opt/relay/bin/*, 0644 for the rest, wheels' stray
    # executable bits included) and mtimes (SOURCE_DATE_EPOCH)
    epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    for dirpath, dirs, files in os.walk(out):
        for n in dirs + files:
            p = Path(dirpath, n)
            if p.is_symlink():
                os.utime(p, (epoch, epoch), follow_symlinks=False)
                continue
            if p.is_dir():
                p.chmod(0o755)
            else:
                p.chmod(0o755 if p.parent == bindir else 0o644)
            os.utime(p, (epoch, epoch))
    os.utime(out, (epoch, epoch))
    n = sum(len(f) for _d, _s, f in os.walk(out))
    log(f"payload ready: {out} ({n} files)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tmp", type=Path, required=True)
    args = ap.parse_args()
    if "SOURCE_DATE_EPOCH" not in os.environ:
        sys.exit("stage: SOURCE_DATE_EPOCH must be set (packaging/build sets it from git)")
    build(args)


if __name__ == "__main__":
    main()
