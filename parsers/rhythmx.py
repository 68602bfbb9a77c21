"""RhythmX ``SigmaIncident`` normaliser.  The canonical-schema helpers every
normaliser shares (severity scale, time parsing, generic syslog mapping) live in
parsers/schema.py.

The canonical event schema is documented in docs/schema.md; this module and
parsers/falcon.py and parsers/qradar.py are the code side of that document.

A SigmaIncident message (RFC 5424, APP-NAME ``SigmaIncident``, facility local1)::

    <137>1 2026-03-13T04:30:00.123Z rx-01 SigmaIncident 4242 created
      [incident@32473 id="INC-7601d999" actor="jdoe" entity="Primary Site" status="OPEN"
       risk_score="82" alarm_count="12" sigma_alert_count="3" threat_case_count="1"
       related_case_ids="C-11,C-12"] {"incident_id":"INC-7601d999","risk_score":82,...}

Precedence: the SD params win for identity, status, score and counts (they are what
SIEM rules see); the JSON body fills what the SD lacks and adds the rest (risk
breakdown, MITRE tactics, timeline...).  Every disagreement between the two is
recorded in ``event.notes``.  A missing or malformed body, a missing SD element or
a malformed param never fails the message: it becomes a note.

Pure decoding: no I/O, no sockets, no config files.
"""
from __future__ import annotations

from dataclasses import dataclass

from orjson import JSONDecodeError as _JSONDecodeError, loads as _loads

from parsers.event import Event, text
from parsers.schema import (_BAND_SCORE, _STATUS_CACHE, _digest_key, _event_time, _to_int, canonical_status,
                            is_ip, parse_body as _parse_body, severity_from_syslog, time_pair, to_score)

__all__ = ["RhythmxConfig", "DEFAULT_CONFIG", "normalise", "normalise_incident", "matches"]

# ---------------------------------------------------------------------------
# RhythmX SigmaIncident
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RhythmxConfig:
    """Names used on the wire.  The defaults are the stock RhythmX export."""
    app_name: str = "SigmaIncident"
    sd_id: str = "incident@32473"
    id_param: str = "id"
    actor_param: str = "actor"
    actor_type_param: str = "actor_type"
    entity_param: str = "entity"
    status_param: str = "status"
    risk_param: str = "risk_score"
    alarm_count_param: str = "alarm_count"
    sigma_alert_count_param: str = "sigma_alert_count"
    threat_case_count_param: str = "threat_case_count"
    related_param: str = "related_case_ids"
    vendor: str = "RhythmX"
    product: str = "SigmaIncident"
    dedup_prefix: str = "rhythmx"


DEFAULT_CONFIG = RhythmxConfig()

# body keys that are folded into canonical fields (everything else goes to extra)
_BODY_CANONICAL = frozenset((
    "incident_id", "risk_score", "status", "title", "name", "description", "summary",
    "src_ip", "source_ip", "dst_ip", "destination_ip", "host", "hostname", "user",
    "url", "link", "investigation_url", "event", "timestamp", "created_at",
))
_EMPTY: dict = {}
# body keys by section: a body with none of a section's keys skips that section's lookups
_B_PARTY = frozenset(("actor", "group_key", "actor_type", "entity", "entity_name", "alarm_count",
                      "sigma_alert_count", "threat_case_count", "related_case_ids"))
_B_WHO = frozenset(("user", "host", "hostname", "src_ip", "source_ip", "dst_ip", "destination_ip"))
_B_MITRE = frozenset(("mitre_tactics", "mitre_techniques"))
_B_TEXT = frozenset(("title", "name", "description", "summary", "url", "link", "investigation_url"))
_B_SECTIONS = _B_PARTY | _B_WHO | _B_MITRE | _B_TEXT
# "0".."999" -> int: the usual count and score strings without isdigit/isascii/int
_SMALL_INT = {str(i): i for i in range(1000)}
_STATUS_FROM_EVENT = {"created": "open", "closed": "closed", "reopened": "open"}


def matches(event: Event, config: RhythmxConfig | None = None) -> bool:
    """Is this a SigmaIncident message (APP-NAME, or the incident SD element)?"""
    cfg = config or DEFAULT_CONFIG
    if event.app_name == cfg.app_name:
        return True
    sd = event.sd
    return bool(sd) and cfg.sd_id in sd


def _sd_element(event: Event, cfg: RhythmxConfig) -> dict:
    sd = event.sd
    if not sd:
        return {}
    params = sd.get(cfg.sd_id)
    if params is not None:
        return params
    # same SD name under another PEN (e.g. incident@99999): accept, with a note
    name = cfg.sd_id.partition("@")[0] + "@"
    for sid, p in sd.items():
        if sid.startswith(name):
            event.note(f"rhythmx: SD-ID {sid!r} used in place of {cfg.sd_id!r}")
            return p
    return {}


def _clean_params(params: dict, event: Event) -> dict:
    """The SD params with every value a plain str: a repeated param keeps its first
    value (with a note), bytes that are not UTF-8 become U+FFFD.  Returns the same
    dict when nothing needs doing (the usual case)."""
    for v in params.values():
        if v.__class__ is not str or not v.isascii():
            break
    else:
        return params
    out = {}
    for k, v in params.items():
        if v.__class__ is list:
            event.note(f"rhythmx: SD param {k!r} repeated; first value used")
            v = v[0] if v else None
        if v is not None and not v.isascii():
            v = text(v)
        out[k] = v
    return out


_USED_CACHE: dict = {}


def _used_params(cfg: RhythmxConfig) -> frozenset:
    """The SD param names with a canonical meaning under this config."""
    hit = _USED_CACHE.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    used = frozenset((cfg.id_param, cfg.risk_param, cfg.status_param, cfg.actor_param,
                      cfg.actor_type_param, cfg.entity_param, cfg.alarm_count_param,
                      cfg.sigma_alert_count_param, cfg.threat_case_count_param, cfg.related_param))
    if len(_USED_CACHE) > 64:
        _USED_CACHE.clear()
    _USED_CACHE[id(cfg)] = (cfg, used)
    return used


_DEFAULT_USED = _used_params(DEFAULT_CONFIG)


def _split_ids(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(x).strip() for x in value if x is not None and str(x).strip()]
    return [p.strip() for p in str(value).split(",") if p.strip()]


def _mitre(items):
    """First entry of a MITRE list of str or {id,name} dicts -> (name, id)."""
    if not items or not isinstance(items, list):
        return None, None
    first = items[0]
    if isinstance(first, dict):
        name = first.get("name") or first.get("tactic") or first.get("technique")
        mid = first.get("id") or first.get("tactic_id") or first.get("technique_id")
        return (str(name) if name is not None else None), (str(mid) if mid is not None else None)
    s = str(first)
    if s[:2] in ("TA", "T1") and s[2:3].isdigit():
        return None, s
    return s, None


def _count(raw, bval, canon: str, pname: str, event: Event):
    n = None
    if raw is not None:
        try:
            n = int(raw)
        except ValueError:
            event.note(f"rhythmx: SD {pname}={raw!r} is not an integer; ignored")
    bn = _to_int(bval) if bval is not None else None
    if n is None:
        return bn
    if bn is not None and bn != n:
        event.note(f"rhythmx: {canon} SD={n} body={bn}; SD wins")
    return n


_NAMES_CACHE: dict = {}


def _param_names(cfg: RhythmxConfig) -> tuple:
    """The config's SD param names, in one tuple (cached per config)."""
    hit = _NAMES_CACHE.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    names = (cfg.id_param, cfg.risk_param, cfg.status_param, cfg.actor_param, cfg.actor_type_param,
             cfg.entity_param, cfg.alarm_count_param, cfg.sigma_alert_count_param,
             cfg.threat_case_count_param, cfg.related_param)
    if len(_NAMES_CACHE) > 64:
        _NAMES_CACHE.clear()
    _NAMES_CACHE[id(cfg)] = (cfg, names)
    return names


_DEFAULT_NAMES = _param_names(DEFAULT_CONFIG)

_TEMPLATE_CACHE: dict = {}


def _fields_template(cfg: RhythmxConfig) -> dict:
    """The canonical fields of an incident under this config, every value None but
    kind, vendor and product (cached per config; copied, never changed)."""
    hit = _TEMPLATE_CACHE.get(id(cfg))
    if hit is not None and hit[0] is cfg:
        return hit[1]
    t = dict.fromkeys(("kind", "vendor", "product", "id", "dedup_key", "event", "name", "description",
                       "risk_score", "severity", "status", "occurred", "occurred_unix", "src_ip", "dst_ip",
                       "host", "user", "tactic", "tactic_id", "technique", "technique_id", "url", "extra"))
    t["kind"] = "incident"
    t["vendor"] = cfg.vendor
    t["product"] = cfg.product
    if len(_TEMPLATE_CACHE) > 64:
        _TEMPLATE_CACHE.clear()
    _TEMPLATE_CACHE[id(cfg)] = (cfg, t)
    return t


_DEFAULT_TEMPLATE = _fields_template(DEFAULT_CONFIG)


def normalise(event: Event, config: RhythmxConfig | None = None) -> Event:
    """Fill ``event.fields`` (canonical schema) from a SigmaIncident message; set
    ``event.body`` to the parsed JSON body when there is one.  Never raises for
    content problems: they become ``event.notes``."""
    if config is None or config is DEFAULT_CONFIG:
        cfg = DEFAULT_CONFIG
        (id_p, risk_p, status_p, actor_p, actor_type_p, entity_p, alarm_p, sigma_p, threat_p,
         related_p) = _DEFAULT_NAMES
    else:
        cfg = config
        (id_p, risk_p, status_p, actor_p, actor_type_p, entity_p, alarm_p, sigma_p, threat_p,
         related_p) = _param_names(cfg)
    sd = event.sd
    if sd is None:
        event.note("rhythmx: no structured data; body only")
        params = _EMPTY
    else:
        params = sd.get(cfg.sd_id)
        if params is None:
            params = _sd_element(event, cfg)
            if not params:
                event.note(f"rhythmx: no {cfg.sd_id} SD element; body only")
        if params:
            try:  # every value a str, all ASCII (the usual case): nothing to clean
                clean = "".join(params.values()).isascii()
            except TypeError:
                clean = False
            if not clean:
                params = _clean_params(params, event)
    body = event.body
    if body is None:
        msg = event.msg
        if msg and msg[0] == "{":
            try:
                body = _loads(msg)
            except _JSONDecodeError:
                body = _parse_body(event, "rhythmx")  # the slow way, with its note
            else:
                if body.__class__ is dict:
                    event.body = body
                else:
                    body = _parse_body(event, "rhythmx")
        else:
            body = _parse_body(event, "rhythmx")
    elif body.__class__ is not dict:
        body = None
    b = body if body is not None else _EMPTY
    bkeys = b.keys()
    note = event.note
    get = params.get

    # --- identity: SD wins, body fills -----------------------------------
    inc_id = get(id_p)
    b_id = b.get("incident_id")
    if b_id is not None:
        b_id = str(b_id)
        if inc_id is None:
            inc_id = b_id
        elif b_id != inc_id:
            note(f"rhythmx: incident id SD={inc_id!r} body={b_id!r}; SD wins")

    # --- risk score --------------------------------------------------------
    score = None
    raw = get(risk_p)
    if raw is not None:
        score = _SMALL_INT.get(raw)  # the usual "82": to_score without the detours
        if score is None and raw.isdigit() and raw.isascii():
            score = int(raw)
        if score is not None:
            if score > 100:
                score = 100
        else:
            score = to_score(raw)
            if score is None:
                note(f"rhythmx: SD {risk_p}={raw!r} is not a number; ignored")
    b_score = b.get("risk_score")
    if b_score is not None:
        if b_score.__class__ is int:
            b_score = 0 if b_score < 0 else 100 if b_score > 100 else b_score
        else:
            b_score = to_score(b_score)
        if score is None:
            score = b_score
        elif b_score is not None and b_score != score:
            note(f"rhythmx: risk_score SD={score} body={b_score}; SD wins")

    # --- status ------------------------------------------------------------
    status = get(status_p)
    b_status = b.get("status")
    if b_status is not None:
        if status is None:
            status = b_status
        elif canonical_status(b_status) != canonical_status(status):
            note(f"rhythmx: status SD={status!r} body={b_status!r}; SD wins")
    ev_type = event.msgid
    if ev_type is None:
        ev_type = b.get("event")
        if ev_type is not None:
            ev_type = str(ev_type)
    if ev_type is not None:
        ev_type = ev_type.lower()
    if status is not None:
        hit = _STATUS_CACHE.get(status) if status.__class__ is str else None
        status = hit if hit is not None else canonical_status(status)
    if status is None and ev_type is not None:
        status = _STATUS_FROM_EVENT.get(ev_type)

    # --- extras: body first, SD values override -----------------------------
    if body is None or bkeys <= _BODY_CANONICAL:
        extra = {}
    else:
        extra = {k: v for k, v in body.items() if k not in _BODY_CANONICAL}
    plain = bkeys.isdisjoint(_B_SECTIONS)  # none of the party, who, MITRE or text keys in the body
    if plain or bkeys.isdisjoint(_B_PARTY):  # nothing in the body to compare with: SD values as they are
        actor = get(actor_p)
        if actor is not None:
            extra["actor"] = actor
        actor_type = get(actor_type_p)
        if actor_type is not None:
            extra["actor_type"] = actor_type
        entity = get(entity_p)
        if entity is not None:
            extra["entity"] = entity
        counts = []
        for key, param in (("alarm_count", alarm_p), ("sigma_alert_count", sigma_p),
                           ("threat_case_count", threat_p)):
            raw = get(param)
            if raw is None:
                counts.append(None)
                continue
            n = _SMALL_INT.get(raw)
            if n is None:
                n = int(raw) if raw.isdigit() and raw.isascii() else _count(raw, None, key, param, event)
            if n is not None:
                extra[key] = n
            counts.append(n)
        alarms, sigma, cases = counts
        raw = get(related_p)
        if raw is not None:
            extra["related_case_ids"] = [x.strip() for x in raw.split(",") if x.strip()] if raw else []
    else:
        picked = []
        for canon, param, bkey, bkey2 in (("actor", actor_p, "actor", "group_key"),
                                          ("actor_type", actor_type_p, "actor_type", None),
                                          ("entity", entity_p, "entity", "entity_name")):
            v = get(param)
            bv = b.get(bkey)
            if bv is None and bkey2 is not None:
                bv = b.get(bkey2)
            if v is None:
                v = bv
            elif bv is not None and str(bv) != v:
                note(f"rhythmx: {canon} SD={v!r} body={bv!r}; SD wins")
            if v is not None:
                extra[canon] = v
            picked.append(v)
        actor, actor_type, entity = picked
        counts = []
        for canon, pname in (("alarm_count", alarm_p), ("sigma_alert_count", sigma_p),
                             ("threat_case_count", threat_p)):
            raw = get(pname)
            bv = b.get(canon)
            if raw is not None and raw.isdigit() and raw.isascii() and (bv is None or bv.__class__ is int):
                n = int(raw)  # _count's usual case, inline
                if bv is not None and bv != n:
                    note(f"rhythmx: {canon} SD={n} body={bv}; SD wins")
            elif raw is None and bv is None:
                n = None
            else:
                n = _count(raw, bv, canon, pname, event)
            if n is not None:
                extra[canon] = n
            elif canon in extra:
                del extra[canon]
            counts.append(n)
        alarms, sigma, cases = counts
        raw = get(related_p)
        b_rel = b.get("related_case_ids")
        if raw is not None:
            rel = [x.strip() for x in raw.split(",") if x.strip()] if raw else []
            if b_rel is not None and _split_ids(b_rel) != rel:
                note(f"rhythmx: related_case_ids SD={rel} body={_split_ids(b_rel)}; SD wins")
            extra["related_case_ids"] = rel
        elif b_rel is not None:
            extra["related_case_ids"] = _split_ids(b_rel)
    if params and not (_DEFAULT_USED if cfg is DEFAULT_CONFIG else _used_params(cfg)).issuperset(params):
        used = _used_params(cfg)
        for k, v in params.items():
            if k not in used:
                bv = extra.get(k)
                if bv is not None and str(bv) != v:
                    note(f"rhythmx: {k} SD={v!r} body={bv!r}; SD wins")
                extra[k] = v

    # --- who / where ---------------------------------------------------------
    if plain or bkeys.isdisjoint(_B_WHO):
        user = host = src_ip = dst_ip = None
    else:
        user = b.get("user")
        host = b.get("host") or b.get("hostname")
        src_ip = b.get("src_ip") or b.get("source_ip")
        dst_ip = b.get("dst_ip") or b.get("destination_ip")
    if actor is not None:
        at = str(actor_type).lower() if actor_type is not None else None
        if at is None:
            if (actor.__class__ is not str or actor[:1].isdigit() or ":" in actor) and is_ip(actor):
                src_ip = src_ip or actor
            else:
                user = user or actor
        elif at in ("user", "account", "username"):
            user = user or actor
        elif at in ("host", "hostname", "device", "computer"):
            host = host or actor
        elif at in ("ip", "ip_address", "address"):
            src_ip = src_ip or actor

    if plain or bkeys.isdisjoint(_B_MITRE):
        tactic = tactic_id = technique = technique_id = None
    else:
        tactic, tactic_id = _mitre(b.get("mitre_tactics"))
        technique, technique_id = _mitre(b.get("mitre_techniques"))

    # --- severity ------------------------------------------------------------
    if score is not None:
        # severity_from_score, inline
        if score >= 60:
            severity = "critical" if score >= 80 else "high"
        elif score >= 40:
            severity = "medium"
        else:
            severity = "low" if score >= 20 else "informational"
    else:
        level = b.get("risk_level")
        level = level.lower() if isinstance(level, str) else None
        if level in _BAND_SCORE:
            severity = level
            note("rhythmx: no risk_score; severity from body risk_level")
        else:
            severity = severity_from_syslog(event.severity)
            note("rhythmx: no risk_score; severity from syslog PRI")

    # --- time ----------------------------------------------------------------
    occurred = event.timestamp
    unix = event.time_unix
    # _event_time's usual case inline: UTC with milliseconds, used as it is
    if occurred is None or unix is None or len(occurred) != 24 or occurred[23] != "Z" \
            or occurred[19] != "." or occurred[10] != "T":
        occurred, unix = _event_time(event)
    if unix is None:
        occurred, unix = time_pair(b.get("timestamp") or b.get("created_at"))

    # --- names -------------------------------------------------------------
    if inc_id is not None:
        dedup = f"{cfg.dedup_prefix}:{inc_id}"
    else:
        note("rhythmx: no incident id; dedup_key from message digest")
        dedup = f"{cfg.dedup_prefix}:raw:{_digest_key(event)}"
    if plain or bkeys.isdisjoint(_B_TEXT):
        name = description = url = None
    else:
        name = b.get("title") or b.get("name")
        description = b.get("description") or b.get("summary")
        url = b.get("url") or b.get("link") or b.get("investigation_url")
    if name is None:
        name = f"RhythmX incident {inc_id or '?'}: {actor}" if actor else f"RhythmX incident {inc_id or '?'}"
    if description is None:
        # plain words, no "k=v": the text goes into CEF/LEEF values and XSOAR details
        description = (
            f"SigmaIncident {ev_type or 'event'} for {actor or 'unknown actor'} at {entity or 'unknown entity'}: "
            f"risk score {'unknown' if score is None else score}, {'?' if alarms is None else alarms} alarms, "
            f"{'?' if sigma is None else sigma} sigma alerts, {'?' if cases is None else cases} threat cases")

    # the canonical dict: a copy of the config's template (key order, constants, None)
    # with the values of this message; cheaper than a 23-key literal
    f = (_DEFAULT_TEMPLATE if cfg is DEFAULT_CONFIG else _fields_template(cfg)).copy()
    f["id"] = inc_id
    f["dedup_key"] = dedup
    f["event"] = ev_type
    f["name"] = name
    f["description"] = description
    f["risk_score"] = score
    f["severity"] = severity
    f["status"] = status
    f["occurred"] = occurred
    f["occurred_unix"] = unix
    if src_ip is not None:
        f["src_ip"] = src_ip
    if dst_ip is not None:
        f["dst_ip"] = dst_ip
    if host is not None:
        f["host"] = host
    if user is not None:
        f["user"] = user
    if tactic is not None:
        f["tactic"] = tactic
    if tactic_id is not None:
        f["tactic_id"] = tactic_id
    if technique is not None:
        f["technique"] = technique
    if technique_id is not None:
        f["technique_id"] = technique_id
    if url is not None:
        f["url"] = url
    f["extra"] = extra
    event.fields = f
    return event


def normalise_incident(incident: dict, event: str | None = None,
                       config: RhythmxConfig | None = None) -> tuple[dict, list[str]]:
    """A RhythmX REST API incident object (``GET /api/incidents``, ``/api/v1/feed/incidents``,
    ``/api/incidents/{id}``) -> (canonical fields, notes).

    The object is read exactly like the JSON body of a SigmaIncident message without SD
    params (:func:`normalise`): the same names, severity and, above all, the same
    ``dedup_key`` (``rhythmx:<incident_id>``), so an incident that arrives both over syslog
    and from the API is one incident downstream.  ``event``: ``created`` / ``updated`` /
    ``closed`` (the syslog MSGID's place)."""
    cfg = config or DEFAULT_CONFIG
    ev = Event(b"", "api")
    ev.body = incident
    ev.msgid = event
    ev.sd = {cfg.sd_id: {}}          # no SD params: the body is the whole story (no "no SD" note)
    normalise(ev, cfg)
    return ev.fields, list(ev.notes or ())
