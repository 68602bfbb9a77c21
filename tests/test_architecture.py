"""The architecture rules, checked on the code itself (docs/architecture.md):

* imports run ``relay -> formats -> parsers``, never back: ``parsers`` imports neither
  ``formats`` nor ``relay``, ``formats`` does not import ``relay``;
* there are no import cycles among the modules of the three packages, counting every import
  statement, at module level or inside a function;
* the daemon (``relay run``: relay.server, relay.workers and everything they import, every
  source and sink kind) never imports the tools (relay.tools): checked statically and in a
  process that loads a config with [[tests]] and builds every kind.  One exception, on
  purpose: the web console (relay.console) runs test-parse's and the cases' code in the
  daemon, so the daemon reaches the tools through it; relay.server imports it inside a
  function, only when ``[relay] console = true`` (off by default), and nothing else in the
  daemon imports it: checked here, and at run time with the console off;
* no source or sink type name appears as a string outside its own module.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("relay", "parsers", "formats")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(mod: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(name: str) -> str | None:
    """The module of ours that ``name`` is, or the longest prefix of it that is one."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in MODULES:
            return cand
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, path, node)
                for a in node.names:     # "from pkg import submodule" imports the submodule
                    sub = f"{base}.{a.name}"
                    names.append(sub if sub in MODULES else base)
            for n in names:
                t = _targets(n)
                if t is not None and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def _reach(graph: dict[str, set[str]], starts) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph[m])
    return seen


def test_layers_relay_formats_parsers_never_back():
    graph = import_graph()
    bad = [(m, t) for m, ts in graph.items() for t in ts
           if (m.split(".")[0] == "parsers" and t.split(".")[0] in ("formats", "relay"))
           or (m.split(".")[0] == "formats" and t.split(".")[0] == "relay")]
    assert not bad, f"imports against the layering (relay -> formats -> parsers): {bad}"


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_graph_sees_lazy_imports():
    """The checker must see imports inside functions (a cycle hidden in one still bites)."""
    graph = import_graph()
    assert "relay.tools.cases" in graph["relay.cli"]          # imported inside the commands
    assert "relay.workers" in graph["relay.server"]           # imported when workers > 1


#: modules the daemon imports only when an off-by-default feature is on (see the docstring)
OPT_IN = {"relay.console"}


def _lazy_imports(path: Path) -> set[str]:
    """Modules imported inside a function of ``path`` (relative imports resolved loosely)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.level and node.module:
                    out.add("relay." + node.module)
    return out


def test_opt_in_modules_are_imported_lazily_by_the_server_only():
    graph = import_graph()
    for m in OPT_IN:
        importers = sorted(k for k, ts in graph.items() if m in ts and k != m and not k.startswith(m + "."))
        assert importers == ["relay.server"], f"{m} is imported by {importers}: only relay.server, when enabled"
    assert OPT_IN <= _lazy_imports(MODULES["relay.server"]), "relay.server must import them inside a function"
    top = {n.module for n in ast.parse(MODULES["relay.server"].read_text()).body
           if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m.split(".", 1)[1] for m in OPT_IN} & top


def test_daemon_never_imports_the_tools_statically():
    graph = import_graph()
    graph = {k: {t for t in ts if t not in OPT_IN} for k, ts in graph.items()}   # opt-in: see above
    daemon = {"relay.server", "relay.workers"} | {m for m in MODULES if m.startswith(("relay.sources.", "relay.sinks."))}
    reached = _reach(graph, daemon)
    tools = sorted(m for m in reached if m == "relay.tools" or m.startswith("relay.tools."))
    assert not tools, f"the daemon reaches the tools: {tools}"


def test_daemon_never_imports_the_tools_at_run_time(tmp_path):
    """A config with [[tests]] (but no run_tests_at_start), loaded and staged as `relay run`
    does, every kind built: relay.tools is never imported."""
    conf = tmp_path / "relay.toml"
    conf.write_text('''
[relay]
state_dir = "state"
[sources.tcp]
type = "tcp"
address = "127.0.0.1:0"
[sinks.out]
type = "file"
path = "out.log"
[routes.all]
match = 'true'
sinks = ["out"]
[[tests]]
input = "<13>1 2026-01-01T00:00:00Z h a - - - x"
routes = ["all"]
''')
    code = f'''
import sys
from relay import kinds, server, workers
from relay.config import load
from relay.pipeline import Pipeline
cfg = load({str(conf)!r})
kinds.sources(); kinds.sinks()
p = Pipeline(cfg)
p.process(b"<13>1 2026-01-01T00:00:00Z h a - - - x", cfg.sources["tcp"], "127.0.0.1:1", 0.0)
print(sorted(m for m in sys.modules if m.startswith(("relay.tools", "relay.console"))))
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_type_names_live_only_in_their_modules():
    """`"xsoar"` in relay/pipeline.py is how kinds leaked everywhere; the registry is the only
    way to ask about a kind."""
    from relay import kinds
    owners = {}
    for name, k in [*kinds.sources().items(), *kinds.sinks().items()]:   # a source and a sink may share a name
        owners.setdefault(name, set()).add(Path(sys.modules[k.factory.__module__].__file__).resolve())
    # names that are also ordinary words of the code (a "file" key, the "syslog" record of
    # test-parse, the "tcp"/"udp" protocol of a syslog sink, the "http" URL scheme and ASGI
    # scope type, the "nats" servers key of [relay.claims]) are checked only where a type could
    # be meant: comparisons with .type
    ambiguous = {"file", "syslog", "tcp", "udp", "tls", "http", "nats"}
    offenders = []
    for mod, path in MODULES.items():
        if not mod.startswith("relay"):     # parsers/formats name vendors, not kinds
            continue
        lits = _string_literals(path)
        for name, homes in owners.items():
            if path.resolve() in homes or name in ambiguous:
                continue
            if name in lits:
                offenders.append((mod, name))
        src = path.read_text(encoding="utf-8")
        for name in ambiguous:
            for pat in (f'.type == "{name}"', f'.type != "{name}"', f'type in ("{name}"'):
                if pat in src and path.resolve() not in owners.get(name, ()):
                    offenders.append((mod, name))
    assert not offenders, f"type names outside their modules: {offenders}"


def test_docs_config_lists_every_kind_and_key():
    """docs/config.md has a section for every source and sink type naming each of its keys."""
    import re

    from relay import kinds
    text = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.M)
    missing = []
    for what, table in (("source", kinds.sources()), ("sink", kinds.sinks())):
        for name, kind in table.items():
            body = "".join(s for s in sections if f"`{name}`" in s.split("\n", 1)[0])
            if not body:
                missing.append(f"{what} type {name}: no section")
                continue
            for key in kind.keys:
                if f"`{key}`" not in body and f"{key}`" not in body and f".{key}]`" not in body:
                    missing.append(f"{what} type {name}: key {key}")
    assert not missing, missing


def test_the_daemon_never_runs_uvloop():
    """uvloop starts reading a new connection after connection_made returns, whatever the
    protocol paused: a TLS source's ClientHello reached the syslog deframer before start_tls,
    and every TLS connection failed (tests/test_tls_reload.py failed under uvloop).  The daemon
    runs the stdlib loop that every test and benchmark runs, and no module may pick uvloop."""
    users = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "uvloop" for n in names):
                users.append(mod)
    assert not users, f"modules importing uvloop: {users}"
