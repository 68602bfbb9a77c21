"""The .deb and .rpm: build, lint, reproducibility, and the .deb installed into a clean Debian 12
root with no network (smoke run on :514 as user relay, a real systemd boot of the hardened unit,
upgrade keeping an edited conffile, remove/purge).  The .rpm: layout, requires, scriptlets.

Needs root and Debian's tools (packaging/deps installs them); skipped with the reason otherwise.
The Debian root is made once (mmdebstrap, or debootstrap) and cached as a tarball under
.cache/packaging/.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "packaging"
CACHE = ROOT / ".cache" / "packaging"
TESTROOT = PKG / "tests" / "testroot"
TIMINGS: dict[str, float] = {}


def _version() -> str:
    ns: dict = {}
    exec((ROOT / "relay" / "__version__.py").read_text(), ns)
    return ns["__version__"]


VERSION = _version()


def sh(*cmd, check=True, timeout=600, env=None, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})}, **kw)
    if check and r.returncode != 0:
        pytest.fail(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n"
                    f"--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}")
    return r


def _precondition() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (mmdebstrap/debootstrap, chroot, unshare, systemd-nspawn)"
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        return "needs a Debian/apt system (dpkg-buildpackage, mmdebstrap/debootstrap)"
    r = subprocess.run([str(PKG / "deps")], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return f"packaging/deps could not install the packaging tools: {r.stderr.strip()[-800:]}"
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return "cannot create network namespaces here (unshare -n)"
    return None


@pytest.fixture(scope="module")
def env_ok():
    why = _precondition()
    if why:
        pytest.skip(f"packaging tests SKIPPED: {why}")


def _head() -> tuple[str, str]:
    r = subprocess.run(["git", "log", "-1", "--format=%H %ct"], cwd=ROOT, capture_output=True, text=True, check=True)
    sha, ct = r.stdout.split()
    return sha, ct


def _export_tree(ref: str, dst: Path) -> None:
    """The committed files packaging/build uses, as a plain (non-git) tree at another path."""
    dst.mkdir(parents=True)
    sh("sh", "-c", f"git archive --format=tar {ref} -- pyproject.toml setup.py README.md relay parsers formats docs"
       f" | tar -xf - -C '{dst}'", cwd=ROOT)


def _bumped(v: str) -> str:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", v)
    assert m, f"test expects a X.Y.Z version, got {v}"
    return f"{m[1]}.{m[2]}.{int(m[3]) + 1}"


@pytest.fixture(scope="module")
def built(env_ok, tmp_path_factory):
    """v1 from the checkout (its HEAD), v1 again from an export of the same commit at another path
    (reproducibility), v2 (bumped version) from that export for the upgrade tests."""
    tmp = tmp_path_factory.mktemp("pkg")
    ref, sde = _head()
    t0 = time.monotonic()
    sh(PKG / "build", env={"RELAY_DIST": str(tmp / "dist1"), "RELAY_REF": ref})
    TIMINGS["build both"] = time.monotonic() - t0
    src = tmp / "elsewhere" / "src"
    _export_tree(ref, src)
    src3 = tmp / "v2" / "src"
    _export_tree(ref, src3)
    v2 = _bumped(VERSION)
    vf = src3 / "relay" / "__version__.py"
    vf.write_text(vf.read_text().replace(f'"{VERSION}"', f'"{v2}"'))
    # the rebuild and the v2 build are independent (own trees, dist and temp dirs; the wheel
    # cache is full and only read): both at once.  v2 is only an upgrade target: gzip -1
    # (RELAY_PKG_FAST=1) instead of xz saves ~30 s of CPU
    t0 = time.monotonic()
    jobs = [subprocess.Popen([str(PKG / "build")], env={**os.environ, "RELAY_DIST": str(tmp / dist),
                                                         "RELAY_SRC": str(tree), "SOURCE_DATE_EPOCH": sde,
                                                         "RELAY_PKG_FAST": fast},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for dist, tree, fast in (("dist2", src, ""), ("dist3", src3, "1"))]
    for j in jobs:
        out, _ = j.communicate(timeout=600)
        assert j.returncode == 0, f"packaging/build failed ({j.returncode}):\n{out[-4000:]}"
    TIMINGS["rebuild both + v2, at once"] = time.monotonic() - t0
    d = {
        "deb": tmp / "dist1" / f"relay_{VERSION}-1_amd64.deb",
        "rpm": tmp / "dist1" / f"relay-{VERSION}-1.x86_64.rpm",
        "deb_again": tmp / "dist2" / f"relay_{VERSION}-1_amd64.deb",
        "rpm_again": tmp / "dist2" / f"relay-{VERSION}-1.x86_64.rpm",
        "deb_v2": tmp / "dist3" / f"relay_{v2}-1_amd64.deb",
        "rpm_v2": tmp / "dist3" / f"relay-{v2}-1.x86_64.rpm",
        "v2": v2,
        "tmp": tmp,
    }
    for k, p in d.items():
        if k not in ("v2", "tmp"):
            assert p.is_file(), f"packaging/build did not produce {p}"
    return d


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- build artefacts

def test_versions_come_from_version_py(built):
    assert sh("dpkg-deb", "-f", built["deb"], "Version").stdout.strip() == f"{VERSION}-1"
    assert sh("rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", built["rpm"]).stdout.strip() == f"{VERSION}-1"
    assert sh("dpkg-deb", "-f", built["deb_v2"], "Version").stdout.strip() == f"{built['v2']}-1"
    assert sh("rpm", "-qp", "--qf", "%{VERSION}", built["rpm_v2"]).stdout.strip() == built["v2"]


def test_release_builds_xz_and_fast_builds_gzip(built):
    """The shipped packages are xz-compressed; RELAY_PKG_FAST=1 (the v2 upgrade target) is gzip."""
    def deb_data(p):
        return [m for m in sh("ar", "t", p).stdout.split() if m.startswith("data.tar")]
    assert deb_data(built["deb"]) == ["data.tar.xz"] and deb_data(built["deb_v2"]) == ["data.tar.gz"]
    qf = "%{PAYLOADCOMPRESSOR}"
    assert sh("rpm", "-qp", "--qf", qf, built["rpm"]).stdout.strip() == "xz"
    assert sh("rpm", "-qp", "--qf", qf, built["rpm_v2"]).stdout.strip() == "gzip"


def test_reproducible_from_another_path(built):
    assert _sha(built["deb"]) == _sha(built["deb_again"]), "the .deb differs between two builds of the same tree"
    assert _sha(built["rpm"]) == _sha(built["rpm_again"]), "the .rpm differs between two builds of the same tree"


def test_lintian_clean(built):
    r = sh("lintian", "--fail-on", "error,warning", "--no-tag-display-limit", built["deb"], check=False)
    assert r.returncode == 0, f"lintian:\n{r.stdout}\n{r.stderr}"
    assert "unused-override" not in r.stdout


def test_rpmlint_clean(built):
    if not shutil.which("rpmlint"):
        pytest.skip("rpmlint is not installed (packaging/deps installs it on Debian)")
    r = sh("rpmlint", "-r", PKG / "rpm" / "relay.rpmlintrc", built["rpm"], check=False)
    out = r.stdout + r.stderr
    assert re.search(r"0 errors, 0 warnings", out), f"rpmlint:\n{out}"


def test_one_payload_in_both_packages(built, tmp_path):
    """/opt/relay is byte-identical in the .deb and the .rpm."""
    d, r = tmp_path / "deb", tmp_path / "rpm"
    d.mkdir()
    r.mkdir()
    sh("dpkg-deb", "-x", built["deb"], d)
    sh("sh", "-c", f"rpm2cpio '{built['rpm']}' | cpio -idm --quiet", cwd=r)

    def tree(base: Path) -> dict:
        out = {}
        for p in sorted((base / "opt/relay").rglob("*")):
            rel = str(p.relative_to(base))
            out[rel] = "link:" + os.readlink(p) if p.is_symlink() else (_sha(p) if p.is_file() else "dir")
        return out
    td, tr = tree(d), tree(r)
    assert len(td) > 400 and td == tr
    # the Grafana dashboard and the Prometheus rules ship in both, as in the tree
    for name in ("relay-dashboard.json", "relay-alerts.yml"):
        want = (PKG / "monitoring" / name).read_bytes()
        assert (d / "usr/share/relay/monitoring" / name).read_bytes() == want
        assert (r / "usr/share/relay/monitoring" / name).read_bytes() == want
    assert (d / "opt/relay/bin/relay").read_text().startswith("#!/opt/relay/bin/python\n")
    assert "command" not in (d / "opt/relay/pyvenv.cfg").read_text()
    assert not list(d.glob("opt/relay/bin/activate*")) and not list(d.glob("opt/relay/bin/pip*"))
    # uvloop is not shipped: the daemon runs the stdlib loop every test runs (relay/server.py)
    assert not list(d.glob("opt/relay/lib/python3.11/site-packages/uvloop*"))
    # every .py is precompiled (unchecked-hash) so nothing writes __pycache__ under /opt at run time
    pys = list(d.glob("opt/relay/lib/python3.11/site-packages/relay/**/*.py"))
    assert pys and all(list(p.parent.glob(f"__pycache__/{p.stem}.cpython-311.pyc")) for p in pys)


def test_rpm_layout_requires_scripts(built):
    rpm = built["rpm"]
    files = sh("rpm", "-qlp", rpm).stdout.split()
    for f in ["/opt/relay/bin/relay", "/opt/relay/pyvenv.cfg", "/usr/bin/relay", "/etc/relay/relay.toml",
              "/usr/lib/systemd/system/relay.service", "/usr/lib/sysusers.d/relay.conf",
              "/usr/lib/tmpfiles.d/relay.conf", "/var/lib/relay", "/usr/share/doc/relay/copyright",
              "/usr/share/relay/monitoring/relay-dashboard.json", "/usr/share/relay/monitoring/relay-alerts.yml"]:
        assert f in files, f"{f} not in the .rpm"
    flags = sh("rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:"
               "%{FILEGROUPNAME}\n]", rpm).stdout
    assert re.search(r"^/etc/relay/relay.toml cn -rw-r----- root:relay$", flags, re.M), \
        "relay.toml must be %config(noreplace) root:relay 0640"
    assert re.search(r"^/var/lib/relay\s+drwx------ relay:relay$", flags, re.M)
    req = [line.strip() for line in sh("rpm", "-qp", "--requires", rpm).stdout.splitlines()]
    assert "/usr/bin/python3.11" in req and "systemd" in req and "/usr/bin/kill" in req
    assert not [x for x in req if "python(abi)" in x or x.startswith("lib") or "/opt/" in x], \
        f"automatic requires leaked from the bundled venv: {req}"
    prov = sh("rpm", "-qp", "--provides", rpm).stdout.split("\n")
    assert not [x for x in prov if "python3" in x], f"the venv leaked provides: {prov}"
    scripts = sh("rpm", "-qp", "--scripts", rpm).stdout
    assert "useradd -r -g relay" in scripts and "preset relay.service" in scripts
    assert "disable --now relay.service" in scripts and "try-restart relay.service" in scripts
    lic = sh("rpm", "-qp", "--qf", "%{LICENSE}", rpm).stdout
    assert lic.startswith("LicenseRef-Proprietary AND ")


def test_copyright_covers_every_locked_requirement():
    locked = re.findall(r"^([A-Za-z0-9_.-]+)==", (PKG / "requirements.lock").read_text(), re.M)
    text = (PKG / "copyright").read_text()
    assert locked
    for name in locked:
        mod = name.lower().replace("-", "_")
        assert f"site-packages/{mod}*" in text, f"packaging/copyright has no stanza for {name}"


def test_lock_covers_pyproject_dependencies():
    """A dependency added to pyproject.toml must reach the packages: re-run packaging/lock."""
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    lock = (PKG / "requirements.lock").read_text()
    locked = {n.lower().replace("_", "-") for n in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    assert names <= locked, f"not in packaging/requirements.lock (run packaging/lock): {sorted(names - locked)}"
    assert "uvloop" not in locked
    assert lock.count("--hash=sha256:") >= len(locked)


def test_unit_security_offline(env_ok):
    """systemd-analyze security on the unit file alone (the full verify runs in the test root)."""
    r = sh("systemd-analyze", "security", "--offline=true", "--threshold=20", PKG / "relay.service", check=False)
    m = re.search(r"Overall exposure level for relay.service: ([0-9.]+) (\w+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    TIMINGS["exposure (host, unit file)"] = float(m[1])
    assert float(m[1]) <= 2.0, r.stdout


# ----------------------------------------------------------------------------- .deb in a clean root

@pytest.fixture(scope="module")
def target(built, tmp_path_factory):
    deps = sorted({re.sub(r"\(.*\)", "", d).strip() for d in
                   sh("dpkg-deb", "-f", built["deb"], "Depends").stdout.split(",")})
    t0 = time.monotonic()
    tarball = sh(TESTROOT, "base", CACHE, *deps, timeout=900).stdout.strip().splitlines()[-1]
    TIMINGS["debian root (cache)"] = time.monotonic() - t0
    root = tmp_path_factory.mktemp("target") / "root"
    sh(TESTROOT, "new", tarball, root)
    for f in ("send.py", "smoke-chroot.sh", "boot-smoke.sh"):
        shutil.copy(PKG / "tests" / f, root / "tmp" / f)
    shutil.copy(PKG / "tests" / "send.py", root / "root" / "send.py")
    shutil.copy(PKG / "tests" / "boot-smoke.sh", root / "root" / "boot-smoke.sh")
    shutil.copy(built["deb"], root / "tmp" / "relay.deb")
    shutil.copy(built["deb_v2"], root / "tmp" / "relay-v2.deb")
    return root


def inroot(root: Path, *cmd, check=True, timeout=300):
    return sh(TESTROOT, "run", root, *cmd, check=check, timeout=timeout)


def test_deb_installs_offline_with_its_dependencies(target, built):
    assert not (target / "usr/bin/python3.11").exists(), "the cached root must not have the deps installed"
    # No network in the namespace: apt installs the Depends of the .deb from the archives
    # pre-fetched when the root was cached, then dpkg installs relay (whose configure would fail
    # on any missing dependency).  (apt-get install ./relay.deb hits apt 2.6's "Pathname to install
    # is not absolute" internal error in this chroot.)
    deps = sorted({re.sub(r"\(.*\)", "", d).strip() for d in
                   sh("dpkg-deb", "-f", built["deb"], "Depends").stdout.split(",")})
    inroot(target, "apt-get", "install", "-y", "-q", "--no-download", "--no-install-recommends", *deps)
    r = inroot(target, "dpkg", "-i", "/tmp/relay.deb")
    assert "Setting up relay" in r.stdout
    st = (target / "etc/relay/relay.toml").stat()
    pw = {l.split(":")[0]: l.split(":") for l in (target / "etc/passwd").read_text().splitlines()}
    gr = {l.split(":")[0]: l.split(":") for l in (target / "etc/group").read_text().splitlines()}
    assert "relay" in pw and pw["relay"][6] == "/usr/sbin/nologin" and pw["relay"][5] == "/var/lib/relay"
    assert int(pw["relay"][2]) < 1000, "relay must be a system user"
    assert st.st_uid == 0 and st.st_gid == int(gr["relay"][2]) and oct(st.st_mode & 0o777) == "0o640"
    sd = (target / "var/lib/relay").stat()
    assert sd.st_uid == int(pw["relay"][2]) and oct(sd.st_mode & 0o777) == "0o700"
    assert os.readlink(target / "usr/bin/relay") == "/opt/relay/bin/relay"
    # enabled by the debhelper snippets (started at the next boot: no systemd runs in a chroot)
    assert (target / "etc/systemd/system/multi-user.target.wants/relay.service").is_symlink()


def _opt_files(target: Path) -> set:
    return {str(p) for p in (target / "opt/relay").rglob("*")}


def test_relay_version_as_root_and_as_relay(target):
    before = _opt_files(target)
    assert inroot(target, "relay", "--version").stdout.strip() == f"relay {VERSION}"
    out = inroot(target, "setpriv", "--reuid=relay", "--regid=relay", "--init-groups", "/usr/bin/relay",
                 "--version").stdout.strip()
    assert out == f"relay {VERSION}"
    r = inroot(target, "setpriv", "--reuid=relay", "--regid=relay", "--init-groups", "/usr/bin/relay",
               "validate", "/etc/relay/relay.toml")
    assert "valid: 2 source(s)" in r.stdout
    # the package ships the native accelerator and the packaged relay uses it (issue 19)
    info = json.loads(inroot(target, "relay", "version", "--json").stdout)
    assert info["version"] == VERSION and info["hot_path"] == "native" and info["udp_receive"] == "recvmmsg", info
    assert info["hot_path_detail"].startswith("parsers._speedups (_speedups.cpython-311-x86_64-linux-gnu.so"), info
    assert info["executable"] == "/opt/relay/bin/python", info
    assert list((target / "opt/relay/lib").glob("python3.11/site-packages/parsers/_speedups.cpython-311-*.so"))
    assert list((target / "opt/relay/lib").glob("python3.11/site-packages/relay/_recvmmsg.cpython-311-*.so"))
    # running it as root wrote nothing under /opt (the .pyc are shipped precompiled)
    assert _opt_files(target) == before


def test_smoke_udp_and_tcp_on_514_as_user_relay(target):
    r = inroot(target, "/bin/sh", "/tmp/smoke-chroot.sh", "chroot", check=False, timeout=120)
    assert r.returncode == 0 and "SMOKE OK" in r.stdout, r.stdout + r.stderr
    assert re.search(r"CapEff:\s*0000000000000400", r.stdout), r.stdout  # CAP_NET_BIND_SERVICE only
    uid = [l for l in (target / "etc/passwd").read_text().splitlines() if l.startswith("relay:")][0].split(":")[2]
    assert re.search(rf"Uid:\s*{uid}\s", r.stdout)
    arch = (target / "var/lib/relay/out/archive.jsonl").read_text()
    assert "chroot-udp" in arch and "chroot-tcp" in arch
    leef = target / "var/lib/relay/out/qradar.leef"   # the routes send plain messages only to the archive
    assert not leef.exists() or "chroot-" not in leef.read_text("utf-8")


def test_systemd_analyze_verify_and_security(target):
    r = sh("systemd-analyze", "verify", f"--root={target}", "relay.service", check=False)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    r = sh("systemd-analyze", "security", "--offline=true", f"--root={target}", "relay.service", check=False)
    m = re.search(r"Overall exposure level for relay.service: ([0-9.]+) (\w+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    TIMINGS["exposure (installed)"] = float(m[1])
    print(f"\nsystemd-analyze security relay.service: {m[1]} {m[2]}")
    assert float(m[1]) <= 2.0


def test_boot_with_systemd_runs_the_hardened_unit(target):
    """Boot the root with systemd-nspawn (private network): the real unit, its sandbox and
    Type=notify, then UDP+TCP on :514 and a reload."""
    if not shutil.which("systemd-nspawn"):
        pytest.skip("systemd-nspawn missing (packaging/deps installs systemd-container)")
    unit = target / "etc/systemd/system/relay-smoke.service"
    shutil.copy(PKG / "tests" / "relay-smoke.service", unit)
    wants = target / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "relay-smoke.service"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/systemd/system/relay-smoke.service")
    out = target / "root/smoke.out"
    out.unlink(missing_ok=True)
    shutil.rmtree(target / "var/lib/relay/out", ignore_errors=True)
    t0 = time.monotonic()
    r = subprocess.run(["timeout", "180", "systemd-nspawn", "-q", "-D", str(target), "--register=no",
                        "--keep-unit", "--private-network", "--boot", "--console=pipe"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    TIMINGS["nspawn boot"] = time.monotonic() - t0
    link.unlink()
    unit.unlink()
    text = out.read_text() if out.exists() else "(no smoke.out)"
    assert "BOOT SMOKE OK" in text, f"{text}\n--- nspawn rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert re.search(r"CapEff:\s*0000000000000400", text) and re.search(r"NoNewPrivs:\s*1", text)
    assert re.search(r"Seccomp:\s*2", text), text
    assert "StatusText=relay running" in text or "StatusText=" in text


def test_upgrade_keeps_the_edited_conffile(target, built):
    conf = target / "etc/relay/relay.toml"
    edited = conf.read_text().replace('log_level = "info"', 'log_level = "debug"') + "# edited by the admin\n"
    conf.write_text(edited)
    r = inroot(target, "dpkg", "-i", "/tmp/relay-v2.deb")
    assert f"Unpacking relay ({built['v2']}-1) over ({VERSION}-1)" in r.stdout, r.stdout
    assert conf.read_text() == edited
    assert not list((target / "etc/relay").glob("relay.toml.dpkg-*"))
    st = conf.stat()
    assert oct(st.st_mode & 0o777) == "0o640"
    assert inroot(target, "relay", "--version").stdout.strip() == f"relay {built['v2']}"
    sp = target / "opt/relay/lib/python3.11/site-packages"
    assert (sp / f"relay-{built['v2']}.dist-info").is_dir() and not (sp / f"relay-{VERSION}.dist-info").exists()


def test_remove_keeps_state_and_purge_removes_it(target):
    inroot(target, "dpkg", "--remove", "relay")
    assert not (target / "opt/relay").exists() and not (target / "usr/bin/relay").exists()
    assert (target / "etc/relay/relay.toml").exists(), "remove must keep the conffile"
    assert (target / "var/lib/relay/out/archive.jsonl").exists(), "remove must keep the state (queues)"
    inroot(target, "dpkg", "--purge", "relay")
    assert not (target / "etc/relay").exists()
    assert not (target / "var/lib/relay").exists()
    assert not (target / "etc/systemd/system/multi-user.target.wants/relay.service").exists()
    # the system user stays (Debian practice: its uid may still own files elsewhere)
    assert "\nrelay:" in "\n" + (target / "etc/passwd").read_text()
    r = inroot(target, "dpkg-query", "-W", "-f=${Status}", "relay", check=False)
    assert "installed" not in r.stdout or "not-installed" in r.stdout


def test_rpm_installs_and_runs_its_scriptlets(built, tmp_path):
    """The .rpm in a Debian root that has /usr/bin/python3.11 (no EL root is reachable here):
    %pre creates the user, %attr/%config land, relay runs, an upgrade keeps the edited config,
    rpm -e cleans /opt."""
    deps = sorted({re.sub(r"\(.*\)", "", d).strip() for d in
                   sh("dpkg-deb", "-f", built["deb"], "Depends").stdout.split(",")})
    tarball = sh(TESTROOT, "base", CACHE, *deps, timeout=900).stdout.strip().splitlines()[-1]
    root = tmp_path / "root"
    sh(TESTROOT, "new", tarball, root)
    inroot(root, "apt-get", "install", "-y", "-q", "--no-download", "--no-install-recommends", *deps)
    rpm = ["unshare", "-n", "rpm", "--root", root, "--dbpath", "/var/lib/rpm"]   # package path: host side
    sh(*rpm, "--initdb")
    r = sh(*rpm, "--test", "-i", built["rpm"], check=False)
    assert r.returncode != 0 and "/usr/bin/python3.11" in r.stderr, "rpm must demand /usr/bin/python3.11"
    sh(*rpm, "-i", "--nodeps", built["rpm"])
    assert "\nrelay:" in "\n" + (root / "etc/passwd").read_text(), "%pre did not create the relay user"
    gid = int([l for l in (root / "etc/group").read_text().splitlines() if l.startswith("relay:")][0].split(":")[2])
    st = (root / "etc/relay/relay.toml").stat()
    assert st.st_uid == 0 and st.st_gid == gid and oct(st.st_mode & 0o777) == "0o640"
    assert oct((root / "var/lib/relay").stat().st_mode & 0o777) == "0o700"
    assert (root / "usr/lib/systemd/system/relay.service").is_file()
    assert inroot(root, "relay", "--version").stdout.strip() == f"relay {VERSION}"
    assert json.loads(inroot(root, "relay", "version", "--json").stdout)["hot_path"] == "native"
    v = sh(*rpm, "-V", "--nodeps", "relay", check=False)
    assert v.returncode == 0, f"rpm -V: {v.stdout}{v.stderr}"
    # upgrade: %config(noreplace) keeps the admin's edit, the new version runs
    conf = root / "etc/relay/relay.toml"
    edited = conf.read_text() + "# edited by the admin\n"
    conf.write_text(edited)
    sh(*rpm, "-U", "--nodeps", built["rpm_v2"])
    assert conf.read_text() == edited and not list((root / "etc/relay").glob("relay.toml.rpm*"))
    assert inroot(root, "relay", "--version").stdout.strip() == f"relay {built['v2']}"
    assert not (root / f"opt/relay/lib/python3.11/site-packages/relay-{VERSION}.dist-info").exists()
    sh(*rpm, "-e", "--nodeps", "relay")
    assert not (root / "opt/relay").exists() and not (root / "usr/bin/relay").exists()


def test_zz_report_timings(capsys):
    with capsys.disabled():
        print("\npackaging timings/figures: " + ", ".join(f"{k}: {v:.1f}" for k, v in TIMINGS.items()))
