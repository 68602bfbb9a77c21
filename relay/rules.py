"""The routing rule language: parsed once with pyparsing, compiled to closures.

    rule = compile_rule('app_name == "SigmaIncident" and risk_score >= 70')
    if rule(event): ...            # or, in a hot loop: match = rule.match

pyparsing is used only inside :func:`compile_rule`.  The result is a tree of
plain Python closures: each field path is resolved at compile time to a
specialised getter (``attrgetter`` for header fields, nested ``dict.get`` for
structured data, canonical fields, JSON body and enrichment) and each
comparison to a value test with its literal pre-converted (numbers parsed,
regexes compiled, ``in`` lists turned into sets).  Evaluating a rule allocates
nothing in the common case and never raises: a comparison that fails with an
exception (a malformed event) counts as ``False`` and is counted in
``rule.errors`` and :func:`eval_errors`.

The language is documented, with examples, in ``docs/rules.md``.  Summary::

    rule       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" rule ")" | "true" | "false" | comparison
    comparison := path ( ("=="|"!="|"<"|"<="|">"|">=") value
                       | ["not"] "in" list | "contains" scalar
                       | "matches" /regex/flags | ["not"] "exists" )
    path       := name ("." (name | "quoted") | "[" int "]")*
    value      := "str" | 'str' | int | float | true | false | null | list
"""
from __future__ import annotations

import math
import re
import sys
from operator import attrgetter, eq, ge, gt, le, lt, ne

__all__ = [
    "Rule", "RuleSyntaxError", "compile_rule", "explain", "eval_errors",
    "HEADER_FIELDS", "ROOTS", "KEYWORDS",
]

#: Event attributes addressed by bare name.  They are reserved: a canonical
#: field with one of these names must be written ``fields.<name>``.
HEADER_FIELDS = frozenset((
    "format", "pri", "facility", "severity", "version", "timestamp", "time_unix",
    "hostname", "app_name", "procid", "msgid", "msg", "peer", "source",
))
#: Roots that take sub-paths.  Any other first name is looked up in
#: ``event.fields`` and then in ``event.enrich``.
ROOTS = frozenset(("sd", "fields", "body", "enrich", "meta"))
#: Reserved words (case-insensitive); not usable as the first name of a path.
KEYWORDS = ("and", "or", "not", "in", "contains", "matches", "exists", "true", "false", "null")

_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}

_EVAL_ERRORS = [0]


def eval_errors() -> int:
    """How many comparisons, over all rules, raised and were counted as false."""
    return _EVAL_ERRORS[0]


class RuleSyntaxError(ValueError):
    """A rule that does not compile.  ``column`` is 1-based within ``line_text``
    (the line of the rule where the error is); ``lineno`` is 1-based."""

    def __init__(self, message: str, column: int, line_text: str, lineno: int = 1) -> None:
        self.message = message
        self.column = column
        self.line_text = line_text
        self.lineno = lineno
        pad = "".join("\t" if ch == "\t" else " " for ch in line_text[:max(column - 1, 0)])
        where = f" (line {lineno})" if lineno > 1 else ""
        super().__init__(f"{line_text}\n{pad}^ {message}{where}")


# --------------------------------------------------------------------------
# value helpers used at evaluation time (plain Python, allocation-light)

def _num(s: str):
    """The number a numeric-looking string stands for, else None.  Accepts
    surrounding whitespace, a sign, decimals and exponents; rejects nan/inf,
    underscores and non-ASCII digits."""
    if s.isdigit() and s.isascii():
        return int(s)
    if not s.isascii() or "_" in s:
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return None
    if f - f != 0.0:     # inf, nan
        return None
    return f


def _as_bool(s: str):
    t = s.strip().lower()
    if t == "true":
        return True
    if t == "false":
        return False
    return None


def _walk(obj, segs):
    """Follow ``segs`` (str keys, int indexes) from ``obj``; None when a step
    does not apply (missing key, wrong type, index out of range)."""
    for s in segs:
        if s.__class__ is int:
            if isinstance(obj, (list, tuple)) and -len(obj) <= s < len(obj):
                obj = obj[s]
            else:
                return None
        elif isinstance(obj, dict):
            obj = obj.get(s)
        else:
            return None
        if obj is None:
            return None
    return obj


def _load_body(ev):
    """``event.body``, parsing ``event.msg`` as JSON (and caching it in
    ``event.body``) when the body was not parsed yet and msg looks like JSON."""
    b = ev.body
    if b is not None:
        return b
    m = ev.msg
    if m.__class__ is not str:
        return None
    s = m.lstrip()
    if not s or s[0] not in "{[":
        return None
    try:
        b = _json_loads(s)
    except Exception:
        return None
    ev.body = b
    return b


try:  # orjson is a dependency; json is the fallback for odd installs
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover
    from json import loads as _json_loads


# --------------------------------------------------------------------------
# AST built by the parse actions


class _Path:
    __slots__ = ("root", "segs", "loc", "text", "kind", "get", "multi")

    def __init__(self, segs, loc):
        self.segs = segs          # [first, ...]; str names, int indexes
        self.root = segs[0]
        self.loc = loc
        self.text = _path_text(segs)


class _Lit:
    __slots__ = ("value", "loc")

    def __init__(self, value, loc):
        self.value = value
        self.loc = loc


class _Rx:
    __slots__ = ("regex", "loc", "source")

    def __init__(self, regex, loc, source):
        self.regex = regex
        self.loc = loc
        self.source = source


class _Cmp:
    __slots__ = ("path", "op", "operand", "loc", "end", "oploc")

    def __init__(self, path, op, operand, loc, end, oploc):
        self.path, self.op, self.operand = path, op, operand
        self.loc, self.end, self.oploc = loc, end, oploc


class _Not:
    __slots__ = ("child",)

    def __init__(self, child):
        self.child = child


class _Const:
    """A literal ``true`` or ``false`` standing for a whole condition (``match = 'true'``)."""

    __slots__ = ("value",)

    def __init__(self, value: bool):
        self.value = value


class _BoolOp:
    __slots__ = ("op", "children")

    def __init__(self, op, children):
        self.op = op
        self.children = children


_ID = r"[A-Za-z_][A-Za-z0-9_\-]*"
_PEN = r"(?:@[0-9]+(?:\.[0-9]+)*)?"
_QSEG = r'"(?:[^"\\\n]|\\.)*"' + "|" + r"'(?:[^'\\\n]|\\.)*'"
_BARE_SEG_RE = re.compile(_ID + _PEN)
_SEG_RE = re.compile(rf"\.?({_ID}{_PEN})|\.({_QSEG})|\[(-?[0-9]+)\]")


def _path_text(segs) -> str:
    out = [segs[0]]
    for s in segs[1:]:
        if s.__class__ is int:
            out.append(f"[{s}]")
        elif _BARE_SEG_RE.fullmatch(s):
            out.append("." + s)
        else:
            out.append(".\"" + s.replace("\\", "\\\\").replace('"', '\\"') + "\"")
    return "".join(out)


_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "/": "/"}
_HEXLEN = {"x": 2, "u": 4, "U": 8}


class _CompileError(Exception):
    def __init__(self, loc, message):
        super().__init__(message)
        self.loc = loc
        self.message = message


def _unescape(body: str, loc: int) -> str:
    """Undo escapes in a quoted string whose body starts at ``loc``."""
    if "\\" not in body:
        return body
    out = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        e = body[i + 1] if i + 1 < n else ""
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in _HEXLEN:
            digits = body[i + 2:i + 2 + _HEXLEN[e]]
            if len(digits) != _HEXLEN[e] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise _CompileError(loc + i, f"\\{e} needs {_HEXLEN[e]} hex digits")
            cp = int(digits, 16)
            if cp > 0x10FFFF:
                raise _CompileError(loc + i, "escape beyond U+10FFFF")
            out.append(chr(cp))
            i += 2 + _HEXLEN[e]
        else:
            raise _CompileError(loc + i, f"unknown escape \\{e}" if e else "unknown escape \\")
    return "".join(out)


# --------------------------------------------------------------------------
# the grammar (built lazily, once)

_GRAMMAR = None


def _grammar():
    global _GRAMMAR
    if _GRAMMAR is not None:
        return _GRAMMAR
    import pyparsing as pp

    def fatal(message):
        def action(s, loc, toks):
            raise pp.ParseFatalException(s, loc, message)
        return action

    def kw(word):
        return pp.CaselessKeyword(word, ident_chars=pp.identchars + "-@")

    AND, OR, NOT, IN = kw("and"), kw("or"), kw("not"), kw("in")
    CONTAINS, MATCHES, EXISTS = kw("contains"), kw("matches"), kw("exists")
    TRUE, FALSE, NULL = kw("true"), kw("false"), kw("null")
    LPAR, RPAR = pp.Suppress("("), pp.Suppress(")")
    LBRACK, RBRACK, COMMA = pp.Suppress("["), pp.Suppress("]"), pp.Suppress(",")
    LBRACK.set_name("a list [...]")
    LPAR.set_name("'('")
    RPAR.set_name("')'")
    RBRACK.set_name("']' or ','")

    kwre = r"(?i:(?:" + "|".join(KEYWORDS) + r")(?![A-Za-z0-9_\-@]))"
    path = pp.Regex(rf"(?!{kwre}){_ID}{_PEN}(?:\.(?:{_ID}{_PEN}|{_QSEG})|\[-?[0-9]+\])*")
    path.set_name("a field path")

    def path_action(s, loc, toks):
        text = toks[0]
        segs = []
        for m in _SEG_RE.finditer(text):
            if m.group(1) is not None:
                segs.append(m.group(1))
            elif m.group(2) is not None:
                q = m.group(2)
                segs.append(_unescape(q[1:-1], loc + m.start(2) + 1))
            else:
                segs.append(int(m.group(3)))
        return _Path(segs, loc)

    path.add_parse_action(path_action)

    def str_action(s, loc, toks):
        q = toks[0]
        return _Lit(_unescape(q[1:-1], loc + 1), loc)

    string = pp.Regex(_QSEG).add_parse_action(str_action)

    def num_action(s, loc, toks):
        t = toks[0]
        if "." in t or "e" in t or "E" in t:
            v = float(t)
            if not math.isfinite(v):
                raise _CompileError(loc, "number out of range")
        else:
            v = int(t)
        return _Lit(v, loc)

    number = pp.Regex(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?(?![A-Za-z0-9_.@])").add_parse_action(num_action)
    true = TRUE.copy().add_parse_action(lambda s, loc, t: _Lit(True, loc))
    false = FALSE.copy().add_parse_action(lambda s, loc, t: _Lit(False, loc))
    null = NULL.copy().add_parse_action(lambda s, loc, t: _Lit(None, loc))
    unterminated = pp.Regex(r"[\"']").add_parse_action(fatal("unterminated string"))
    bareword = pp.Regex(rf"(?!{kwre}){_ID}").add_parse_action(
        lambda s, loc, t: _raise(pp, s, loc, f'expected a value (quote text: "{t[0]}")'))
    scalar = (string | number | true | false | null | unterminated | bareword).set_name("a value")

    list_body = pp.Optional(scalar + pp.ZeroOrMore(COMMA + scalar) + pp.Optional(COMMA))

    def list_action(s, loc, toks):
        return _Lit([t.value for t in toks], loc)

    lst = (LBRACK - list_body - RBRACK).add_parse_action(list_action).set_name("a list [...]")
    value = (scalar | lst).set_name("a value")

    def rx_action(s, loc, toks):
        text = toks[0]
        end = text.rindex("/")
        src, flags = text[1:end], text[end + 1:]
        f = 0
        for i, c in enumerate(flags):
            if c not in _REGEX_FLAGS:
                raise _CompileError(loc + end + 1 + i, f"unknown regex flag {c!r} (use i, m, s, x)")
            f |= _REGEX_FLAGS[c]
        try:
            rx = re.compile(src, f)
        except (re.error, OverflowError, RecursionError) as e:
            pos = getattr(e, "pos", None)
            raise _CompileError(loc + 1 + (pos or 0), f"bad regex: {getattr(e, 'msg', e)}")
        return _Rx(rx, loc, text)

    regex = (pp.Regex(r"/(?:[^/\\\n]|\\.)*/[A-Za-z]*").add_parse_action(rx_action)
             | pp.Regex(r"/").add_parse_action(fatal("unterminated regex"))).set_name("a regex /.../")

    cmp_op = pp.Regex(r"==|!=|<=|>=|<|>")
    ops = (
        (cmp_op - value)
        | (NOT.copy().suppress() - ((IN - lst) | EXISTS).set_name("'in' or 'exists'")).add_parse_action(
            lambda t: ["not " + t[0]] + list(t[1:]))
        | (IN - lst)
        | (CONTAINS - scalar)
        | (MATCHES - regex)
        | EXISTS
        | pp.Regex(r"[.\[]").add_parse_action(
            fatal("bad field path: expected a name or \"quoted name\" after '.', or an index [n]"))
    ).set_name("an operator (== != < <= > >= in, not in, contains, matches, exists)")

    def cmp_action(s, loc, toks):
        start, body, end = toks[0], toks[1], toks[2]
        p = body[0]
        op = body[1].lower()
        operand = body[2] if len(body) > 2 else None
        return _Cmp(p, op, operand, start, end, None)

    comparison = pp.Located(path - ops).add_parse_action(cmp_action)
    comparison.set_name("a comparison")

    expr = pp.Forward()
    not_expr = pp.Forward()
    const = ((TRUE.copy().add_parse_action(lambda s, loc, t: _Const(True)))
             | (FALSE.copy().add_parse_action(lambda s, loc, t: _Const(False))))
    primary = (LPAR - expr - RPAR) | const | comparison
    primary.set_name("a comparison")
    not_expr <<= ((NOT.copy().suppress() - not_expr).add_parse_action(lambda t: _Not(t[0]))
                  | primary).set_name("a comparison")

    def boolop(name):
        def action(toks):
            items = list(toks)
            return items[0] if len(items) == 1 else _BoolOp(name, items)
        return action

    and_expr = (not_expr + pp.ZeroOrMore(AND.copy().suppress() - not_expr)).add_parse_action(boolop("and"))
    expr <<= (and_expr + pp.ZeroOrMore(OR.copy().suppress() - and_expr)).add_parse_action(boolop("or"))
    end = pp.StringEnd().set_name("'and', 'or' or the end of the rule")
    _GRAMMAR = (pp, expr + end)
    return _GRAMMAR


def _raise(pp, s, loc, message):
    raise pp.ParseFatalException(s, loc, message)


# --------------------------------------------------------------------------
# compiling the AST to closures


def _bind_path(p: _Path) -> None:
    """Give ``p`` its getter; raise _CompileError for paths that cannot exist."""
    segs = p.segs
    root = p.root
    rest = segs[1:]
    p.multi = False
    if root in HEADER_FIELDS:
        if rest:
            raise _CompileError(p.loc, f"{root} is a header field and has no sub-fields"
                                       f" (for the canonical field write fields.{p.text})")
        p.kind = "header"
        p.get = attrgetter(root)
        return
    if root == "sd":
        if len(rest) > 2 or any(s.__class__ is int for s in rest):
            raise _CompileError(p.loc, "structured data paths are sd.<SD-ID> or sd.<SD-ID>.<param>"
                                       " (quote names with dots: sd.\"a.b\".param)")
        p.kind = "sd"
        if not rest:
            p.get = attrgetter("sd")
        elif len(rest) == 1:
            sid = rest[0]

            def get_sd_element(ev, sid=sid):
                sd = ev.sd
                return sd.get(sid) if sd else None
            p.get = get_sd_element
        else:
            sid, param = rest
            p.multi = True

            def get_sd_param(ev, sid=sid, param=param):
                sd = ev.sd
                if not sd:
                    return None
                e = sd.get(sid)
                return e.get(param) if e else None
            p.get = get_sd_param
        return
    if root in ("fields", "enrich", "meta"):
        p.kind = root
        if not rest:
            p.get = attrgetter(root)
        elif len(rest) == 1 and rest[0].__class__ is str:
            key = rest[0]
            ag = attrgetter(root)

            def get_one(ev, ag=ag, key=key):
                d = ag(ev)
                return d.get(key) if d else None
            p.get = get_one
        else:
            ag = attrgetter(root)
            r = tuple(rest)
            p.get = lambda ev: _walk(ag(ev), r)
        return
    if root == "body":
        p.kind = "body"
        r = tuple(rest)
        if not r:
            p.get = _load_body
        else:
            p.get = lambda ev: _walk(_load_body(ev), r)
        return
    # a bare name: canonical fields first, then enrichment
    p.kind = "bare"
    if len(segs) == 1:
        key = root

        def get_bare(ev, key=key):
            f = ev.fields
            if f:
                v = f.get(key)
                if v is not None:
                    return v
            e = ev.enrich
            return e.get(key) if e else None
        p.get = get_bare
    elif len(segs) == 2 and segs[1].__class__ is str:
        # the common alias shape (asset.criticality, ti.match) without _walk
        a, b = segs

        def get_bare2(ev, a=a, b=b):
            f = ev.fields
            if f:
                v = f.get(a)
                if isinstance(v, dict):
                    v = v.get(b)
                    if v is not None:
                        return v
            e = ev.enrich
            if e:
                v = e.get(a)
                if isinstance(v, dict):
                    return v.get(b)
            return None
        p.get = get_bare2
    else:
        r = tuple(segs)

        def get_bare_path(ev, r=r):
            v = _walk(ev.fields, r)
            if v is None:
                v = _walk(ev.enrich, r)
            return v
        p.get = get_bare_path


def _is_num(v) -> bool:
    c = v.__class__
    return c is int or c is float


_NOPE = object()


def _plain(v):
    """The exact str/int/float behind an instance of a subclass (StrEnum,
    IntEnum, ...), so that tests written for exact types apply; ``_NOPE`` for
    anything else (bools included)."""
    if isinstance(v, bool):
        return _NOPE
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, int):
        return int.__int__(v)
    if isinstance(v, float):
        return float.__float__(v)
    return _NOPE


def _eq_test(lit):
    """A function v -> bool: does value v equal literal ``lit`` (with coercion)?"""
    if lit is None:
        return lambda v: v is None
    if lit is True or lit is False:
        b = lit

        def eq_bool(v):
            c = v.__class__
            if c is bool:
                return v is b
            if c is str:
                return _as_bool(v) is b
            p = _plain(v)
            return p is not _NOPE and eq_bool(p)
        return eq_bool
    if _is_num(lit):
        n = lit

        def eq_num(v):
            c = v.__class__
            if c is int or c is float:
                return v == n
            if c is str:
                x = _num(v)
                return x is not None and x == n
            p = _plain(v)
            return p is not _NOPE and eq_num(p)
        return eq_num
    # a string literal
    s = lit
    sn = _num(s)
    sb = _as_bool(s)

    def eq_str(v):
        c = v.__class__
        if c is str:
            return v == s
        if c is int or c is float:
            return sn is not None and v == sn
        if c is bool:
            return sb is v
        p = _plain(v)
        return p is not _NOPE and eq_str(p)
    return eq_str


_ORDER = {"<": lt, "<=": le, ">": gt, ">=": ge}


def _order_test(op, lit):
    cmp = _ORDER[op]
    if _is_num(lit):
        n = lit

        def ord_num(v):
            c = v.__class__
            if c is int or c is float:
                return cmp(v, n)
            if c is str:
                x = _num(v)
                return x is not None and cmp(x, n)
            p = _plain(v)
            return p is not _NOPE and ord_num(p)
        return ord_num
    s = lit
    sn = _num(s)

    def ord_str(v):
        c = v.__class__
        if c is str:
            return cmp(v, s)
        if c is int or c is float:
            return sn is not None and cmp(v, sn)
        p = _plain(v)
        return p is not _NOPE and ord_str(p)
    return ord_str


def _in_test(items):
    strs = frozenset(x for x in items if x.__class__ is str)
    num_lits = frozenset(x for x in items if _is_num(x))
    bool_lits = frozenset(x for x in items if x is True or x is False)
    has_null = any(x is None for x in items)
    # what a number / a bool value may equal: number literals and the numbers
    # that numeric-looking string literals stand for; likewise "true"/"false"
    nums = frozenset(num_lits | {n for n in map(_num, strs) if n is not None})
    bools = frozenset(bool_lits | {b for b in map(_as_bool, strs) if b is not None})

    def in_list(v):
        c = v.__class__
        if c is str:
            if v in strs:
                return True
            if num_lits:
                x = _num(v)
                if x is not None and x in num_lits:
                    return True
            if bool_lits:
                b = _as_bool(v)
                if b is not None and b in bool_lits:
                    return True
            return False
        if c is int or c is float:
            return v in nums
        if c is bool:
            return v in bools
        if v is None:
            return has_null
        p = _plain(v)
        return p is not _NOPE and in_list(p)
    return in_list


def _contains_test(lit):
    elem_eq = _eq_test(lit)
    s = lit if lit.__class__ is str else None

    def contains(v):
        c = v.__class__
        if c is str:
            return s is not None and s in v
        if c is list or c is tuple:
            for x in v:
                if elem_eq(x):
                    return True
            return False
        if isinstance(v, dict):
            return s is not None and s in v
        if isinstance(v, str):
            return s is not None and s in str.__str__(v)
        if isinstance(v, (list, tuple)):
            return contains(list(v))
        return False
    return contains


def _matches_test(rx):
    search = rx.search

    def matches(v):
        c = v.__class__
        if c is str:
            return search(v) is not None
        if c is int or c is float:
            return search(repr(v)) is not None
        if c is list or c is tuple:
            for x in v:
                if x.__class__ is str and search(x) is not None:
                    return True
            return False
        p = _plain(v)
        return p is not _NOPE and matches(p)
    return matches


def _exists(v):
    return v is not None


def _missing(v):
    return v is None


def _member(v, members) -> bool:
    return v in members


def _not_member(v, members) -> bool:
    return v not in members


def _member_fast(items: list, test, negate: bool, p: _Path, errs: list, gerr: list):
    """``in`` / ``not in`` with a list of plain strings (none of them numeric- or
    boolean-looking) or of numbers only: a value of that kind is a member of the list's
    frozenset or not, which the native stage and the lane test themselves (``cmp_`` is
    :func:`_member` / :func:`_not_member`); any other value goes to the full test, negated
    for ``not in`` as every negated comparison is (None and a missing field: false).  None
    for any other list (the usual closure)."""
    if not items:
        return None
    if all(x.__class__ is str and _num(x) is None and _as_bool(x) is None for x in items):
        k1 = k2 = str
    elif all(_is_num(x) for x in items):
        k1, k2 = int, float
    else:
        return None
    members = frozenset(items)
    if negate:
        in_test = test

        def test(v):
            return v is not None and not in_test(v)
    return _fast_leaf(p, k1, k2, _not_member if negate else _member, members, test, errs, gerr)


def _fast_leaf(p: _Path, k1, k2, cmp_, lit, test, errs: list, gerr: list):
    """The closure of a comparison with a fast form, and the form (``leaf._fast``, which
    :func:`_program` and :func:`_and_fast` read): a value whose class is ``k1`` or ``k2`` is
    ``cmp_(v, lit)``, any other ``test(v)`` (with its coercions); an exception is counted and
    false.  A bare name's getter (fields, then enrich) is inlined."""
    if p.kind == "bare" and len(p.segs) == 1:
        key = p.root

        def leaf(ev):
            try:
                f = ev.fields
                v = f.get(key) if f else None
                if v is None:
                    e = ev.enrich
                    v = e.get(key) if e else None
                c = v.__class__
                if c is k1 or c is k2:
                    return cmp_(v, lit)
                return test(v)
            except Exception:
                errs[0] += 1
                gerr[0] += 1
                return False
        leaf._fast = (key, None, k1, k2, cmp_, lit, test)
        return leaf
    get = p.get

    def leaf(ev):
        try:
            v = get(ev)
            c = v.__class__
            if c is k1 or c is k2:
                return cmp_(v, lit)
            return test(v)
        except Exception:
            errs[0] += 1
            gerr[0] += 1
            return False
    leaf._fast = (None, get, k1, k2, cmp_, lit, test)
    return leaf


def _leaf(cmp: _Cmp, errs: list):
    """The closure ev -> bool for one comparison."""
    p, op, operand = cmp.path, cmp.op, cmp.operand
    get = p.get
    negate = False
    if op in ("==", "!="):
        if operand.value.__class__ is list:
            raise _CompileError(operand.loc, f"{op} compares with one value; for a list use in [...]")
        test = _eq_test(operand.value)
        negate = op == "!="
    elif op in _ORDER:
        v = operand.value
        if v is None or v is True or v is False or v.__class__ is list:
            raise _CompileError(operand.loc, f"{op} needs a number or a string")
        test = _order_test(op, v)
    elif op in ("in", "not in"):
        test = _in_test(operand.value)
        negate = op == "not in"
    elif op == "contains":
        if operand.value is None:
            raise _CompileError(operand.loc, "contains needs a string, number or boolean")
        test = _contains_test(operand.value)
    elif op == "matches":
        test = _matches_test(operand.regex)
    elif op == "exists":
        test = _exists
    elif op == "not exists":
        test = _missing
    else:  # pragma: no cover - the grammar only produces the above
        raise _CompileError(cmp.loc, f"unknown operator {op}")
    gerr = _EVAL_ERRORS

    if p.multi:
        # a repeated SD param is a list: the positive test holds if it holds
        # for any element; a negated one holds if it holds for none
        def any_of(v):
            for x in v:
                if test(x):
                    return True
            return False

        if negate:
            def leaf(ev):
                try:
                    v = get(ev)
                    return v is not None and not (any_of(v) if v.__class__ is list else test(v))
                except Exception:
                    errs[0] += 1
                    gerr[0] += 1
                    return False
        else:
            def leaf(ev):
                try:
                    v = get(ev)
                    return any_of(v) if v.__class__ is list else test(v)
                except Exception:
                    errs[0] += 1
                    gerr[0] += 1
                    return False
        return leaf

    if op == "!=" and operand.value is not None and operand.value is not True and operand.value is not False:
        # != with a string or a number takes the fast form below: a value of the literal's
        # exact type compares with operator.ne, any other with the negated test (None and a
        # missing field: false, as for every negated comparison)
        eq_test = test

        def ne_test(v):
            return v is not None and not eq_test(v)
        test, negate = ne_test, False

    if op in ("in", "not in"):
        fast = _member_fast(operand.value, test, negate, p, errs, gerr)
        if fast is not None:
            return fast

    if negate:
        def leaf(ev):
            try:
                v = get(ev)
                return v is not None and not test(v)
            except Exception:
                errs[0] += 1
                gerr[0] += 1
                return False
        return leaf

    # Fast paths for ==, != and ordering, the bulk of real rules: when the value
    # has the literal's exact type (str for a string literal; int or float for
    # a number) the comparison is one C call; anything else goes to the full
    # test with its coercions.
    lit = operand.value if op in ("==", "!=", "<", "<=", ">", ">=") else None
    if lit is not None and lit is not True and lit is not False:
        cmp_ = eq if op == "==" else ne if op == "!=" else _ORDER[op]
        k1, k2 = (str, str) if lit.__class__ is str else (int, float)
        return _fast_leaf(p, k1, k2, cmp_, lit, test, errs, gerr)

    if op in ("exists", "not exists"):
        # presence has a fast form too: the native stage and the lane test it without a call
        # into Python (``cmp_`` is the test itself, which _program maps to its own code; no
        # value's class is None, so the closure and _and_fast call the test)
        return _fast_leaf(p, None, None, test, None, test, errs, gerr)

    def leaf(ev):
        try:
            return test(get(ev))
        except Exception:
            errs[0] += 1
            gerr[0] += 1
            return False
    return leaf


def _always_true(ev):
    return True


def _always_false(ev):
    return False


def _build(node, errs: list, leaves: list):
    if isinstance(node, _Const):
        return _always_true if node.value else _always_false
    if isinstance(node, _Cmp):
        _bind_path(node.path)
        f = _leaf(node, errs)
        leaves.append((node, f))
        return f
    if isinstance(node, _Not):
        c = _build(node.child, errs, leaves)
        return lambda ev: not c(ev)
    fs = [_build(c, errs, leaves) for c in node.children]
    if node.op == "and":
        if len(fs) == 2:
            a, b = fs
            fa, fb = getattr(a, "_fast", None), getattr(b, "_fast", None)
            if fa is not None and fb is not None:
                return _and_fast(fa, fb, errs)
            return lambda ev: a(ev) and b(ev)
        fs = tuple(fs)

        def all_of(ev):
            for f in fs:
                if not f(ev):
                    return False
            return True
        return all_of
    if len(fs) == 2:
        a, b = fs
        return lambda ev: a(ev) or b(ev)
    fs = tuple(fs)

    def any_of(ev):
        for f in fs:
            if f(ev):
                return True
        return False
    return any_of


_GET_BARE = """
        f = ev.fields
        v = f.get(key_{x}) if f else None
        if v is None:
            e = ev.enrich
            v = e.get(key_{x}) if e else None"""
_GET_PATH = """
        v = get_{x}(ev)"""
_AND_FAST = """
def match(ev):
    try:{get_a}
        c = v.__class__
        r = cmp_a(v, lit_a) if c is k1_a or c is k2_a else test_a(v)
    except Exception:
        errs[0] += 1
        gerr[0] += 1
        return False
    if not r:
        return r
    try:{get_b}
        c = v.__class__
        if c is k1_b or c is k2_b:
            return cmp_b(v, lit_b)
        return test_b(v)
    except Exception:
        errs[0] += 1
        gerr[0] += 1
        return False
"""


def _and_fast(fa: tuple, fb: tuple, errs: list):
    """``a and b`` of two fast comparison leaves (see :func:`_leaf`) as one function: the
    same getters, tests, short-circuit and error counting, without the three calls."""
    ns = {"errs": errs, "gerr": _EVAL_ERRORS}
    for x, (key, get, k1, k2, cmp_, lit, test) in (("a", fa), ("b", fb)):
        ns.update({f"key_{x}": key, f"get_{x}": get, f"k1_{x}": k1, f"k2_{x}": k2, f"cmp_{x}": cmp_,
                   f"lit_{x}": lit, f"test_{x}": test})
    src = _AND_FAST.format(get_a=(_GET_BARE if fa[1] is None else _GET_PATH).format(x="a"),
                           get_b=(_GET_BARE if fb[1] is None else _GET_PATH).format(x="b"))
    exec(compile(src, "<rule and>", "exec"), ns)
    return ns["match"]


class Rule:
    """A compiled rule: ``rule(event) -> bool``.  ``rule.match`` is the same
    function without the method-call layer, for hot loops."""

    __slots__ = ("text", "fields", "match", "program", "_errs", "_leaves")

    def __init__(self, text, match, fields, errs, leaves, program=None):
        self.text = text
        self.match = match
        self.fields = fields
        self._errs = errs
        self._leaves = leaves
        #: the same rule as a tree of tuples the native stage evaluates (:func:`_program`), or None
        self.program = program

    def __call__(self, event) -> bool:
        return self.match(event)

    @property
    def errors(self) -> int:
        """How many comparisons of this rule raised (and counted as false)."""
        return self._errs[0]

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"


def _syntax_error(text: str, loc: int, message: str) -> RuleSyntaxError:
    loc = max(0, min(loc, len(text)))
    # point at the next token, not at the whitespace before it
    while loc < len(text) and text[loc] in " \t\r\n":
        loc += 1
    line_start = text.rfind("\n", 0, loc) + 1
    line_end = text.find("\n", loc)
    if line_end < 0:
        line_end = len(text)
    if loc == len(text) and loc > 0 and line_start == loc and text.endswith("\n"):
        # error at the end of a rule ending in newline: show the last line
        line_start = text.rfind("\n", 0, loc - 1) + 1
        line_end = loc - 1
        col = line_end - line_start + 1
    else:
        col = loc - line_start + 1
    lineno = text.count("\n", 0, line_start) + 1
    line_text = text[line_start:line_end]
    if line_text.endswith("\r"):        # CRLF rule text
        line_text = line_text[:-1]
        col = min(col, len(line_text) + 1)
    return RuleSyntaxError(message, col, line_text, lineno)


def _message(e) -> str:
    msg = str(getattr(e, "msg", "") or "syntax error")
    if msg.startswith("Expected "):
        msg = "expected " + msg[len("Expected "):]
    return msg


def compile_rule(text: str) -> Rule:
    """Compile ``text`` to a :class:`Rule`; raise :class:`RuleSyntaxError`."""
    if not isinstance(text, str):
        raise TypeError("rule text must be str")
    pp, grammar = _grammar()
    if not text.strip():
        raise _syntax_error(text, 0, "expected a comparison (the rule is empty)")
    try:
        tree = grammar.parse_string(text, parse_all=True)[0]
        errs = [0]
        leaves: list = []
        func = _build(tree, errs, leaves)
    except _CompileError as e:
        raise _syntax_error(text, e.loc, e.message) from None
    except pp.ParseBaseException as e:
        cause = e.__context__
        if isinstance(cause, _CompileError):  # raised inside a parse action
            raise _syntax_error(text, cause.loc, cause.message) from None
        raise _syntax_error(text, e.loc, _message(e)) from None
    except RecursionError:
        raise _syntax_error(text, 0, "rule nested too deeply") from None
    fields = {c.path.text for c, _ in leaves}
    # Leaves catch their own errors and and/or/not cannot raise, so a shallow
    # rule needs no outer guard (one call less per event); a deep one could hit
    # the recursion limit between leaves.
    program = None
    if _depth(tree) > _GUARD_DEPTH:
        func = _guard(func, errs)
    else:
        program = _program(tree, {id(c): f for c, f in leaves}, errs)
    return Rule(text, func, fields, errs, tuple(leaves), program)


# --------------------------------------------------------------------------
# the rule as a program (parsers/_speedups.c evaluates it in the native stage)

#: node codes: (P_CONST, bool) | (P_AND, (node, ...)) | (P_OR, (node, ...)) | (P_NOT, node) |
#: (P_CALL, leaf) | (P_CMP, getter, k1, k2, op, literal, test, errs, gerr, leaf, if_none)
P_CONST, P_AND, P_OR, P_NOT, P_CALL, P_CMP = range(6)
#: getters of P_CMP: (G_BARE, key): fields then enrich, as a bare name; (G_ATTR, name): an
#: Event attribute (a header field); (G_CALL, get): the path's own getter
G_BARE, G_ATTR, G_CALL = range(3)
_RICH = {eq: 2, ne: 3, lt: 0, le: 1, gt: 4, ge: 5,     # Py_EQ, Py_NE, Py_LT, Py_LE, Py_GT, Py_GE
         _exists: 6, _missing: 7,                   # presence: the value is not None / is None
         _member: 8, _not_member: 9}                # in / not in a frozenset of the literals
_NO_CONST = object()


def _program(node, leaf_of: dict, errs: list) -> tuple:
    """The compiled rule ``node`` as nested tuples with the same result, the same short
    circuits and the same error counts as the closures of :func:`_build`: a comparison with a
    fast form (``leaf._fast``: ``==``, ``!=``, an ordering, ``exists``, ``not exists``, or
    ``in``/``not in`` a list of plain strings or of numbers, on one path) is a P_CMP node the
    native code evaluates (its own compare or set membership when the value has the literal's
    exact type, presence for ``exists``, ``test(v)`` in Python otherwise,
    ``errs``/``gerr`` counted on an exception as the leaf does; ``if_none`` is ``test(None)``
    computed once, or ``_NO_CONST``); any other comparison is its closure,
    called (P_CALL)."""
    if isinstance(node, _Const):
        return (P_CONST, bool(node.value))
    if isinstance(node, _Cmp):
        leaf = leaf_of[id(node)]
        fast = getattr(leaf, "_fast", None)
        if fast is None:
            return (P_CALL, leaf)
        key, get, k1, k2, cmp_, lit, test = fast
        if key is not None:
            getter = (G_BARE, key)
        elif node.path.kind == "header":
            getter = (G_ATTR, sys.intern(node.path.root))
        else:
            getter = (G_CALL, get)
        try:
            if_none = bool(test(None))
        except Exception:
            if_none = _NO_CONST
        return (P_CMP, getter, k1, k2, _RICH[cmp_], lit, test, errs, _EVAL_ERRORS, leaf, if_none)
    if isinstance(node, _Not):
        return (P_NOT, _program(node.child, leaf_of, errs))
    return (P_AND if node.op == "and" else P_OR, tuple(_program(c, leaf_of, errs) for c in node.children))


_GUARD_DEPTH = 32


def _depth(node) -> int:
    if isinstance(node, (_Cmp, _Const)):
        return 1
    if isinstance(node, _Not):
        return 1 + _depth(node.child)
    return 1 + max(_depth(c) for c in node.children)


def _guard(func, errs):
    # Leaves catch their own errors; this catches the rest (RecursionError in a
    # very deep rule, say) so that evaluation never raises.
    gerr = _EVAL_ERRORS

    def match(ev):
        try:
            return func(ev)
        except Exception:
            errs[0] += 1
            gerr[0] += 1
            return False
    return match


# --------------------------------------------------------------------------
# explain


def _origin(p: _Path, ev) -> str:
    if p.kind != "bare":
        return p.kind
    r = tuple(p.segs)
    try:
        if _walk(ev.fields, r) is not None:
            return "fields"
        if _walk(ev.enrich, r) is not None:
            return "enrich"
    except Exception:
        pass
    return "fields/enrich"


def explain(rule: Rule, event) -> list[str]:
    """One line per comparison: its text, what its field path resolved to
    (and where from), and whether it held; then the rule's result.  For
    ``relay test-parse``.  Does not count errors."""
    lines = []
    for cmp, leaf in rule._leaves:
        p = cmp.path
        try:
            v = p.get(event)
            shown = "missing" if v is None else repr(v)
        except Exception as e:  # an event the getter cannot read
            shown = f"error {type(e).__name__}: {e}"
        before = rule._errs[0], _EVAL_ERRORS[0]
        result = leaf(event)
        rule._errs[0], _EVAL_ERRORS[0] = before
        src = rule.text[cmp.loc:cmp.end].strip()
        lines.append(f"{src}  ->  {str(result).lower()}    [{p.text} = {shown} from {_origin(p, event)}]")
    before = rule._errs[0], _EVAL_ERRORS[0]
    result = rule.match(event)
    rule._errs[0], _EVAL_ERRORS[0] = before
    lines.append(f"rule -> {str(result).lower()}")
    return lines
