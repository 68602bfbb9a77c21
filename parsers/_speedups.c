/* parsers._speedups: the native accelerator of the per-message parse (issue 19).
 *
 * Pure decoding like the rest of parsers/: bytes in, Events out, no I/O.  It mirrors
 * parsers.detect.parse for the common, valid RFC 5424 shape and hands everything else back to
 * the Python code, which stays the reference: parsers/native.py is the only caller, and
 * tests/test_native.py compares both paths on every input it has (every Event slot, every
 * error offset and reason).  RELAY_PURE=1 keeps this module out entirely.
 *
 *   configure(Event, format_value)     once, at import: the Event class (the offsets of its
 *                                      __slots__ are looked up and checked) and "rfc5424"
 *   parse_items(items, received, source, fallback) -> [Event, ...]
 *       items: a list of (raw bytes, peer) pairs, one listener read's frames.  Each covered
 *       frame becomes the Event parsers.detect.parse(raw, lenient=False, received=received,
 *       peer=peer, source=source) returns; for any other item fallback(raw, peer) is called
 *       and its result taken as it is.
 *   parse_one(raw) -> Event | None     one frame, None when it is not covered (tests)
 *
 * Covered (strict mode only; anything else falls back, including every message that is an
 * error, which the Python parser reports with its offset and reason):
 *   <PRI>VERSION SP  PRI 0-191 without a leading zero, VERSION 1-3 digits not starting with 0
 *   TIMESTAMP        '-' or yyyy-mm-ddThh:mm:ss[.1-6 digits](Z|+hh:mm|-hh:mm), a date that
 *                    exists (years 1-9999), hh<=23, mm<=59, ss<=59, offset hh<=23 mm<=59;
 *                    time_unix = (minute epoch + sec) + float(frac), as rfc5424.py computes it
 *   HOSTNAME APP-NAME PROCID MSGID: '-' or 1-255/48/128/32 bytes 33-126
 *   SD               '-' or SD-ELEMENTs [ID NAME="v" NAME="v"...] with at least one param,
 *                    valid names (<= 32 bytes 33-126 except = ] "), values without '\\', '"'
 *                    or ']' (other bytes UTF-8 decoded with surrogateescape), no repeated
 *                    SD-ID, no repeated PARAM-NAME in an element
 *   MSG              absent, or SP + any bytes (UTF-8, surrogateescape) not starting with a BOM
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

enum { S_FORMAT, S_PRI, S_FACILITY, S_SEVERITY, S_VERSION, S_TIMESTAMP, S_TIME_UNIX, S_HOSTNAME,
       S_APP_NAME, S_PROCID, S_MSGID, S_SD, S_MSG, S_RAW, S_RECEIVED, S_PEER, S_SOURCE, S_ERROR,
       S_NOTES, S_FIELDS, S_BODY, S_ENRICH, S_META, S_COUNT };
static const char *slot_names[S_COUNT] = {
    "format", "pri", "facility", "severity", "version", "timestamp", "time_unix", "hostname",
    "app_name", "procid", "msgid", "sd", "msg", "raw", "received", "peer", "source", "error",
    "notes", "fields", "body", "enrich", "meta"};

static PyTypeObject *event_type = NULL;
static PyObject *format_value = NULL;
static Py_ssize_t slot_off[S_COUNT];
static PyObject *slot_name_obj[S_COUNT];   /* interned, for rule programs' header fields */

/* a small cache of short ASCII strings (SD-IDs, PARAM-NAMEs, hostnames, app names...) */
#define SCACHE 256
typedef struct { Py_ssize_t len; char buf[48]; PyObject *obj; } centry;
static centry scache[SCACHE];

static PyObject *cached_str(const char *p, Py_ssize_t len)
{
    if (len > 47)
        return PyUnicode_DecodeLatin1(p, len, NULL);
    /* the slot: a multiplicative hash of the first and last 8 (or 4) bytes and the length,
     * a few operations where a byte-at-a-time hash was ~20 ns a string */
    uint64_t a = 0, b = 0;
    if (len >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + len - 8, 8);
    } else if (len >= 4) {
        uint32_t x, y;
        memcpy(&x, p, 4);
        memcpy(&y, p + len - 4, 4);
        a = x;
        b = y;
    } else if (len > 0) {
        a = (uint64_t)(unsigned char)p[0] | (uint64_t)(unsigned char)p[len / 2] << 8
            | (uint64_t)(unsigned char)p[len - 1] << 16;
    }
    uint64_t h = (a ^ (b * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)len) * 0xFF51AFD7ED558CCDULL;
    centry *e = &scache[(h >> 40) & (SCACHE - 1)];
    if (e->obj && e->len == len && memcmp(e->buf, p, len) == 0) {
        Py_INCREF(e->obj);
        return e->obj;
    }
    PyObject *o = PyUnicode_DecodeLatin1(p, len, NULL);
    if (!o)
        return NULL;
    Py_XDECREF(e->obj);
    e->len = len;
    memcpy(e->buf, p, len);
    Py_INCREF(o);
    e->obj = o;
    return o;
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_print(unsigned char c) { return c >= 33 && c <= 126; }
/* _NAME of parsers/rfc5424.py: [!#-<>-\\^-~] */
static inline int is_name(unsigned char c) { return is_print(c) && c != '"' && c != '=' && c != ']'; }

static int d2(const unsigned char *p) { return (p[0] - '0') * 10 + (p[1] - '0'); }

static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const long long era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static int days_in_month(int y, int m)
{
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return dm[m - 1];
}

/* Scan a header field of allowed length; returns its length (stops at SP) or -1. */
static Py_ssize_t field(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, Py_ssize_t maxlen)
{
    Py_ssize_t k = i;
    while (k < n && is_print(p[k]))
        k++;
    if (k == i || k - i > maxlen || k >= n || p[k] != ' ')
        return -1;
    return k - i;
}

static PyObject *field_obj(const unsigned char *p, Py_ssize_t len)
{
    if (len == 1 && p[0] == '-')
        Py_RETURN_NONE;
    return cached_str((const char *)p, len);
}

/* ASCII bytes (the caller checked) as a new str */
static PyObject *new_ascii(const unsigned char *p, Py_ssize_t len)
{
    PyObject *o = PyUnicode_New(len, 127);
    if (o)
        memcpy(PyUnicode_1BYTE_DATA(o), p, len);
    return o;
}

/* bytes decoded as UTF-8 with surrogateescape; ASCII (the usual PARAM-VALUE) copied as it is,
 * which is what the decoder makes of it, without its per-call set-up */
static PyObject *utf8_obj(const unsigned char *p, Py_ssize_t len)
{
    Py_ssize_t k = 0;
    for (; k + 8 <= len; k += 8) {
        uint64_t w;
        memcpy(&w, p + k, 8);
        if (w & 0x8080808080808080ULL)
            return PyUnicode_DecodeUTF8((const char *)p, len, "surrogateescape");
    }
    for (; k < len; k++)
        if (p[k] & 0x80)
            return PyUnicode_DecodeUTF8((const char *)p, len, "surrogateescape");
    return new_ascii(p, len);
}

/* printable ASCII bytes (33-126, as field() checked) as a new str, not cached: a PROCID is
 * mostly a process id, a new one every few messages, and would only evict the names */
static PyObject *ascii_obj(const unsigned char *p, Py_ssize_t len)
{
    if (len == 1 && p[0] == '-')
        Py_RETURN_NONE;
    return new_ascii(p, len);
}

#define SET(ev, s, v) (*(PyObject **)((char *)(ev) + slot_off[s]) = (v))

/* "<PRI>VERSION " at the start of p: PRI 0-191 without a leading zero, VERSION 1-3 digits
 * not starting with 0; -> the offset after the space (*pri, *ver set), 0 when not */
static Py_ssize_t pri_version(const unsigned char *p, Py_ssize_t n, int *pri_, int *ver_)
{
    if (n < 4 || p[0] != '<')
        return 0;
    Py_ssize_t i = 1;
    int pri = 0, nd = 0;
    while (i < n && is_digit(p[i]) && nd < 4) { pri = pri * 10 + (p[i] - '0'); i++; nd++; }
    if (nd == 0 || nd > 3 || i >= n || p[i] != '>' || (nd > 1 && p[1] == '0') || pri > 191)
        return 0;
    i++;
    int ver = 0;
    nd = 0;
    Py_ssize_t v0 = i;
    while (i < n && is_digit(p[i]) && nd < 4) { ver = ver * 10 + (p[i] - '0'); i++; nd++; }
    if (nd == 0 || nd > 3 || p[v0] == '0' || i >= n || p[i] != ' ')
        return 0;
    *pri_ = pri;
    *ver_ = ver;
    return i + 1;
}

/* HOSTNAME APP-NAME PROCID MSGID from p[i]: each field's start and length; -> the offset
 * after them, 0 when one is not a field */
static Py_ssize_t header_four(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *fs, Py_ssize_t *fl)
{
    static const Py_ssize_t lim[4] = {255, 48, 128, 32};
    for (int f = 0; f < 4; f++) {
        Py_ssize_t l = field(p, n, i, lim[f]);
        if (l < 0)
            return 0;
        fs[f] = i;
        fl[f] = l;
        i += l + 1;
    }
    return i;
}

/* 1: parsed (*out = new Event), 0: fall back, -1: error (exception set) */
static int parse_frame(PyObject *raw, const unsigned char *p, Py_ssize_t n, PyObject *received,
                       PyObject *peer, PyObject *source, PyObject **out)
{
    PyObject *o[S_COUNT] = {0};
    int rc = 0;
    /* ---- PRI VERSION */
    int pri, ver;
    Py_ssize_t i = pri_version(p, n, &pri, &ver);
    if (!i)
        return 0;
    /* ---- TIMESTAMP */
    Py_ssize_t ts0 = i, tslen;
    double time_unix = 0.0;
    int has_ts = 0;
    if (i < n && p[i] == '-') {
        tslen = 1;
        i++;
    } else {
        const unsigned char *t = p + i;
        if (n - i < 20)
            return 0;
        if (!(is_digit(t[0]) && is_digit(t[1]) && is_digit(t[2]) && is_digit(t[3]) && t[4] == '-' &&
              is_digit(t[5]) && is_digit(t[6]) && t[7] == '-' && is_digit(t[8]) && is_digit(t[9]) &&
              t[10] == 'T' && is_digit(t[11]) && is_digit(t[12]) && t[13] == ':' && is_digit(t[14]) &&
              is_digit(t[15]) && t[16] == ':' && is_digit(t[17]) && is_digit(t[18])))
            return 0;
        int y = d2(t) * 100 + d2(t + 2), mo = d2(t + 5), d = d2(t + 8);
        int h = d2(t + 11), mi = d2(t + 14), sec = d2(t + 17);
        Py_ssize_t k = i + 19;
        Py_ssize_t f0 = k, f1 = k;
        if (k < n && p[k] == '.') {
            k++;
            while (k < n && is_digit(p[k]) && k - f0 <= 7)
                k++;
            f1 = k;
            if (f1 - f0 < 2 || f1 - f0 > 7)
                return 0;
        }
        int off = 0;
        if (k < n && p[k] == 'Z') {
            k++;
        } else if (k + 6 <= n && (p[k] == '+' || p[k] == '-') && is_digit(p[k + 1]) && is_digit(p[k + 2]) &&
                   p[k + 3] == ':' && is_digit(p[k + 4]) && is_digit(p[k + 5])) {
            int oh = d2(p + k + 1), om = d2(p + k + 4);
            if (oh > 23 || om > 59)
                return 0;
            off = (oh * 3600 + om * 60) * (p[k] == '-' ? -1 : 1);
            k += 6;
        } else {
            return 0;
        }
        if (k >= n || p[k] != ' ')
            return 0;
        if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59)
            return 0;
        long long base = days_from_civil(y, mo, d) * 86400LL + h * 3600 + mi * 60 - off;
        double frac = 0.0;
        if (f1 > f0) {
            /* float(".ddd"), 1 to 6 digits: the digits and 10**k are exact doubles, and IEEE
             * division rounds their exact quotient correctly, as strtod rounds the decimal */
            static const double pow10[7] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6};
            long num = 0;
            for (Py_ssize_t q = f0 + 1; q < f1; q++)
                num = num * 10 + (p[q] - '0');
            frac = (double)num / pow10[f1 - f0 - 1];
        }
        time_unix = ((double)base + (double)sec) + frac;
        has_ts = 1;
        tslen = k - i;
        i = k + 1;
    }
    if (!has_ts) {
        if (i >= n || p[i] != ' ')
            return 0;
        i++;
    }
    /* ---- HOSTNAME APP-NAME PROCID MSGID */
    Py_ssize_t fs[4], fl[4];
    if (!(i = header_four(p, n, i, fs, fl)))
        return 0;
    /* ---- STRUCTURED-DATA */
    PyObject *sd = NULL;
    if (i >= n)
        return 0;
    if (p[i] == '-') {
        i++;
    } else if (p[i] == '[') {
        sd = PyDict_New();
        if (!sd)
            return -1;
        while (i < n && p[i] == '[') {
            const unsigned char *rb = memchr(p + i, ']', n - i);
            if (!rb)
                goto fallback;
            Py_ssize_t j = rb - p;
            if (memchr(p + i, '\\', j - i))
                goto fallback;
            Py_ssize_t k = i + 1, s0 = k;
            while (k < j && is_name(p[k]))
                k++;
            if (k == s0 || k - s0 > 32 || k >= j || p[k] != ' ')
                goto fallback;
            PyObject *sdid = cached_str((const char *)p + s0, k - s0);
            if (!sdid)
                goto error;
            int has = PyDict_Contains(sd, sdid);
            if (has != 0) {
                Py_DECREF(sdid);
                if (has < 0)
                    goto error;
                goto fallback;
            }
            PyObject *params = PyDict_New();
            if (!params) {
                Py_DECREF(sdid);
                goto error;
            }
            Py_ssize_t np = 0;
            int ok = 0;
            while (k < j && p[k] == ' ') {
                Py_ssize_t n0 = ++k;
                while (k < j && is_name(p[k]))
                    k++;
                if (k == n0 || k - n0 > 32 || k + 1 >= j || p[k] != '=' || p[k + 1] != '"')
                    break;
                Py_ssize_t q0 = k + 2;
                const unsigned char *q = memchr(p + q0, '"', j - q0);
                if (!q)
                    break;
                Py_ssize_t q1 = q - p;
                PyObject *name = cached_str((const char *)p + n0, k - n0);
                PyObject *val = name ? utf8_obj(p + q0, q1 - q0) : NULL;
                if (!val || PyDict_SetItem(params, name, val) < 0) {
                    Py_XDECREF(name);
                    Py_XDECREF(val);
                    Py_DECREF(params);
                    Py_DECREF(sdid);
                    goto error;
                }
                Py_DECREF(name);
                Py_DECREF(val);
                np++;
                k = q1 + 1;
                if (k == j) {
                    ok = 1;
                    break;
                }
            }
            if (!ok || PyDict_GET_SIZE(params) != np) {  /* other shape, or a repeated PARAM-NAME */
                Py_DECREF(params);
                Py_DECREF(sdid);
                goto fallback;
            }
            int r = PyDict_SetItem(sd, sdid, params);
            Py_DECREF(params);
            Py_DECREF(sdid);
            if (r < 0)
                goto error;
            i = j + 1;
        }
    } else {
        return 0;
    }
    /* ---- MSG */
    PyObject *msg = NULL;
    if (i < n) {
        if (p[i] != ' ')
            goto fallback;
        i++;
        if (n - i >= 3 && p[i] == 0xEF && p[i + 1] == 0xBB && p[i + 2] == 0xBF)
            goto fallback;
        if (i < n) {
            msg = PyUnicode_DecodeUTF8((const char *)p + i, n - i, "surrogateescape");
            if (!msg)
                goto error;
        }
    }
    /* ---- the Event */
    o[S_FORMAT] = format_value; Py_INCREF(format_value);
    o[S_PRI] = PyLong_FromLong(pri);
    o[S_FACILITY] = PyLong_FromLong(pri >> 3);
    o[S_SEVERITY] = PyLong_FromLong(pri & 7);
    o[S_VERSION] = PyLong_FromLong(ver);
    if (has_ts) {
        o[S_TIMESTAMP] = PyUnicode_DecodeLatin1((const char *)p + ts0, tslen, NULL);
        o[S_TIME_UNIX] = PyFloat_FromDouble(time_unix);
    }
    o[S_HOSTNAME] = field_obj(p + fs[0], fl[0]);
    o[S_APP_NAME] = field_obj(p + fs[1], fl[1]);
    o[S_PROCID] = ascii_obj(p + fs[2], fl[2]);
    o[S_MSGID] = field_obj(p + fs[3], fl[3]);
    o[S_SD] = sd; sd = NULL;
    o[S_MSG] = msg;
    o[S_RAW] = Py_NewRef(raw);
    o[S_RECEIVED] = Py_NewRef(received);
    o[S_PEER] = Py_NewRef(peer);
    o[S_SOURCE] = Py_NewRef(source);
    for (int s = 0; s < S_COUNT; s++) {
        if (s == S_TIMESTAMP || s == S_TIME_UNIX || s == S_SD || s == S_MSG) {
            if (o[s] == NULL && (s == S_SD || s == S_MSG || !has_ts))
                o[s] = Py_NewRef(Py_None);
        } else if (s > S_SOURCE) {      /* error, notes, fields, body, enrich, meta */
            o[s] = Py_NewRef(Py_None);
        }
        if (o[s] == NULL)
            goto error_o;
    }
    PyObject *ev = event_type->tp_alloc(event_type, 0);
    if (!ev)
        goto error_o;
    for (int s = 0; s < S_COUNT; s++)
        SET(ev, s, o[s]);     /* the references move into the object */
    *out = ev;
    return 1;

error_o:
    for (int s = 0; s < S_COUNT; s++)
        Py_XDECREF(o[s]);
    return -1;
fallback:
    Py_XDECREF(sd);
    return rc;
error:
    Py_XDECREF(sd);
    return -1;
}


static PyObject *configure(PyObject *self, PyObject *args)
{
    PyObject *type, *fmt;
    if (!PyArg_ParseTuple(args, "O!U", &PyType_Type, &type, &fmt))
        return NULL;
    /* every slot of the class must be one this code fills, and each a plain object member */
    PyObject *slots = PyObject_GetAttrString(type, "__slots__");
    if (!slots)
        return NULL;
    Py_ssize_t nslots = PyObject_Length(slots);
    Py_DECREF(slots);
    if (nslots < 0)
        return NULL;
    if (nslots != S_COUNT)
        return PyErr_Format(PyExc_TypeError, "Event has %zd slots, this module knows %d", nslots, (int)S_COUNT);
    if (((PyTypeObject *)type)->tp_base != &PyBaseObject_Type)
        return PyErr_Format(PyExc_TypeError, "Event must derive from object directly");
    for (int s = 0; s < S_COUNT; s++) {
        PyObject *d = PyObject_GetAttrString(type, slot_names[s]);
        if (!d)
            return NULL;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type) || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            Py_DECREF(d);
            return PyErr_Format(PyExc_TypeError, "Event.%s is not a __slots__ member", slot_names[s]);
        }
        slot_off[s] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!slot_name_obj[s] && !(slot_name_obj[s] = PyUnicode_InternFromString(slot_names[s])))
            return NULL;
    }
    Py_XSETREF(event_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(format_value, Py_NewRef(fmt));
    Py_RETURN_NONE;
}

static PyObject *py_parse_one(PyObject *self, PyObject *arg)
{
    if (!event_type)
        return PyErr_Format(PyExc_RuntimeError, "configure() first");
    if (!PyBytes_Check(arg))
        return PyErr_Format(PyExc_TypeError, "bytes expected, not %.100s", Py_TYPE(arg)->tp_name);
    PyObject *ev = NULL;
    int r = parse_frame(arg, (const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg),
                        Py_None, Py_None, Py_None, &ev);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    return ev;
}

static PyObject *py_parse_items(PyObject *self, PyObject *args)
{
    PyObject *items, *received, *source, *fallback;
    if (!PyArg_ParseTuple(args, "O!OOO", &PyList_Type, &items, &received, &source, &fallback))
        return NULL;
    if (!event_type)
        return PyErr_Format(PyExc_RuntimeError, "configure() first");
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *out = PyList_New(n);
    if (!out)
        return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        /* the list may not change under us: nothing below runs Python code but fallback, and
           the item is held */
        PyObject *item = Py_NewRef(PyList_GET_ITEM(items, k));
        PyObject *ev = NULL;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            Py_DECREF(item);
            PyErr_Format(PyExc_TypeError, "items[%zd]: a (raw, peer) pair expected", k);
            goto error;
        }
        PyObject *raw = PyTuple_GET_ITEM(item, 0), *peer = PyTuple_GET_ITEM(item, 1);
        int r = 0;
        if (PyBytes_CheckExact(raw))
            r = parse_frame(raw, (const unsigned char *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw),
                            received, peer, source, &ev);
        if (r == 0)
            ev = PyObject_CallFunctionObjArgs(fallback, raw, peer, NULL);
        Py_DECREF(item);
        if (r < 0 || ev == NULL)
            goto error;
        PyList_SET_ITEM(out, k, ev);
    }
    return out;
error:
    Py_DECREF(out);      /* unset items are NULL: list_dealloc skips them */
    return NULL;
}


/* ------------------------------------------------------------------------------------------
 * rx_normalise(ev) -> bool: parsers.rhythmx.normalise(ev) under the default RhythmxConfig
 * for the common SigmaIncident shape, or False (the event untouched) when the shape is not
 * covered, and the Python normaliser then does it all.  Covered, all of:
 *   ev.body is None, ev.sd a dict holding the incident SD element (a dict), every param
 *   value an ASCII str, every param name one the normaliser knows (no extras), no actor_type
 *   or related_case_ids param; id and risk_score params present, risk_score and the counts
 *   "0".."999" (parsers.rhythmx._SMALL_INT), status absent or in the status cache (else
 *   canonical_status is called, as Python does); ev.msgid a str; ev.msg a JSON object
 *   (orjson.loads) whose keys are among incident_id, risk_score, event, timestamp,
 *   created_at, with incident_id (if any) the same str as the SD id and risk_score (if any)
 *   an int equal to the SD score once clamped; the actor (if any) not digit-led and without
 *   ':' (no IP test); ev.timestamp "YYYY-MM-DDTHH:MM:SS.mmmZ" with ev.time_unix set.
 * Then no note is written, as in Python for that shape.  rx_configure(dict) hands over the
 * Python module's own objects once (names, tables, caches), so both paths read the same data.
 * ------------------------------------------------------------------------------------------ */
static PyObject *rx_sd_id, *rx_p_id, *rx_p_risk, *rx_p_status, *rx_p_actor, *rx_p_actor_type,
    *rx_p_entity, *rx_p_alarm, *rx_p_sigma, *rx_p_threat, *rx_p_related, *rx_used, *rx_small_int,
    *rx_status_cache, *rx_status_from_event, *rx_canonical_status, *rx_loads, *rx_template,
    *rx_dedup_prefix, *rx_body_ok, *k_incident_id, *k_risk_score, *k_actor, *k_entity, *k_alarm,
    *k_sigma, *k_threat, *k_id, *k_dedup, *k_event, *k_name, *k_description, *k_severity,
    *k_status, *k_occurred, *k_occurred_unix, *k_user, *k_extra, *sev_names[5];
static int rx_small_canonical = 0;     /* rx_small_int is {str(i): i for i in range(1000)} */
static int rx_ready = 0;

static int put_long(char *buf, long v);

static PyObject *rx_configure(PyObject *self, PyObject *ctx)
{
    if (!PyDict_Check(ctx))
        return PyErr_Format(PyExc_TypeError, "a dict expected");
#define TAKE(var, key) do { PyObject *o_ = PyDict_GetItemString(ctx, key); \
        if (!o_) return PyErr_Format(PyExc_KeyError, "rx_configure: %s missing", key); \
        Py_XSETREF(var, Py_NewRef(o_)); } while (0)
    TAKE(rx_sd_id, "sd_id"); TAKE(rx_p_id, "id_param"); TAKE(rx_p_risk, "risk_param");
    TAKE(rx_p_status, "status_param"); TAKE(rx_p_actor, "actor_param");
    TAKE(rx_p_actor_type, "actor_type_param"); TAKE(rx_p_entity, "entity_param");
    TAKE(rx_p_alarm, "alarm_count_param"); TAKE(rx_p_sigma, "sigma_alert_count_param");
    TAKE(rx_p_threat, "threat_case_count_param"); TAKE(rx_p_related, "related_param");
    TAKE(rx_used, "used"); TAKE(rx_small_int, "small_int"); TAKE(rx_status_cache, "status_cache");
    TAKE(rx_status_from_event, "status_from_event"); TAKE(rx_canonical_status, "canonical_status");
    TAKE(rx_loads, "loads"); TAKE(rx_template, "template"); TAKE(rx_dedup_prefix, "dedup_prefix");
    TAKE(rx_body_ok, "body_ok");
#undef TAKE
    if (!PyUnicode_CheckExact(rx_dedup_prefix) || !PyUnicode_IS_ASCII(rx_dedup_prefix))
        return PyErr_Format(PyExc_TypeError, "rx_configure: dedup_prefix must be an ASCII str");
    if (!PyDict_CheckExact(rx_template) || !PyDict_CheckExact(rx_small_int) || !PyDict_CheckExact(rx_status_cache)
        || !PyDict_CheckExact(rx_status_from_event) || !PyAnySet_Check(rx_used) || !PyAnySet_Check(rx_body_ok))
        return PyErr_Format(PyExc_TypeError, "rx_configure: unexpected table types");
#define KEY(var, text) do { if (!var && !(var = PyUnicode_InternFromString(text))) return NULL; } while (0)
    KEY(k_incident_id, "incident_id"); KEY(k_risk_score, "risk_score"); KEY(k_actor, "actor");
    KEY(k_entity, "entity"); KEY(k_alarm, "alarm_count"); KEY(k_sigma, "sigma_alert_count");
    KEY(k_threat, "threat_case_count"); KEY(k_id, "id"); KEY(k_dedup, "dedup_key"); KEY(k_event, "event");
    KEY(k_name, "name"); KEY(k_description, "description"); KEY(k_severity, "severity");
    KEY(k_status, "status"); KEY(k_occurred, "occurred"); KEY(k_occurred_unix, "occurred_unix");
    KEY(k_user, "user"); KEY(k_extra, "extra");
    KEY(sev_names[0], "informational"); KEY(sev_names[1], "low"); KEY(sev_names[2], "medium");
    KEY(sev_names[3], "high"); KEY(sev_names[4], "critical");
#undef KEY
    /* small_int is rhythmx._SMALL_INT, {str(i): i for i in range(1000)}: then rx_small reads
     * the digits itself instead of hashing each fresh value str to look it up */
    rx_small_canonical = PyDict_GET_SIZE(rx_small_int) == 1000;
    for (long i = 0; i < 1000 && rx_small_canonical; i++) {
        char b[8];
        int q = put_long(b, i);
        PyObject *k = PyUnicode_FromStringAndSize(b, q);
        if (!k)
            return NULL;
        PyObject *v = PyDict_GetItemWithError(rx_small_int, k);
        Py_DECREF(k);
        if (!v && PyErr_Occurred())
            return NULL;
        rx_small_canonical = v && PyLong_CheckExact(v) && PyLong_AsLong(v) == i;
    }
    rx_ready = 1;
    Py_RETURN_NONE;
}

#define SLOT(ev, s) (*(PyObject **)((char *)(ev) + slot_off[s]))

/* a str that is ASCII (1), anything else (0) */
static inline int is_ascii_str(PyObject *o) { return o && PyUnicode_CheckExact(o) && PyUnicode_IS_ASCII(o); }

/* a key of the canonical _SMALL_INT ("0", or 1 to 3 digits without a leading zero) as bytes:
 * its value, -1 when not one */
static long small_digits(const unsigned char *d, Py_ssize_t n)
{
    if (n < 1 || n > 3 || (n > 1 && d[0] == '0'))
        return -1;
    long v = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (!is_digit(d[k]))
            return -1;
        v = v * 10 + (d[k] - '0');
    }
    return v;
}

/* a small int of _SMALL_INT for an SD value, or -1 (absent: -2) */
static long rx_small(PyObject *params, PyObject *name, int *absent)
{
    PyObject *raw = PyDict_GetItemWithError(params, name);
    *absent = 0;
    if (!raw) {
        *absent = 1;
        return PyErr_Occurred() ? -2 : -1;
    }
    if (rx_small_canonical) {
        if (!PyUnicode_CheckExact(raw) || !PyUnicode_IS_ASCII(raw))
            return -1;
        return small_digits(PyUnicode_1BYTE_DATA(raw), PyUnicode_GET_LENGTH(raw));
    }
    PyObject *n = PyDict_GetItemWithError(rx_small_int, raw);
    if (!n || !PyLong_CheckExact(n))
        return PyErr_Occurred() ? -2 : -1;
    return PyLong_AsLong(n);
}

/* ASCII pieces of a new str: a literal, an ASCII str's bytes, or a count ("?" when < 0) */
typedef struct { const char *p; Py_ssize_t n; } pc;
#define PC_LIT(x, lit) ((x).p = (lit), (x).n = (Py_ssize_t)sizeof(lit) - 1)
static inline void pc_obj(pc *x, PyObject *s)
{
    x->p = (const char *)PyUnicode_1BYTE_DATA(s);
    x->n = PyUnicode_GET_LENGTH(s);
}
/* the decimal text of v into buf (24 bytes), as str(int) writes it; -> its length */
static int put_long(char *buf, long v)
{
    unsigned long long uv = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    char tmp[24];
    int m = 0, q = 0;
    do {
        tmp[m++] = (char)('0' + uv % 10);
        uv /= 10;
    } while (uv);
    if (v < 0)
        buf[q++] = '-';
    while (m)
        buf[q++] = tmp[--m];
    return q;
}
static void pc_num(pc *x, char *buf, long v)
{
    if (v < 0) {
        x->p = "?";
        x->n = 1;
        return;
    }
    x->p = buf;
    x->n = put_long(buf, v);
}
static PyObject *pc_join(const pc *ps, int k)
{
    Py_ssize_t t = 0;
    for (int i = 0; i < k; i++)
        t += ps[i].n;
    PyObject *o = PyUnicode_New(t, 127);
    if (!o)
        return NULL;
    char *d = (char *)PyUnicode_1BYTE_DATA(o);
    for (int i = 0; i < k; i++) {
        memcpy(d, ps[i].p, ps[i].n);
        d += ps[i].n;
    }
    return o;
}

/* orjson.loads(s) for the usual SigmaIncident body: an ASCII object of ASCII strings without
 * escapes and of integers (at most 18 digits), with JSON's whitespace, keys unique.  NULL with
 * no exception set for anything else (orjson decides, and words its errors); NULL with one
 * set for a failed allocation. */
static inline Py_ssize_t json_ws(const unsigned char *p, Py_ssize_t i, Py_ssize_t n)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}
/* a string at p[i] == '"': -> its end (after the closing quote), -1 when not plain */
static inline Py_ssize_t json_plain_str(const unsigned char *p, Py_ssize_t i, Py_ssize_t n)
{
    for (i++; i < n; i++) {
        unsigned char c = p[i];
        if (c == '"')
            return i + 1;
        if (c < 0x20 || c > 0x7e || c == '\\')
            return -1;
    }
    return -1;
}
/* one member `"key": value` of a flat JSON object at p[i], the value a plain string or an
 * integer of at most 18 digits (< 10**18: no overflow); -> the offset after the value, -1 for
 * any other shape */
typedef struct { Py_ssize_t k0, kl, s0, sl; int is_str; long long x; } json_member;
static Py_ssize_t json_read_member(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, json_member *m)
{
    if (i >= n || p[i] != '"')
        return -1;
    Py_ssize_t ke = json_plain_str(p, i, n);
    if (ke < 0)
        return -1;
    m->k0 = i + 1;
    m->kl = ke - 1 - m->k0;
    i = json_ws(p, ke, n);
    if (i >= n || p[i] != ':')
        return -1;
    i = json_ws(p, i + 1, n);
    if (i >= n)
        return -1;
    if (p[i] == '"') {
        Py_ssize_t ve = json_plain_str(p, i, n);
        if (ve < 0)
            return -1;
        m->is_str = 1;
        m->s0 = i + 1;
        m->sl = ve - 1 - m->s0;
        return ve;
    }
    Py_ssize_t j = i;
    int neg = p[j] == '-';
    if (neg)
        j++;
    Py_ssize_t d0 = j;
    long long x = 0;
    while (j < n && is_digit(p[j]) && j - d0 < 18) {
        x = x * 10 + (p[j] - '0');
        j++;
    }
    Py_ssize_t nd = j - d0;
    if (nd == 0 || nd > 18 || (nd > 1 && p[d0] == '0')
        || (j < n && (is_digit(p[j]) || p[j] == '.' || p[j] == 'e' || p[j] == 'E')))
        return -1;
    m->is_str = 0;
    m->x = neg ? -x : x;
    return j;
}

/* after a member at p[*i]: ',' (1, *i at the next member), '}' (0, *i after it), else -1 */
static int json_next(const unsigned char *p, Py_ssize_t *i, Py_ssize_t n)
{
    Py_ssize_t k = json_ws(p, *i, n);
    if (k < n && p[k] == ',') {
        *i = json_ws(p, k + 1, n);
        return 1;
    }
    if (k < n && p[k] == '}') {
        *i = k + 1;
        return 0;
    }
    return -1;
}

static PyObject *flat_json(PyObject *s)
{
    if (!PyUnicode_IS_ASCII(s))
        return NULL;
    const unsigned char *p = PyUnicode_1BYTE_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    Py_ssize_t i = json_ws(p, 0, n);
    if (i >= n || p[i] != '{')
        return NULL;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    i = json_ws(p, i + 1, n);
    if (i < n && p[i] == '}') {
        i++;
        goto end;
    }
    for (;;) {
        json_member m;
        if ((i = json_read_member(p, i, n, &m)) < 0)
            goto fail;
        PyObject *v = m.is_str ? new_ascii(p + m.s0, m.sl) : PyLong_FromLongLong(m.x);
        if (!v)
            goto fail;
        PyObject *key = cached_str((const char *)p + m.k0, m.kl);
        Py_ssize_t before = PyDict_GET_SIZE(d);
        int r = key ? PyDict_SetItem(d, key, v) : -1;
        Py_XDECREF(key);
        Py_DECREF(v);
        if (r < 0)
            goto fail;
        if (PyDict_GET_SIZE(d) == before)      /* a repeated key: orjson's rules */
            goto fail;
        int more = json_next(p, &i, n);
        if (more < 0)
            goto fail;
        if (!more)
            break;
    }
end:
    if (json_ws(p, i, n) == n)
        return d;
fail:                   /* declined (no exception) or out of memory (set): the caller tells */
    Py_DECREF(d);
    return NULL;
}

static PyObject *py_flat_json(PyObject *self, PyObject *s)
{
    if (!PyUnicode_Check(s))
        return PyErr_Format(PyExc_TypeError, "flat_json: a str expected");
    PyObject *d = flat_json(s);
    if (!d && !PyErr_Occurred())
        Py_RETURN_NONE;
    return d;
}

/* 1 done, 0 not covered (nothing changed), -1 error */
static int rx_normalise_impl(PyObject *ev)
{
    PyObject *sd = SLOT(ev, S_SD), *msgid = SLOT(ev, S_MSGID), *msg = SLOT(ev, S_MSG);
    PyObject *ts = SLOT(ev, S_TIMESTAMP), *unix_ = SLOT(ev, S_TIME_UNIX);
    if (!sd || !PyDict_CheckExact(sd) || SLOT(ev, S_BODY) != Py_None || !is_ascii_str(msgid)
        || !msg || !PyUnicode_CheckExact(msg) || !ts || !PyUnicode_CheckExact(ts) || !unix_ || unix_ == Py_None)
        return 0;
    /* the time: "YYYY-MM-DDTHH:MM:SS.mmmZ", used as it is */
    if (PyUnicode_GET_LENGTH(ts) != 24 || PyUnicode_READ_CHAR(ts, 23) != 'Z' || PyUnicode_READ_CHAR(ts, 19) != '.'
        || PyUnicode_READ_CHAR(ts, 10) != 'T')
        return 0;
    PyObject *params = PyDict_GetItemWithError(sd, rx_sd_id);
    if (!params)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyDict_CheckExact(params) || PyDict_GET_SIZE(params) == 0)
        return 0;
    {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(params, &pos, &k, &v)) {
            if (!PyUnicode_CheckExact(v) || !PyUnicode_IS_ASCII(v))
                return 0;
            int in = PySet_Contains(rx_used, k);
            if (in <= 0)
                return in;
        }
    }
    PyObject *inc_id = PyDict_GetItemWithError(params, rx_p_id);
    if (!inc_id)
        return PyErr_Occurred() ? -1 : 0;
    if (PyDict_GetItemWithError(params, rx_p_actor_type) || PyDict_GetItemWithError(params, rx_p_related))
        return 0;
    if (PyErr_Occurred())
        return -1;
    int absent;
    long score = rx_small(params, rx_p_risk, &absent);
    if (score < 0)
        return score == -2 ? -1 : 0;
    if (score > 100)
        score = 100;
    long counts[3];
    PyObject *count_params[3] = {rx_p_alarm, rx_p_sigma, rx_p_threat};
    for (int k = 0; k < 3; k++) {
        counts[k] = rx_small(params, count_params[k], &absent);
        if (counts[k] == -2)
            return -1;
        if (counts[k] == -1 && !absent)
            return 0;
    }
    PyObject *actor = PyDict_GetItemWithError(params, rx_p_actor);
    if (!actor && PyErr_Occurred())
        return -1;
    if (actor) {
        Py_ssize_t alen = PyUnicode_GET_LENGTH(actor);
        if (alen && is_digit((unsigned char)PyUnicode_READ_CHAR(actor, 0)))
            return 0;
        if (PyUnicode_FindChar(actor, ':', 0, alen, 1) != -1)
            return 0;
    }
    PyObject *entity = PyDict_GetItemWithError(params, rx_p_entity);
    if (!entity && PyErr_Occurred())
        return -1;
    PyObject *status = PyDict_GetItemWithError(params, rx_p_status);
    if (!status && PyErr_Occurred())
        return -1;
    /* the body */
    if (PyUnicode_GET_LENGTH(msg) == 0 || PyUnicode_READ_CHAR(msg, 0) != '{')
        return 0;
    PyObject *body = flat_json(msg);
    if (!body && !PyErr_Occurred())
        body = PyObject_CallOneArg(rx_loads, msg);
    if (!body) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {   /* orjson.JSONDecodeError: Python's note */
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    PyObject *ev_type = NULL, *cstatus = NULL, *fields = NULL, *extra = NULL, *dedup = NULL, *name = NULL,
             *descr = NULL, *score_o = NULL;
    int rc = 0;
    if (!PyDict_CheckExact(body))
        goto out;
    {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(body, &pos, &k, &v)) {
            int in = PySet_Contains(rx_body_ok, k);
            if (in <= 0) {
                rc = in;
                goto out;
            }
        }
    }
    PyObject *b_id = PyDict_GetItemWithError(body, k_incident_id);
    if (b_id && (!PyUnicode_CheckExact(b_id) || PyUnicode_Compare(b_id, inc_id) != 0))
        goto out;           /* a difference (a note), or a str() to take: Python */
    if (PyErr_Occurred())
        goto error;
    PyObject *b_score = PyDict_GetItemWithError(body, k_risk_score);
    if (b_score) {
        if (!PyLong_CheckExact(b_score))
            goto out;
        int ovf;
        long bs = PyLong_AsLongAndOverflow(b_score, &ovf);
        if (ovf > 0 || (ovf == 0 && bs > 100))
            bs = 100;
        else if (ovf < 0 || bs < 0)
            bs = 0;
        if (bs == -1 && PyErr_Occurred())
            goto error;
        if (bs != score)
            goto out;
    } else if (PyErr_Occurred())
        goto error;
    /* the event type (msgid.lower(), ASCII) and the status */
    {
        Py_ssize_t n = PyUnicode_GET_LENGTH(msgid);
        const unsigned char *s = PyUnicode_1BYTE_DATA(msgid);
        Py_ssize_t k = 0;
        while (k < n && !(s[k] >= 'A' && s[k] <= 'Z'))
            k++;
        if (k == n)
            ev_type = Py_NewRef(msgid);
        else {
            ev_type = PyUnicode_New(n, 127);
            if (!ev_type)
                goto error;
            unsigned char *d = PyUnicode_1BYTE_DATA(ev_type);
            for (k = 0; k < n; k++)
                d[k] = (s[k] >= 'A' && s[k] <= 'Z') ? s[k] + 32 : s[k];
        }
    }
    if (status) {
        PyObject *hit = PyDict_GetItemWithError(rx_status_cache, status);
        if (hit)
            cstatus = Py_NewRef(hit);
        else if (PyErr_Occurred() || !(cstatus = PyObject_CallOneArg(rx_canonical_status, status)))
            goto error;
    }
    if (cstatus == NULL || cstatus == Py_None) {   /* none, or a blank one: from the event type */
        Py_CLEAR(cstatus);
        PyObject *hit = PyDict_GetItemWithError(rx_status_from_event, ev_type);
        if (!hit && PyErr_Occurred())
            goto error;
        cstatus = Py_NewRef(hit ? hit : Py_None);
    }
    /* extra: actor, entity, the counts (the body holds none of them) */
    if (!(extra = PyDict_New()))
        goto error;
    if ((actor && PyDict_SetItem(extra, k_actor, actor) < 0) || (entity && PyDict_SetItem(extra, k_entity, entity) < 0))
        goto error;
    PyObject *count_keys[3] = {k_alarm, k_sigma, k_threat};
    for (int k = 0; k < 3; k++) {
        if (counts[k] >= 0) {
            PyObject *n = PyLong_FromLong(counts[k]);
            if (!n || PyDict_SetItem(extra, count_keys[k], n) < 0) {
                Py_XDECREF(n);
                goto error;
            }
            Py_DECREF(n);
        }
    }
    /* the texts: ASCII pieces (every input is ASCII) copied into one new str each */
    {
        pc ps[16];
        char nb[4][24];
        int k;
        Py_ssize_t idlen = PyUnicode_GET_LENGTH(inc_id);
        int actor_true = actor && PyUnicode_GET_LENGTH(actor);
        k = 0;
        pc_obj(&ps[k++], rx_dedup_prefix); PC_LIT(ps[k], ":"); k++; pc_obj(&ps[k++], inc_id);
        if (!(dedup = pc_join(ps, k)))
            goto error;
        k = 0;
        PC_LIT(ps[k], "RhythmX incident "); k++;
        if (idlen) pc_obj(&ps[k++], inc_id); else { PC_LIT(ps[k], "?"); k++; }
        if (actor_true) { PC_LIT(ps[k], ": "); k++; pc_obj(&ps[k++], actor); }
        if (!(name = pc_join(ps, k)))
            goto error;
        k = 0;
        PC_LIT(ps[k], "SigmaIncident "); k++;
        if (PyUnicode_GET_LENGTH(ev_type)) pc_obj(&ps[k++], ev_type); else { PC_LIT(ps[k], "event"); k++; }
        PC_LIT(ps[k], " for "); k++;
        if (actor_true) pc_obj(&ps[k++], actor); else { PC_LIT(ps[k], "unknown actor"); k++; }
        PC_LIT(ps[k], " at "); k++;
        if (entity && PyUnicode_GET_LENGTH(entity)) pc_obj(&ps[k++], entity); else { PC_LIT(ps[k], "unknown entity"); k++; }
        PC_LIT(ps[k], ": risk score "); k++;
        pc_num(&ps[k++], nb[0], score);
        PC_LIT(ps[k], ", "); k++;
        pc_num(&ps[k++], nb[1], counts[0]);
        PC_LIT(ps[k], " alarms, "); k++;
        pc_num(&ps[k++], nb[2], counts[1]);
        PC_LIT(ps[k], " sigma alerts, "); k++;
        pc_num(&ps[k++], nb[3], counts[2]);
        PC_LIT(ps[k], " threat cases"); k++;
        if (!(descr = pc_join(ps, k)))
            goto error;
    }
    /* the canonical dict: a copy of the template, in its key order */
    PyObject *sev = sev_names[score >= 80 ? 4 : score >= 60 ? 3 : score >= 40 ? 2 : score >= 20 ? 1 : 0];
    if (!(fields = PyDict_Copy(rx_template)) || !(score_o = PyLong_FromLong(score)))
        goto error;
    if (PyDict_SetItem(fields, k_id, inc_id) < 0 || PyDict_SetItem(fields, k_dedup, dedup) < 0
        || PyDict_SetItem(fields, k_event, ev_type) < 0 || PyDict_SetItem(fields, k_name, name) < 0
        || PyDict_SetItem(fields, k_description, descr) < 0 || PyDict_SetItem(fields, k_risk_score, score_o) < 0
        || PyDict_SetItem(fields, k_severity, sev) < 0 || PyDict_SetItem(fields, k_status, cstatus) < 0
        || PyDict_SetItem(fields, k_occurred, ts) < 0 || PyDict_SetItem(fields, k_occurred_unix, unix_) < 0
        || (actor && PyDict_SetItem(fields, k_user, actor) < 0) || PyDict_SetItem(fields, k_extra, extra) < 0)
        goto error;
    Py_XSETREF(SLOT(ev, S_BODY), Py_NewRef(body));
    Py_XSETREF(SLOT(ev, S_FIELDS), Py_NewRef(fields));
    rc = 1;
    goto out;
error:
    rc = -1;
out:
    Py_DECREF(body);
    Py_XDECREF(ev_type);
    Py_XDECREF(cstatus);
    Py_XDECREF(fields);
    Py_XDECREF(extra);
    Py_XDECREF(dedup);
    Py_XDECREF(name);
    Py_XDECREF(descr);
    Py_XDECREF(score_o);
    return rc;
}

static PyObject *py_rx_normalise(PyObject *self, PyObject *ev)
{
    if (!rx_ready || !event_type)
        return PyErr_Format(PyExc_RuntimeError, "configure() and rx_configure() first");
    if (!Py_IS_TYPE(ev, event_type))
        Py_RETURN_FALSE;
    int r = rx_normalise_impl(ev);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}


/* ------------------------------------------------------------------------------------------
 * leef_join(first, d, f, common, extra, extra_keys) -> (body, n) | None: the pairs loop of
 * formats.render.Renderer._leef_fast.  common and extra_keys are its plan's tables
 * ((prefixes "key=", ...), (field names, ...)); f the canonical fields (a dict), extra
 * f["extra"].  The body is first, then d + prefix + value for each field of common read from
 * f, then for each of extra_keys read from extra when extra is a non-empty dict: a str value
 * when not empty, an int (not bool) as str(), None skipped; n the number of pairs added.
 * Any other value (or f not a dict, extra truthy but not a dict) -> None: the Python loop runs.
 * ------------------------------------------------------------------------------------------ */
/* d + prefix + value for each field of the tables (common from f, then extra_keys from extra
 * when use_extra) into buf[*len..cap): a str value when not empty, an int (not bool) as
 * str() writes it, None and absent skipped; *n counts the pairs.  1 written, 0 not covered
 * (another value type, a non-ASCII text, no room), -1 error. */
static int put_pairs(char *buf, size_t cap, size_t *len, char dch, PyObject *common, PyObject *extra_keys,
                     PyObject *f, PyObject *extra, int use_extra, Py_ssize_t *n)
{
    PyObject *tabs[2] = {common, extra_keys};
    PyObject *srcs[2] = {f, extra};
#define PUT(p_, n_) do { size_t n__ = (size_t)(n_); if (*len + n__ > cap) return 0; \
        memcpy(buf + *len, (p_), n__); *len += n__; } while (0)
#define PUTS(o_) do { if (!PyUnicode_IS_ASCII(o_)) return 0; \
        PUT(PyUnicode_1BYTE_DATA(o_), PyUnicode_GET_LENGTH(o_)); } while (0)
    for (int t = 0; t < 1 + use_extra; t++) {
        if (PyTuple_GET_SIZE(tabs[t]) != 2)
            return 0;
        PyObject *prefixes = PyTuple_GET_ITEM(tabs[t], 0), *names = PyTuple_GET_ITEM(tabs[t], 1);
        if (!PyTuple_Check(prefixes) || !PyTuple_Check(names) || PyTuple_GET_SIZE(prefixes) != PyTuple_GET_SIZE(names))
            return 0;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); k++) {
            PyObject *v = PyDict_GetItemWithError(srcs[t], PyTuple_GET_ITEM(names, k));
            if (!v) {
                if (PyErr_Occurred())
                    return -1;
                continue;
            }
            if (v == Py_None)
                continue;
            PyObject *prefix = PyTuple_GET_ITEM(prefixes, k);
            if (!PyUnicode_CheckExact(prefix))
                return 0;
            if (PyUnicode_CheckExact(v)) {
                if (PyUnicode_GET_LENGTH(v) == 0)
                    continue;
                PUT(&dch, 1);
                PUTS(prefix);
                PUTS(v);
            } else if (PyLong_CheckExact(v)) {
                int ovf;
                long lv = PyLong_AsLongAndOverflow(v, &ovf);
                if (ovf || (lv == -1 && PyErr_Occurred())) {
                    PyErr_Clear();
                    return 0;                  /* a huge int: Python's str() */
                }
                char nb[24];
                int q = put_long(nb, lv);
                PUT(&dch, 1);
                PUTS(prefix);
                PUT(nb, q);
            } else
                return 0;
            (*n)++;
        }
    }
#undef PUT
#undef PUTS
    return 1;
}

static PyObject *py_leef_join(PyObject *self, PyObject *args)
{
    PyObject *first, *d, *f, *common, *extra, *extra_keys;
    if (!PyArg_ParseTuple(args, "UUOO!OO!", &first, &d, &f, &PyTuple_Type, &common, &extra, &PyTuple_Type,
                          &extra_keys))
        return NULL;
    if (!PyDict_CheckExact(f) || !is_ascii_str(first) || !is_ascii_str(d) || PyUnicode_GET_LENGTH(d) != 1)
        Py_RETURN_NONE;
    int use_extra = PyObject_IsTrue(extra);
    if (use_extra < 0)
        return NULL;
    if (use_extra && !PyDict_CheckExact(extra))
        Py_RETURN_NONE;
    char buf[16384];
    size_t len = (size_t)PyUnicode_GET_LENGTH(first);
    if (len > sizeof buf)
        Py_RETURN_NONE;
    memcpy(buf, PyUnicode_1BYTE_DATA(first), len);
    Py_ssize_t n = 0;
    int r = put_pairs(buf, sizeof buf, &len, (char)PyUnicode_1BYTE_DATA(d)[0], common, extra_keys, f, extra,
                      use_extra, &n);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(Nn)", PyUnicode_DecodeASCII(buf, (Py_ssize_t)len, NULL), n);
}

/* ------------------------------------------------------------------------------------------
 * lf_frames(buf, pos, out, max_frame, trailer, nul) -> new pos: the non-transparent frames of
 * parsers.framing.Deframer._run outside octet context, while they are simple: at pos a '<'
 * (blank bytes SP TAB CR LF NUL before it skipped), a trailer (``trailer``, or NUL when
 * ``nul``) in buf, and at most max_frame bytes once a CR before an LF is stripped.  Each such
 * frame is appended to out (bytes) and pos moves past its trailer; the first position that is
 * anything else is returned (n when buf is used up), and the Python loop goes on from there.
 * ------------------------------------------------------------------------------------------ */
static PyObject *py_lf_frames(PyObject *self, PyObject *args)
{
    PyObject *buf, *out;
    Py_ssize_t pos, mf;
    int tb, nul;
    if (!PyArg_ParseTuple(args, "SnO!nip", &buf, &pos, &PyList_Type, &out, &mf, &tb, &nul))
        return NULL;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(buf);
    Py_ssize_t n = PyBytes_GET_SIZE(buf);
    if (pos < 0 || pos > n || (tb != '\n' && tb != 0))
        return PyErr_Format(PyExc_ValueError, "bad position or trailer");
    nul = nul && tb != 0;
    while (pos < n) {
        unsigned char c = b[pos];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == 0) {
            pos++;
            continue;
        }
        if (c != '<')
            break;
        const unsigned char *t = memchr(b + pos, tb, n - pos);
        Py_ssize_t e = t ? t - b : -1;
        if (nul) {
            const unsigned char *z = memchr(b + pos, 0, (e >= 0 ? e : n) - pos);
            if (z)
                e = z - b;
        }
        if (e < 0)
            break;
        Py_ssize_t end = e;
        if (e > pos && b[e - 1] == '\r' && b[e] == '\n')
            end = e - 1;
        if (end - pos > mf)
            break;
        PyObject *f = PyBytes_FromStringAndSize((const char *)b + pos, end - pos);
        if (!f || PyList_Append(out, f) < 0) {
            Py_XDECREF(f);
            return NULL;
        }
        Py_DECREF(f);
        pos = e + 1;
    }
    return PyLong_FromSsize_t(pos);
}


/* ------------------------------------------------------------------------------------------
 * leef_line(ev, f, plan, lheads, profile, event_id_field, hostname, app_name) -> bytes | None:
 * formats.render.Renderer._leef_fast for the usual event, when its syslog/LEEF header is in
 * the renderer's cache (lheads) with no sanitising: severity one of the bands, occurred_unix a
 * float in years 1970-9999, cat and the values str (ASCII) / int / None, no triage, HOSTNAME
 * from the sink or the event, every text ASCII without CR, LF, NUL or a stray delimiter.  It
 * reads and changes nothing; None means the Python code does it all (and fills the cache).
 * ------------------------------------------------------------------------------------------ */
static PyObject *k_vendor_sev, *k_occ, *k_kind, *k_triage, *k_host, *k_product, *k_extra2, *k_event2, *k_name2,
    *s_original, *s_syslog, *i_17;

static inline int truthy_str(PyObject *o) { return o && PyUnicode_CheckExact(o) && PyUnicode_GET_LENGTH(o) > 0; }

static int render_keys(void)
{
#define K(var, text) do { if (!var && !(var = PyUnicode_InternFromString(text))) return -1; } while (0)
    K(k_vendor_sev, "severity"); K(k_occ, "occurred_unix"); K(k_kind, "kind"); K(k_triage, "triage");
    K(k_host, "host"); K(k_product, "product"); K(k_extra2, "extra"); K(k_event2, "event"); K(k_name2, "name");
    K(s_original, "original"); K(s_syslog, "syslog");
#undef K
    if (!i_17 && !(i_17 = PyLong_FromLong(17)))
        return -1;
    return 0;
}

static void civil_from_days(long long z, int *y, int *m, int *d)
{
    z += 719468;
    const long long era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const long long yy = (long long)yoe + era * 400;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yy + (*m <= 2));
}

/* The canonical occurred_unix as formats.syslog.rfc5424_timestamp writes it, without its 'Z':
 * "YYYY-MM-DDTHH:MM:SS.mmm" (23 characters) for a float in years 1970-9999 (round(epoch * 1000)
 * in milliseconds, half to even as nearbyint does); 0 for anything else. */
static int stamp23d(double epoch, char *q);
static int stamp23(PyObject *epoch, char *q)
{
    if (!epoch || !PyFloat_CheckExact(epoch))
        return 0;
    return stamp23d(PyFloat_AS_DOUBLE(epoch), q);
}

static int stamp23d(double epoch, char *q)
{
    double x = nearbyint(epoch * 1000.0);
    if (!(x >= 0.0 && x < 253402300800000.0))
        return 0;
    long long r = (long long)x, secs = r / 1000;
    int ms = (int)(r % 1000), Y, M, D;
    civil_from_days(secs / 86400, &Y, &M, &D);
    int sod = (int)(secs % 86400);
    int hh = sod / 3600, mi = sod / 60 % 60, ss = sod % 60;
    q[0] = (char)('0' + Y / 1000); q[1] = (char)('0' + Y / 100 % 10); q[2] = (char)('0' + Y / 10 % 10);
    q[3] = (char)('0' + Y % 10); q[4] = '-'; q[5] = (char)('0' + M / 10); q[6] = (char)('0' + M % 10);
    q[7] = '-'; q[8] = (char)('0' + D / 10); q[9] = (char)('0' + D % 10); q[10] = 'T';
    q[11] = (char)('0' + hh / 10); q[12] = (char)('0' + hh % 10); q[13] = ':';
    q[14] = (char)('0' + mi / 10); q[15] = (char)('0' + mi % 10); q[16] = ':';
    q[17] = (char)('0' + ss / 10); q[18] = (char)('0' + ss % 10); q[19] = '.';
    q[20] = (char)('0' + ms / 100); q[21] = (char)('0' + ms / 10 % 10); q[22] = (char)('0' + ms % 10);
    q[23] = 0;
    return 1;
}

/* f["extra"] as the renderers read it: *extra the dict and *use 1 when it is a non-empty dict,
 * *use 0 when it is falsy; 0 (not covered) when it is truthy but not a dict, -1 error. */
static int extra_of(PyObject *f, PyObject **extra, int *use)
{
    PyObject *x = PyDict_GetItemWithError(f, k_extra2);
    if (!x) {
        if (PyErr_Occurred())
            return -1;
        x = Py_None;
    }
    int t = PyObject_IsTrue(x);
    if (t < 0)
        return -1;
    if (t && !PyDict_CheckExact(x))
        return 0;
    *extra = x;
    *use = t;
    return 1;
}

/* formats.render._event_id: extra[eid_field] (when a non-empty dict extra and a field name),
 * else f["event"], else f["kind"] (the first truthy), as an ASCII str; else the MSGID, the
 * APP-NAME or "syslog".  *out is borrowed.  0: another value type (Python's _str). */
static int event_id_of(PyObject *ev, PyObject *f, PyObject *extra, int use_extra, PyObject *eid_field, PyObject **out)
{
    PyObject *e = NULL;
    if (eid_field != Py_None && !PyUnicode_CheckExact(eid_field))
        return 0;
    if (use_extra && truthy_str(eid_field)) {
        e = PyDict_GetItemWithError(extra, eid_field);
        if (!e && PyErr_Occurred())
            return -1;
    }
    PyObject *chain[2] = {k_event2, k_kind};
    for (int k = 0; k < 2 && !(e && e != Py_None && (!PyUnicode_CheckExact(e) || PyUnicode_GET_LENGTH(e))); k++) {
        e = PyDict_GetItemWithError(f, chain[k]);
        if (!e && PyErr_Occurred())
            return -1;
    }
    if (e && e != Py_None && (!PyUnicode_CheckExact(e) || PyUnicode_GET_LENGTH(e))) {
        if (!is_ascii_str(e))
            return 0;
        *out = e;
        return 1;
    }
    PyObject *mi = SLOT(ev, S_MSGID), *an = SLOT(ev, S_APP_NAME);
    if ((mi && mi != Py_None && !PyUnicode_CheckExact(mi)) || (an && an != Py_None && !PyUnicode_CheckExact(an)))
        return 0;
    *out = truthy_str(mi) ? mi : truthy_str(an) ? an : s_syslog;
    return 1;
}

/* The syslog header's HOSTNAME, APP-NAME and MSGID as formats.render.Renderer._header_parts
 * picks them (borrowed; msgid may be Py_None); 0 when a value is of another type or the
 * HOSTNAME would be the peer's address (Python does those). */
static int header_fields(PyObject *ev, PyObject *f, PyObject *hostopt, PyObject *appopt, PyObject **host_,
                         PyObject **app_, PyObject **msgid_)
{
    PyObject *host = hostopt;
    int orig = PyUnicode_Compare(hostopt, s_original);
    if (orig == -1 && PyErr_Occurred())
        return -1;
    if (orig == 0) {
        PyObject *h = SLOT(ev, S_HOSTNAME);
        if (h && h != Py_None && !PyUnicode_CheckExact(h))
            return 0;
        if (truthy_str(h))
            host = h;
        else {
            h = PyDict_GetItemWithError(f, k_host);
            if (!h && PyErr_Occurred())
                return -1;
            if (!truthy_str(h))
                return 0;      /* the peer's address: Python */
            host = h;
        }
    }
    PyObject *app = SLOT(ev, S_APP_NAME);
    if (app && app != Py_None && !PyUnicode_CheckExact(app))
        return 0;
    if (!truthy_str(app)) {
        app = PyDict_GetItemWithError(f, k_product);
        if (!app && PyErr_Occurred())
            return -1;
        if (app && app != Py_None && !PyUnicode_CheckExact(app))
            return 0;
        if (!truthy_str(app))
            app = appopt;
    }
    PyObject *msgid = PyDict_GetItemWithError(f, k_event2);
    if (!msgid && PyErr_Occurred())
        return -1;
    if (msgid && msgid != Py_None && !PyUnicode_CheckExact(msgid))
        return 0;
    if (!truthy_str(msgid)) {
        msgid = SLOT(ev, S_MSGID);
        if (msgid && msgid != Py_None && !PyUnicode_CheckExact(msgid))
            return 0;
    }
    if (!msgid || !PyUnicode_CheckExact(msgid))
        msgid = Py_None;
    *host_ = host;
    *app_ = app;
    *msgid_ = msgid;
    return 1;
}

/* What leef_line and cef_line read alike: no triage (absent or None), f["extra"] (extra_of), the
 * event id (event_id_of) and the syslog header's fields (header_fields); 1, 0 not covered, -1
 * error. */
static int render_common(PyObject *ev, PyObject *f, PyObject *eid_field, PyObject *hostopt, PyObject *appopt,
                         PyObject **extra, int *use_extra, PyObject **event_id, PyObject **host, PyObject **app,
                         PyObject **msgid)
{
    PyObject *triage = PyDict_GetItemWithError(f, k_triage);
    if (triage && triage != Py_None)
        return 0;
    if (!triage && PyErr_Occurred())
        return -1;
    int r;
    if ((r = extra_of(f, extra, use_extra)) <= 0 || (r = event_id_of(ev, f, *extra, *use_extra, eid_field, event_id)) <= 0)
        return r;
    return header_fields(ev, f, hostopt, appopt, host, app, msgid);
}

/* f["severity"] when it is a str key of bands (borrowed), else NULL: not covered (or an error
 * when PyErr_Occurred()) */
static PyObject *band_of(PyObject *f, PyObject *bands, PyObject **value)
{
    PyObject *band = PyDict_GetItemWithError(f, k_vendor_sev);
    if (!band || !PyUnicode_CheckExact(band))
        return NULL;
    PyObject *v = PyDict_GetItemWithError(bands, band);
    if (!v)
        return NULL;
    if (value)
        *value = v;
    return band;
}

/* ------------------------------------------------------------------------------------------
 * leef_line(ev, f, plan, lheads, profile, event_id_field, hostname, app_name) -> bytes | None:
 * formats.render.Renderer._leef_fast for the usual event, when its syslog/LEEF header is in
 * the renderer's cache (lheads) with no sanitising: severity one of the bands, occurred_unix a
 * float in years 1970-9999, cat and the values str (ASCII) / int / None, no triage, HOSTNAME
 * from the sink or the event, every text ASCII without CR, LF, NUL or a stray delimiter.  It
 * reads and changes nothing; None means the Python code does it all (and fills the cache).
 * ------------------------------------------------------------------------------------------ */
/* The end of a LEEF line: the attributes in buf (len bytes) must hold no CR, LF or NUL and
 * the delimiter exactly `expect` times (where it was put); then pre + the stamp + 'Z' + rest +
 * buf as bytes.  None (a new reference) when not, NULL on error. */
static PyObject *leef_finish(const char *buf, size_t len, char dch, Py_ssize_t expect, PyObject *pre,
                             const char *stamp, PyObject *rest)
{
    if (memchr(buf, '\n', len) || memchr(buf, '\r', len) || memchr(buf, 0, len))
        Py_RETURN_NONE;
    Py_ssize_t cnt = 0;
    for (const char *q = buf, *end = buf + len; (q = memchr(q, dch, end - q)) != NULL; q++)
        cnt++;
    if (cnt != expect)
        Py_RETURN_NONE;
    Py_ssize_t pl = PyUnicode_GET_LENGTH(pre), rl = PyUnicode_GET_LENGTH(rest);
    PyObject *out = PyBytes_FromStringAndSize(NULL, pl + 24 + rl + (Py_ssize_t)len);
    if (out) {
        char *o = PyBytes_AS_STRING(out);
        memcpy(o, PyUnicode_1BYTE_DATA(pre), pl);
        memcpy(o + pl, stamp, 23);
        o[pl + 23] = 'Z';
        memcpy(o + pl + 24, PyUnicode_1BYTE_DATA(rest), rl);
        memcpy(o + pl + 24 + rl, buf, len);
    }
    return out;
}

/* leef_line's work (argument types checked by the caller): bytes, None (not covered) or NULL */
static PyObject *leef_line_impl(PyObject *ev, PyObject *f, PyObject *plan, PyObject *lheads, PyObject *profile,
                                PyObject *eid_field, PyObject *hostopt, PyObject *appopt)
{
    if (!event_type || !Py_IS_TYPE(ev, event_type) || PyTuple_GET_SIZE(plan) != 7)
        Py_RETURN_NONE;
    if (render_keys() < 0)
        return NULL;
    PyObject *d = PyTuple_GET_ITEM(plan, 0), *sev_dt = PyTuple_GET_ITEM(plan, 1), *dt_tail = PyTuple_GET_ITEM(plan, 3),
             *common = PyTuple_GET_ITEM(plan, 4), *extra_keys = PyTuple_GET_ITEM(plan, 5),
             *cat_field = PyTuple_GET_ITEM(plan, 6);
    if (!is_ascii_str(d) || PyUnicode_GET_LENGTH(d) != 1 || !PyDict_CheckExact(sev_dt) || !is_ascii_str(dt_tail)
        || !PyTuple_Check(common) || !PyTuple_Check(extra_keys))
        Py_RETURN_NONE;
    char dch = (char)PyUnicode_1BYTE_DATA(d)[0];
    /* severity band, time */
    PyObject *sevtxt = NULL;
    PyObject *band = band_of(f, sev_dt, &sevtxt);
    if (!band)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (!is_ascii_str(sevtxt))
        Py_RETURN_NONE;
    char stamp[24];
    PyObject *epoch = PyDict_GetItemWithError(f, k_occ);
    if (!stamp23(epoch, stamp))
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    /* cat */
    PyObject *cat = PyDict_GetItemWithError(f, cat_field);
    if (!cat && PyErr_Occurred())
        return NULL;
    if (cat == Py_None)
        cat = NULL;
    if (cat && !is_ascii_str(cat))
        Py_RETURN_NONE;
    if (!cat || PyUnicode_GET_LENGTH(cat) == 0) {
        cat = PyDict_GetItemWithError(f, k_kind);
        if (!cat && PyErr_Occurred())
            return NULL;
        if (cat == Py_None)
            cat = NULL;
        if (cat && !PyUnicode_CheckExact(cat))
            Py_RETURN_NONE;
    }
    PyObject *extra, *event_id, *host, *app, *msgid;
    int use_extra, r;
    if ((r = render_common(ev, f, eid_field, hostopt, appopt, &extra, &use_extra, &event_id, &host, &app, &msgid)) <= 0)
        return r < 0 ? NULL : Py_NewRef(Py_None);
    /* the header cache key */
    PyObject *fac = SLOT(ev, S_FACILITY);
    PyObject *key = PyTuple_Pack(7, fac ? fac : Py_None, band, host, app, msgid, profile, event_id);
    if (!key)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(lheads, key);
    Py_DECREF(key);
    if (!hit)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 3 || !PyLong_CheckExact(PyTuple_GET_ITEM(hit, 2))
        || PyLong_AsLong(PyTuple_GET_ITEM(hit, 2)) != 0)
        Py_RETURN_NONE;
    PyObject *pre = PyTuple_GET_ITEM(hit, 0), *rest = PyTuple_GET_ITEM(hit, 1);
    if (!is_ascii_str(pre) || !is_ascii_str(rest))
        Py_RETURN_NONE;
    /* the LEEF attributes: [cat=CAT d] sev=N d devTime=STAMP+0000 d devTimeFormat=... then the
       pairs, ASCII, into a buffer (a longer line, or any non-ASCII text: Python) */
    char buf[16384];
    size_t len = 0;
#define PUT(p_, n_) do { size_t n__ = (size_t)(n_); if (len + n__ > sizeof buf) Py_RETURN_NONE; \
        memcpy(buf + len, (p_), n__); len += n__; } while (0)
#define PUTS(o_) do { if (!PyUnicode_IS_ASCII(o_)) Py_RETURN_NONE; \
        PUT(PyUnicode_1BYTE_DATA(o_), PyUnicode_GET_LENGTH(o_)); } while (0)
    Py_ssize_t n = 0, nd = 2;
    if (cat) {
        PUT("cat=", 4);
        PUTS(cat);
        PUT(&dch, 1);
        nd = 3;
    }
    PUTS(sevtxt);
    PUT(stamp, 23);
    PUT("+0000", 5);
    PUTS(dt_tail);
    int pr = put_pairs(buf, sizeof buf, &len, dch, common, extra_keys, f, extra, use_extra, &n);
    if (pr < 0)
        return NULL;
    if (pr == 0)
        Py_RETURN_NONE;
#undef PUT
#undef PUTS
    return leef_finish(buf, len, dch, n + nd, pre, stamp, rest);
}

static PyObject *py_leef_line(PyObject *self, PyObject *args)
{
    PyObject *ev, *f, *plan, *lheads, *profile, *eid_field, *hostopt, *appopt;
    if (!PyArg_ParseTuple(args, "OO!O!O!OOUU", &ev, &PyDict_Type, &f, &PyTuple_Type, &plan, &PyDict_Type, &lheads,
                          &profile, &eid_field, &hostopt, &appopt))
        return NULL;
    return leef_line_impl(ev, f, plan, lheads, profile, eid_field, hostopt, appopt);
}

/* ------------------------------------------------------------------------------------------
 * cef_line(ev, f, plan, cheads, hcache, profile, event_id_field, hostname, app_name) -> bytes
 * | None: formats.render.Renderer._cef for the usual event, when both its headers are in the
 * renderer's caches (hcache: the syslog header around its timestamp; cheads: the CEF header,
 * with no sanitising): severity one of the bands, occurred_unix a float in years 1970-9999,
 * no triage, name/cat/event id and every value a str (ASCII, no TAB or NUL) or an int, the cn
 * slots ints.  Values are escaped as formats.cef.extension_counted does (\ = CR LF escaped,
 * trailing spaces removed).  It reads and changes nothing; None means the Python code does it
 * all (and fills the caches).
 *
 * plan (formats.render._cef_native_plan): (bands, cat field, common ((field, key)...), extra
 * keys ((field, key)...), cs slots ((label, field, in extra)...), cn slots (same), cs keys
 * ((key, label key)...), cn keys (same)).
 * ------------------------------------------------------------------------------------------ */

/* an ASCII str value escaped into buf[*len..cap); 0 when it holds a TAB or NUL (sanitised, and
 * counted, by Python), is not ASCII, or there is no room */
static int put_cef_text(char *buf, size_t cap, size_t *len, PyObject *v)
{
    if (!PyUnicode_IS_ASCII(v))
        return 0;
    const unsigned char *s = PyUnicode_1BYTE_DATA(v);
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    size_t l = *len, start = *len;
    if (l + 2 * (size_t)n > cap)
        return 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = s[k];
        switch (c) {
        case '\\': buf[l++] = '\\'; buf[l++] = '\\'; break;
        case '=': buf[l++] = '\\'; buf[l++] = '='; break;
        case '\n': buf[l++] = '\\'; buf[l++] = 'n'; break;
        case '\r': buf[l++] = '\\'; buf[l++] = 'r'; break;
        case '\t': case 0: return 0;
        default: buf[l++] = (char)c;
        }
    }
    while (l > start && buf[l - 1] == ' ')     /* every escape ends in a non-blank */
        l--;
    *len = l;
    return 1;
}

/* " key=value" with value a str (escaped) or an int (not bool); 0 for another type */
static int put_cef_pair(char *buf, size_t cap, size_t *len, PyObject *key, PyObject *v)
{
    if (!PyUnicode_IS_ASCII(key) || *len + 2 + (size_t)PyUnicode_GET_LENGTH(key) + 24 > cap)
        return 0;
    buf[(*len)++] = ' ';
    memcpy(buf + *len, PyUnicode_1BYTE_DATA(key), PyUnicode_GET_LENGTH(key));
    *len += PyUnicode_GET_LENGTH(key);
    buf[(*len)++] = '=';
    if (PyUnicode_CheckExact(v))
        return put_cef_text(buf, cap, len, v);
    if (PyLong_CheckExact(v)) {
        int ovf;
        long lv = PyLong_AsLongAndOverflow(v, &ovf);
        if (ovf || (lv == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        *len += (size_t)put_long(buf + *len, lv);
        return 1;
    }
    return 0;
}

/* the value of a (label, field, in extra) slot, borrowed, or NULL (absent; an error when
 * PyErr_Occurred()) */
static PyObject *slot_value(PyObject *slot, PyObject *f, PyObject *extra, int use_extra, int *ok)
{
    *ok = 0;
    if (!PyTuple_Check(slot) || PyTuple_GET_SIZE(slot) != 3 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(slot, 0)))
        return NULL;
    int in_extra = PyObject_IsTrue(PyTuple_GET_ITEM(slot, 2));
    if (in_extra < 0)
        return NULL;
    *ok = 1;
    if (in_extra && !use_extra)
        return NULL;
    return PyDict_GetItemWithError(in_extra ? extra : f, PyTuple_GET_ITEM(slot, 1));
}

static PyObject *py_cef_line(PyObject *self, PyObject *args)
{
    PyObject *ev, *f, *plan, *cheads, *hcache, *profile, *eid_field, *hostopt, *appopt;
    if (!PyArg_ParseTuple(args, "OO!O!O!O!OOUU", &ev, &PyDict_Type, &f, &PyTuple_Type, &plan, &PyDict_Type, &cheads,
                          &PyDict_Type, &hcache, &profile, &eid_field, &hostopt, &appopt))
        return NULL;
    if (!event_type || !Py_IS_TYPE(ev, event_type) || PyTuple_GET_SIZE(plan) != 8)
        Py_RETURN_NONE;
    if (render_keys() < 0)
        return NULL;
    PyObject *bands = PyTuple_GET_ITEM(plan, 0), *cat_field = PyTuple_GET_ITEM(plan, 1);
    PyObject *tabs[6];
    for (int k = 0; k < 6; k++)
        if (!PyTuple_Check(tabs[k] = PyTuple_GET_ITEM(plan, 2 + k)))
            Py_RETURN_NONE;
    if (!PyDict_CheckExact(bands) || !PyUnicode_CheckExact(cat_field))
        Py_RETURN_NONE;
    PyObject *band = band_of(f, bands, NULL);
    if (!band)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    char stamp[24];
    PyObject *epoch = PyDict_GetItemWithError(f, k_occ);
    if (!stamp23(epoch, stamp))
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    long long rt = (long long)(PyFloat_AS_DOUBLE(epoch) * 1000.0);    /* str(int(epoch * 1000)) */
    PyObject *extra, *event_id, *host, *app, *msgid;
    int use_extra, r;
    if ((r = render_common(ev, f, eid_field, hostopt, appopt, &extra, &use_extra, &event_id, &host, &app, &msgid)) <= 0)
        return r < 0 ? NULL : Py_NewRef(Py_None);
    /* name: f["name"] or the APP-NAME or "syslog" */
    PyObject *name = PyDict_GetItemWithError(f, k_name2);
    if (!name && PyErr_Occurred())
        return NULL;
    if (name && name != Py_None && !PyUnicode_CheckExact(name))
        Py_RETURN_NONE;
    if (!truthy_str(name)) {
        name = SLOT(ev, S_APP_NAME);
        if (name && name != Py_None && !PyUnicode_CheckExact(name))
            Py_RETURN_NONE;
        if (!truthy_str(name))
            name = s_syslog;
    }
    if (!PyUnicode_IS_ASCII(name))
        Py_RETURN_NONE;
    /* cat: f[cat field] or f["kind"] (None: no cat) */
    PyObject *cat = PyDict_GetItemWithError(f, cat_field);
    if (!cat && PyErr_Occurred())
        return NULL;
    if (cat && cat != Py_None && !PyUnicode_CheckExact(cat))
        Py_RETURN_NONE;
    if (!truthy_str(cat)) {
        cat = PyDict_GetItemWithError(f, k_kind);
        if (!cat && PyErr_Occurred())
            return NULL;
        if (cat == Py_None)
            cat = NULL;
        if (cat && !PyUnicode_CheckExact(cat))
            Py_RETURN_NONE;
    }
    /* the two headers, from the renderer's caches */
    PyObject *fac = SLOT(ev, S_FACILITY);
    PyObject *key = PyTuple_Pack(5, fac && fac != Py_None ? fac : i_17, band, host, app, msgid);
    if (!key)
        return NULL;
    PyObject *parts = PyDict_GetItemWithError(hcache, key);
    Py_DECREF(key);
    if (!parts)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    key = PyTuple_Pack(4, profile, event_id, name, band);
    if (!key)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(cheads, key);
    Py_DECREF(key);
    if (!hit)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) != 2 || !PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2
        || !PyLong_CheckExact(PyTuple_GET_ITEM(hit, 1)) || PyLong_AsLong(PyTuple_GET_ITEM(hit, 1)) != 0)
        Py_RETURN_NONE;
    PyObject *pre = PyTuple_GET_ITEM(parts, 0), *post = PyTuple_GET_ITEM(parts, 1), *head = PyTuple_GET_ITEM(hit, 0);
    if (!is_ascii_str(pre) || !is_ascii_str(post) || !is_ascii_str(head))
        Py_RETURN_NONE;
    /* the extension */
    char buf[16384];
    size_t len = 0;
    len += (size_t)snprintf(buf, sizeof buf, "rt=%lld", rt);
    static PyObject *k_cat;
    if (!k_cat && !(k_cat = PyUnicode_InternFromString("cat")))
        return NULL;
    if (cat && !put_cef_pair(buf, sizeof buf, &len, k_cat, cat))
        Py_RETURN_NONE;
    PyObject *srcs[2] = {f, extra};
    for (int t = 0; t < 1 + use_extra; t++) {      /* common fields, then the profile's extra keys */
        PyObject *tab = tabs[t];
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tab); k++) {
            PyObject *pair = PyTuple_GET_ITEM(tab, k);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 1)))
                Py_RETURN_NONE;
            PyObject *v = PyDict_GetItemWithError(srcs[t], PyTuple_GET_ITEM(pair, 0));
            if (!v) {
                if (PyErr_Occurred())
                    return NULL;
                continue;
            }
            if (v == Py_None || (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) == 0))
                continue;
            if (!put_cef_pair(buf, sizeof buf, &len, PyTuple_GET_ITEM(pair, 1), v))
                Py_RETURN_NONE;
        }
    }
    /* cs slots: the values that are not None or "", in order, into cs1.. */
    PyObject *cs = tabs[2], *cn = tabs[3], *cs_keys = tabs[4], *cn_keys = tabs[5];
    Py_ssize_t used = 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(cs) && used < PyTuple_GET_SIZE(cs_keys); k++) {
        int ok;
        PyObject *slot = PyTuple_GET_ITEM(cs, k);
        PyObject *v = slot_value(slot, f, extra, use_extra, &ok);
        if (!ok || (!v && PyErr_Occurred()))
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        if (!v || v == Py_None || (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) == 0))
            continue;
        PyObject *keys = PyTuple_GET_ITEM(cs_keys, used++);
        if (!PyTuple_Check(keys) || PyTuple_GET_SIZE(keys) != 2
            || !put_cef_pair(buf, sizeof buf, &len, PyTuple_GET_ITEM(keys, 0), v)
            || !put_cef_pair(buf, sizeof buf, &len, PyTuple_GET_ITEM(keys, 1), PyTuple_GET_ITEM(slot, 0)))
            Py_RETURN_NONE;
    }
    /* cn slots: the int values (bool, str and other types left out; a float: Python) */
    used = 0;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(cn); k++) {      /* every slot: one float sends it to Python */
        int ok;
        PyObject *slot = PyTuple_GET_ITEM(cn, k);
        PyObject *v = slot_value(slot, f, extra, use_extra, &ok);
        if (!ok || (!v && PyErr_Occurred()))
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        if (!v || PyBool_Check(v))
            continue;
        if (PyFloat_Check(v) || (PyLong_Check(v) && !PyLong_CheckExact(v)))
            Py_RETURN_NONE;
        if (!PyLong_CheckExact(v) || used == PyTuple_GET_SIZE(cn_keys))
            continue;
        PyObject *keys = PyTuple_GET_ITEM(cn_keys, used++);
        if (!PyTuple_Check(keys) || PyTuple_GET_SIZE(keys) != 2
            || !put_cef_pair(buf, sizeof buf, &len, PyTuple_GET_ITEM(keys, 0), v)
            || !put_cef_pair(buf, sizeof buf, &len, PyTuple_GET_ITEM(keys, 1), PyTuple_GET_ITEM(slot, 0)))
            Py_RETURN_NONE;
    }
    /* "<PRI>1 " STAMP "Z" " HOST APP - MSGID -" " " CEF-HEAD EXTENSION */
    Py_ssize_t pl = PyUnicode_GET_LENGTH(pre), ql = PyUnicode_GET_LENGTH(post), hl = PyUnicode_GET_LENGTH(head);
    PyObject *out = PyBytes_FromStringAndSize(NULL, pl + 24 + ql + 1 + hl + (Py_ssize_t)len);
    if (out) {
        char *o = PyBytes_AS_STRING(out);
        memcpy(o, PyUnicode_1BYTE_DATA(pre), pl);
        memcpy(o + pl, stamp, 23);
        o[pl + 23] = 'Z';
        memcpy(o + pl + 24, PyUnicode_1BYTE_DATA(post), ql);
        o[pl + 24 + ql] = ' ';
        memcpy(o + pl + 25 + ql, PyUnicode_1BYTE_DATA(head), hl);
        memcpy(o + pl + 25 + ql + hl, buf, len);
    }
    return out;
}

/* ------------------------------------------------------------------------------------------
 * frame_spans(spans, octet) -> bytes or None: formats.syslog.frame_batch(payloads, "octet" if
 * octet else "lf") for payloads given as spans of buffers, when no payload needs a change.
 * spans: a list of (buf, offsets) pairs, buf a bytes object and offsets a list of ints, non
 * decreasing, within buf; the payloads are buf[offsets[k]:offsets[k + 1]] in order.  LF
 * framing: each payload then LF; octet counting: "LEN " then each payload.  None, with nothing
 * done, when a payload holds what the framing rule changes (LF: a CR, an LF or a NUL; octet: a
 * NUL) or the input is not of that shape: the Python code then frames it all.
 * ------------------------------------------------------------------------------------------ */
static int span_offsets(PyObject *span, const char **buf, Py_ssize_t *blen, PyObject **offs)
{
    if (!PyTuple_CheckExact(span) || PyTuple_GET_SIZE(span) != 2)
        return 0;
    PyObject *b = PyTuple_GET_ITEM(span, 0), *o = PyTuple_GET_ITEM(span, 1);
    if (!PyBytes_CheckExact(b) || !PyList_CheckExact(o))
        return 0;
    *buf = PyBytes_AS_STRING(b);
    *blen = PyBytes_GET_SIZE(b);
    *offs = o;
    return 1;
}

static PyObject *py_frame_spans(PyObject *self, PyObject *args)
{
    PyObject *spans;
    int octet;
    if (!PyArg_ParseTuple(args, "O!p", &PyList_Type, &spans, &octet))
        return NULL;
    Py_ssize_t ns = PyList_GET_SIZE(spans), total = 0;
    /* pass 1: check every span and payload, and size the output */
    for (Py_ssize_t s = 0; s < ns; s++) {
        const char *buf;
        Py_ssize_t blen;
        PyObject *offs;
        if (!span_offsets(PyList_GET_ITEM(spans, s), &buf, &blen, &offs))
            Py_RETURN_NONE;
        Py_ssize_t n = PyList_GET_SIZE(offs);
        if (n == 0)
            Py_RETURN_NONE;
        Py_ssize_t prev = -1;
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *v = PyList_GET_ITEM(offs, k);
            if (!PyLong_CheckExact(v))
                Py_RETURN_NONE;
            Py_ssize_t at = PyLong_AsSsize_t(v);
            if (at == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                Py_RETURN_NONE;
            }
            if (at < 0 || at > blen || (k && at < prev))
                Py_RETURN_NONE;
            if (k) {
                const char *p = buf + prev;
                Py_ssize_t len = at - prev;
                if (memchr(p, 0, len))
                    Py_RETURN_NONE;
                if (octet) {
                    char tmp[24];
                    total += put_long(tmp, (long)len) + 1 + len;
                } else {
                    if (memchr(p, '\n', len) || memchr(p, '\r', len))
                        Py_RETURN_NONE;
                    total += len + 1;
                }
            }
            prev = at;
        }
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out)
        return NULL;
    char *q = PyBytes_AS_STRING(out);
    /* pass 2: copy (the lists cannot change: no Python code ran since pass 1) */
    for (Py_ssize_t s = 0; s < ns; s++) {
        const char *buf = NULL;
        Py_ssize_t blen = 0;
        PyObject *offs = NULL;
        span_offsets(PyList_GET_ITEM(spans, s), &buf, &blen, &offs);
        Py_ssize_t n = PyList_GET_SIZE(offs);
        Py_ssize_t prev = PyLong_AsSsize_t(PyList_GET_ITEM(offs, 0));
        for (Py_ssize_t k = 1; k < n; k++) {
            Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(offs, k));
            Py_ssize_t len = at - prev;
            if (octet) {
                q += put_long(q, (long)len);
                *q++ = ' ';
                memcpy(q, buf + prev, len);
                q += len;
            } else {
                memcpy(q, buf + prev, len);
                q += len;
                *q++ = '\n';
            }
            prev = at;
        }
    }
    if (q != PyBytes_AS_STRING(out) + total) {      /* cannot happen: the sizes were counted above */
        Py_DECREF(out);
        return PyErr_Format(PyExc_SystemError, "frame_spans: size mismatch");
    }
    return out;
}

/* ------------------------------------------------------------------------------------------
 * Rule programs (relay.rules._program): a compiled rule as nested tuples, evaluated here with
 * the closures' results, short circuits and error counts.  1 true, 0 false, -1 an error that
 * is not the rule's (a BaseException, no memory, a malformed program).
 * ------------------------------------------------------------------------------------------ */
enum { P_CONST, P_AND, P_OR, P_NOT, P_CALL, P_CMP };
enum { G_BARE, G_ATTR, G_CALL };
/* P_CMP's op beyond Py_LT..Py_GE (relay.rules._RICH): presence, the value is not None / is None;
 * membership, the value is / is not in the literal (a frozenset) */
enum { OP_EXISTS = 6, OP_MISSING = 7, OP_IN = 8, OP_NOT_IN = 9 };

static int prog_bad(void)
{
    PyErr_SetString(PyExc_TypeError, "malformed rule program");
    return -1;
}

/* errs[0] += 1 for the rule's and the global counter lists */
static int prog_count_error(PyObject *errs, PyObject *gerr)
{
    PyObject *lists[2] = {errs, gerr};
    for (int i = 0; i < 2; i++) {
        PyObject *l = lists[i];
        if (!PyList_CheckExact(l) || PyList_GET_SIZE(l) < 1)
            return prog_bad();
        PyObject *one = PyLong_FromLong(1);
        PyObject *n = one ? PyNumber_Add(PyList_GET_ITEM(l, 0), one) : NULL;
        Py_XDECREF(one);
        if (!n)
            return -1;
        PyList_SetItem(l, 0, n);
    }
    return 0;
}

/* a leaf raised: counted and false when it is an Exception, as the closures do */
static int prog_caught(PyObject *node)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyErr_Clear();
    return prog_count_error(PyTuple_GET_ITEM(node, 7), PyTuple_GET_ITEM(node, 8)) < 0 ? -1 : 0;
}

static int prog_truth_of_call(PyObject *f, PyObject *arg)
{
    PyObject *r = PyObject_CallOneArg(f, arg);
    if (!r)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* a bare name's value (borrowed, NULL for None/missing), or *odd = 1 when fields or enrich is
 * neither a dict nor None (the closure then runs) */
static PyObject *prog_bare(PyObject *ev, PyObject *key, int *odd)
{
    int slots[2] = {S_FIELDS, S_ENRICH};
    for (int i = 0; i < 2; i++) {
        PyObject *d = SLOT(ev, slots[i]);
        if (!d || (d != Py_None && !PyDict_CheckExact(d))) {
            *odd = 1;
            return NULL;
        }
        if (d == Py_None || PyDict_GET_SIZE(d) == 0)
            continue;
        PyObject *v = PyDict_GetItemWithError(d, key);
        if (!v && PyErr_Occurred()) {
            *odd = 1;           /* the closure raises the same and counts it */
            PyErr_Clear();
            return NULL;
        }
        if (v && v != Py_None)
            return v;
    }
    return NULL;
}

static int prog_cmp(PyObject *node, PyObject *ev)
{
    if (PyTuple_GET_SIZE(node) != 11)
        return prog_bad();
    PyObject *getter = PyTuple_GET_ITEM(node, 1), *leaf = PyTuple_GET_ITEM(node, 9);
    if (!PyTuple_CheckExact(getter) || PyTuple_GET_SIZE(getter) != 2)
        return prog_bad();
    long g = PyLong_AsLong(PyTuple_GET_ITEM(getter, 0));
    PyObject *arg = PyTuple_GET_ITEM(getter, 1);
    PyObject *v = NULL;           /* a new reference, or NULL for None */
    if (g == G_BARE) {
        int odd = 0;
        v = prog_bare(ev, arg, &odd);
        if (odd)
            return prog_truth_of_call(leaf, ev);
        Py_XINCREF(v);
    } else if (g == G_ATTR) {
        int s = 0;
        while (s < S_COUNT && slot_name_obj[s] != arg)
            s++;
        if (s == S_COUNT || !SLOT(ev, s))
            return prog_truth_of_call(leaf, ev);
        v = SLOT(ev, s);
        v = v == Py_None ? NULL : Py_NewRef(v);
    } else if (g == G_CALL) {
        v = PyObject_CallOneArg(arg, ev);
        if (!v)
            return prog_caught(node);
        if (v == Py_None)
            Py_CLEAR(v);
    } else
        return prog_bad();
    PyObject *k1 = PyTuple_GET_ITEM(node, 2), *k2 = PyTuple_GET_ITEM(node, 3);
    PyObject *r;
    long cop = PyLong_AsLong(PyTuple_GET_ITEM(node, 4));
    if (v && (cop == OP_EXISTS || cop == OP_MISSING)) {     /* a value that is not None */
        Py_DECREF(v);
        return cop == OP_EXISTS;
    }
    if (!v) {           /* None: test(None), a constant computed at compile time when it could be */
        PyObject *c = PyTuple_GET_ITEM(node, 10);
        if (PyBool_Check(c))
            return c == Py_True;
        r = PyObject_CallOneArg(PyTuple_GET_ITEM(node, 6), Py_None);
        if (!r)
            return prog_caught(node);
        int t = PyObject_IsTrue(r);
        Py_DECREF(r);
        return t;
    }
    if ((PyObject *)Py_TYPE(v) == k1 || (PyObject *)Py_TYPE(v) == k2) {
        if (cop == OP_IN || cop == OP_NOT_IN) {
            PyObject *members = PyTuple_GET_ITEM(node, 5);
            if (!PyFrozenSet_CheckExact(members)) {
                Py_DECREF(v);
                return prog_bad();
            }
            int c = PySet_Contains(members, v);
            Py_DECREF(v);
            if (c < 0)
                return prog_caught(node);
            return cop == OP_IN ? c : !c;
        }
        r = PyObject_RichCompare(v, PyTuple_GET_ITEM(node, 5), (int)cop);
    } else
        r = PyObject_CallOneArg(PyTuple_GET_ITEM(node, 6), v);
    Py_DECREF(v);
    if (!r)
        return prog_caught(node);
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

static int prog_eval(PyObject *node, PyObject *ev, int depth)
{
    if (!PyTuple_CheckExact(node) || PyTuple_GET_SIZE(node) < 2 || depth > 64)
        return prog_bad();
    long op = PyLong_AsLong(PyTuple_GET_ITEM(node, 0));
    PyObject *a = PyTuple_GET_ITEM(node, 1);
    switch (op) {
    case P_CONST:
        return a == Py_True;
    case P_AND:
    case P_OR: {
        if (!PyTuple_CheckExact(a))
            return prog_bad();
        Py_ssize_t n = PyTuple_GET_SIZE(a);
        for (Py_ssize_t i = 0; i < n; i++) {
            int r = prog_eval(PyTuple_GET_ITEM(a, i), ev, depth + 1);
            if (r < 0 || r == (op == P_OR))
                return r;
        }
        return op == P_AND;
    }
    case P_NOT: {
        int r = prog_eval(a, ev, depth + 1);
        return r < 0 ? r : !r;
    }
    case P_CALL:
        return prog_truth_of_call(a, ev);
    case P_CMP:
        return prog_cmp(node, ev);
    default:
        return prog_bad();
    }
}

static PyObject *py_rule_eval(PyObject *self, PyObject *args)
{
    PyObject *prog, *ev;
    if (!PyArg_ParseTuple(args, "OO", &prog, &ev))
        return NULL;
    if (!event_type)
        return PyErr_Format(PyExc_RuntimeError, "configure() first");
    if (!Py_IS_TYPE(ev, event_type))
        return PyErr_Format(PyExc_TypeError, "an Event expected");
    int r = prog_eval(prog, ev, 0);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* ------------------------------------------------------------------------------------------
 * stage_batch(items, received, source, fallback, lenient, plan) -> None: relay.pipeline's
 * Pipeline.stage_rows for a listener batch of (raw, peer) pairs when no enrichment and no tap
 * run (relay/pipeline.py builds ``plan`` and says when it applies), with no Python frame per
 * event in the usual case: each message is parsed (parse_frame, else ``fallback(raw, peer)``,
 * always it when ``lenient``), normalised (rx_normalise_impl for the covered SigmaIncident
 * shape, else ``normalise(ev)``), counted, routed (each route's rule program, relay.rules._program, in order,
 * ``final`` stopping), rendered and appended to its sink's rows, in message order.  Every
 * decision that is not a plain one is Python's, through the plan's callables, so the result is
 * stage_into's: same rows, same dead letters, same counters.
 *
 * plan: (normalise, rx_app, raw_format, count_run, slow, routes, for_mask, multi, dead, done)
 *   count_run(ev, n): n consecutive events of ev's kind parsed (relay_parsed_total...)
 *   slow(ev): the whole stage in Python (an event with ev.meta set: triage)
 *   routes: ((match, final, program), ...), at most 62: the rule's program (relay.rules) is
 *     evaluated here, or ``match(ev)`` called when it is None
 *   for_mask(mask) -> (names, meta, single): the route names and queue metadata of the events
 *     that matched the routes of ``mask`` (bit i: route i), and ``single`` (sink, payloads,
 *     metas, render, spec) for one sink without metadata fields, else None
 *   spec: None (``render(ev, names)`` renders), or (profiles, default, lheads, hostname,
 *     app_name) for formats.render.Renderer._leef_fast: profiles maps a vendor str to
 *     (leef plan, profile, event id field) or None (then ``render``), default is that of
 *     the default profile; leef_line_impl renders, and ``render`` when it says None
 *   multi(ev, names, meta, mask): several sinks, or sinks with metadata fields (Python)
 *   dead(sink, ev, meta, exc): ``render`` raised exc (an Exception): the event's dead letter
 *   done(route counts, unrouted): the counters, once at the end
 * ------------------------------------------------------------------------------------------ */
#define SB_ROUTES 62
#define SB_MASKS 16
static PyObject *k_vendor3;

/* the LEEF line of spec for ev: bytes, None (the renderer does it) or NULL (an error) */
static PyObject *sb_leef(PyObject *ev, PyObject *spec)
{
    PyObject *f = SLOT(ev, S_FIELDS);
    if (!f || !PyDict_CheckExact(f) || PyDict_GET_SIZE(f) == 0)
        Py_RETURN_NONE;
    PyObject *table = PyTuple_GET_ITEM(spec, 0), *ps = PyTuple_GET_ITEM(spec, 1);
    PyObject *v = PyDict_GetItemWithError(f, k_vendor3);
    if (v) {
        if (PyUnicode_CheckExact(v)) {
            PyObject *hit = PyDict_GetItemWithError(table, v);
            if (hit)
                ps = hit;
            else if (PyErr_Occurred())
                return NULL;
        } else if (v != Py_None)
            Py_RETURN_NONE;
    } else if (PyErr_Occurred())
        return NULL;
    if (!PyTuple_CheckExact(ps) || PyTuple_GET_SIZE(ps) != 3 || !PyTuple_CheckExact(PyTuple_GET_ITEM(ps, 0)))
        Py_RETURN_NONE;
    return leef_line_impl(ev, f, PyTuple_GET_ITEM(ps, 0), PyTuple_GET_ITEM(spec, 2), PyTuple_GET_ITEM(ps, 1),
                          PyTuple_GET_ITEM(ps, 2), PyTuple_GET_ITEM(spec, 3), PyTuple_GET_ITEM(spec, 4));
}

static int sb_spec_ok(PyObject *spec)
{
    return PyTuple_CheckExact(spec) && PyTuple_GET_SIZE(spec) == 5 && PyDict_CheckExact(PyTuple_GET_ITEM(spec, 0))
        && PyDict_CheckExact(PyTuple_GET_ITEM(spec, 2)) && PyUnicode_CheckExact(PyTuple_GET_ITEM(spec, 3))
        && PyUnicode_CheckExact(PyTuple_GET_ITEM(spec, 4));
}

/* a for_mask entry as sb_event reads it: (names, meta, None) or (names, meta, (sink, payloads
 * list, metas list, render, spec None or sb_spec_ok)) */
static int sb_entry_ok(PyObject *entry)
{
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
        return 0;
    PyObject *single = PyTuple_GET_ITEM(entry, 2);
    if (single == Py_None)
        return 1;
    if (!PyTuple_CheckExact(single) || PyTuple_GET_SIZE(single) != 5 || !PyList_CheckExact(PyTuple_GET_ITEM(single, 1))
        || !PyList_CheckExact(PyTuple_GET_ITEM(single, 2)))
        return 0;
    PyObject *spec = PyTuple_GET_ITEM(single, 4);
    return spec == Py_None || sb_spec_ok(spec);
}

/* the for_mask entry of a route mask (borrowed, kept in the batch's table), NULL on error */
static PyObject *sb_entry(unsigned long long mask, unsigned long long *mkeys, PyObject **mvals, int *nm, int *mnext,
                          PyObject *for_mask)
{
    for (int j = 0; j < *nm; j++)
        if (mkeys[j] == mask)
            return mvals[j];
    PyObject *mo = PyLong_FromUnsignedLongLong(mask);
    if (!mo)
        return NULL;
    PyObject *entry = PyObject_CallOneArg(for_mask, mo);
    Py_DECREF(mo);
    if (!entry)
        return NULL;
    if (!sb_entry_ok(entry)) {      /* checked once here, not per event */
        Py_DECREF(entry);
        PyErr_SetString(PyExc_TypeError, "stage_batch: for_mask must return (names, meta, single), single "
                        "None or (sink, [payloads], [metas], render, spec None or a LEEF spec)");
        return NULL;
    }
    int j = *nm < SB_MASKS ? (*nm)++ : ((*mnext)++ % SB_MASKS);
    Py_XSETREF(mvals[j], entry);
    mkeys[j] = mask;
    return entry;
}

/* one event through route, render and rows; 0 done, -1 error */
static int sb_event(PyObject *ev, PyObject *routes, Py_ssize_t nr, long long *rcount, long long *unrouted,
                    unsigned long long *mkeys, PyObject **mvals, int *nm, int *mnext, PyObject *for_mask,
                    PyObject *multi, PyObject *dead)
{
    unsigned long long mask = 0;
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *rt = PyTuple_GET_ITEM(routes, i);
        PyObject *prog = PyTuple_GET_ITEM(rt, 2);
        int t = prog != Py_None ? prog_eval(prog, ev, 0) : prog_truth_of_call(PyTuple_GET_ITEM(rt, 0), ev);
        if (t < 0)
            return -1;
        if (t) {
            mask |= 1ULL << i;
            rcount[i]++;
            if (PyTuple_GET_ITEM(rt, 1) == Py_True)
                break;
        }
    }
    if (!mask) {
        (*unrouted)++;
        return 0;
    }
    PyObject *entry = sb_entry(mask, mkeys, mvals, nm, mnext, for_mask);
    if (!entry)
        return -1;
    PyObject *names = PyTuple_GET_ITEM(entry, 0), *meta = PyTuple_GET_ITEM(entry, 1),
             *single = PyTuple_GET_ITEM(entry, 2);
    if (single == Py_None) {
        PyObject *mo = PyLong_FromUnsignedLongLong(mask);
        if (!mo)
            return -1;
        PyObject *r = PyObject_CallFunctionObjArgs(multi, ev, names, meta, mo, NULL);
        Py_DECREF(mo);
        if (!r)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    PyObject *sink = PyTuple_GET_ITEM(single, 0), *payloads = PyTuple_GET_ITEM(single, 1),
             *metas = PyTuple_GET_ITEM(single, 2), *render = PyTuple_GET_ITEM(single, 3),
             *spec = PyTuple_GET_ITEM(single, 4);
    PyObject *payload = NULL;
    if (spec != Py_None) {
        payload = sb_leef(ev, spec);
        if (payload == Py_None)
            Py_CLEAR(payload);
        else if (!payload && !PyErr_Occurred())
            return -1;
    }
    if (!payload && !PyErr_Occurred())
        payload = PyObject_CallFunctionObjArgs(render, ev, names, NULL);
    if (!payload) {     /* the renderer refused the event: its dead letter, as stage_into writes it */
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyObject *et, *ex, *tb;
        PyErr_Fetch(&et, &ex, &tb);
        PyErr_NormalizeException(&et, &ex, &tb);
        if (tb && ex)
            PyException_SetTraceback(ex, tb);
        PyObject *r = PyObject_CallFunctionObjArgs(dead, sink, ev, meta, ex ? ex : Py_None, NULL);
        Py_XDECREF(et);
        Py_XDECREF(ex);
        Py_XDECREF(tb);
        if (!r)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    int rc = PyList_Append(payloads, payload);
    Py_DECREF(payload);
    if (rc < 0 || PyList_Append(metas, meta) < 0)
        return -1;
    return 0;
}

/* count_run(first event of the run, n), the run's event released; 0 or -1 */
static int sb_count(PyObject *count_run, PyObject **run_ev, Py_ssize_t n)
{
    PyObject *cnt = PyLong_FromSsize_t(n);
    PyObject *res = cnt ? PyObject_CallFunctionObjArgs(count_run, *run_ev, cnt, NULL) : NULL;
    Py_XDECREF(cnt);
    Py_CLEAR(*run_ev);
    if (!res)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * The lane: stage_batch's path for the covered SigmaIncident message with no Python object
 * per message.  One frame is read into spans (parse_frame's grammar, one SD element, an ASCII
 * JSON body), checked and normalised as rx_normalise_impl does, its routes' programs evaluated
 * and its LEEF line rendered as leef_line_impl does, all on the spans: the Event, its SD and
 * params dicts, the body dict, the fields and extra dicts are never made.  It covers a subset
 * of what the object path covers and declines (0) anything else before any side effect, so
 * the object path then does that message as before; what it produces is byte for byte what
 * the object path produces (tests/test_native_stage.py runs both on every corpus).
 *
 * A batch takes the lane when every route has a program of constants, and/or/not and
 * comparisons of bare field names (lane_prog_ok), and a message takes it only inside a run of
 * counted RFC 5424 events (the run's first event, an Event, is what count_run reads).
 * ------------------------------------------------------------------------------------------ */
enum { LV_ABSENT, LV_NONE, LV_OBJ, LV_STR, LV_INT, LV_FLOAT, LV_EXTRA };
typedef struct { int kind; const char *p; Py_ssize_t n; long i; double d; PyObject *o; } lval;

/* the fields rx_normalise_impl sets over its template, and extra's keys */
enum { F_ID, F_DEDUP, F_EVENT, F_NAME, F_DESCR, F_SCORE, F_SEV, F_STATUS, F_OCCURRED, F_OCC_UNIX, F_USER,
       F_EXTRA, F_NSET };
enum { X_ACTOR, X_ENTITY, X_ALARM, X_SIGMA, X_THREAT, X_N };

typedef struct {
    int pri;
    PyObject *host, *app, *msgid;      /* new references (host may be Py_None) */
    PyObject *status;                  /* the canonical status, a new reference, or NULL */
    double time_unix;
    const unsigned char *ts;           /* 24 bytes */
    lval f[F_NSET];
    lval x[X_N];
    int nx;
    char scratch[2048];
} lane_ev;

/* what a field name resolves to, remembered per batch by the key's address (open addressing) */
typedef struct { PyObject *key; int fid; int xid; PyObject *tpl; } lane_key;
#define LANE_KEYS 128
#define LANE_HEADS 64
/* the SD params the lane reads, in the order of lane_pnames() */
enum { P_ID, P_RISK, P_STATUS, P_ACTOR, P_ACTOR_TYPE, P_ENTITY, P_ALARM, P_SIGMA, P_THREAT, P_RELATED, P_N };
/* a LEEF plan's pairs table ((prefixes, names), common or extra), its names resolved once */
#define LANE_TAB_MAX 48
#define LANE_TABS 4
typedef struct {
    PyObject *tab;                     /* a strong reference, released with the batch */
    int extra, n, bad;
    lane_key key[LANE_TAB_MAX];
    const char *pp[LANE_TAB_MAX];      /* each prefix (ASCII) */
    Py_ssize_t pl[LANE_TAB_MAX];
} lane_tab;
typedef struct {
    lane_key keys[LANE_KEYS];
    int nkeys;
    lane_tab tabs[LANE_TABS];
    int ntabs, nexttab;
    /* LEEF headers looked up, and their entries: the 7 parts of the renderer's key and the
     * renderer's cache (lheads) itself, as sinks with different headers share the parts */
    PyObject *hkey[LANE_HEADS][8], *hhit[LANE_HEADS];
    const char *pname[P_N];            /* the params' names (ASCII), and whether rx_used has each */
    Py_ssize_t plen[P_N];
    int pused[P_N];
    Py_ssize_t taken, declined;
} lane_batch;

static inline size_t lane_addr_hash(const void *p) { return (size_t)(((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ULL >> 40); }

static Py_ssize_t lane_taken_total, lane_declined_total;

static int lane_resolve(lane_batch *lb, PyObject *key, lane_key *out)
{
    size_t h = lane_addr_hash(key) & (LANE_KEYS - 1);
    for (lane_key *s = &lb->keys[h]; s->key; s = &lb->keys[h = (h + 1) & (LANE_KEYS - 1)])
        if (s->key == key) {
            *out = *s;
            return 1;
        }
    if (!PyUnicode_CheckExact(key))
        return 0;
    PyObject *fk[F_NSET] = {k_id, k_dedup, k_event, k_name, k_description, k_risk_score, k_severity, k_status,
                            k_occurred, k_occurred_unix, k_user, k_extra};
    PyObject *xk[X_N] = {k_actor, k_entity, k_alarm, k_sigma, k_threat};
    lane_key e = {key, -1, -1, NULL};
    for (int k = 0; k < F_NSET && e.fid < 0; k++)
        if (fk[k] == key || PyUnicode_Compare(fk[k], key) == 0)
            e.fid = k;
    for (int k = 0; k < X_N && e.xid < 0; k++)
        if (xk[k] == key || PyUnicode_Compare(xk[k], key) == 0)
            e.xid = k;
    e.tpl = PyDict_GetItemWithError(rx_template, key);     /* borrowed: rx_template outlives the batch */
    if (!e.tpl && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (lb->nkeys < LANE_KEYS * 3 / 4) {      /* h: the free slot the probe ended on */
        lb->keys[h] = e;
        lb->nkeys++;
    }
    *out = e;
    return 1;
}

/* fields[name] of a resolved name */
static inline void lane_val(const lane_key *e, const lane_ev *le, lval *v)
{
    if (e->fid >= 0 && le->f[e->fid].kind != LV_ABSENT) {
        *v = le->f[e->fid];
        return;
    }
    v->kind = LV_ABSENT;
    if (e->tpl) {
        v->kind = e->tpl == Py_None ? LV_NONE : LV_OBJ;
        v->o = e->tpl;
    }
}

/* fields[key] as the normalised event has it; 0 when the key cannot be told */
static int lane_get(lane_batch *lb, const lane_ev *le, PyObject *key, lval *v)
{
    lane_key e;
    if (!lane_resolve(lb, key, &e))
        return 0;
    lane_val(&e, le, v);
    return 1;
}

/* extra[key] */
static int lane_xget(lane_batch *lb, const lane_ev *le, PyObject *key, lval *v)
{
    lane_key e;
    if (!lane_resolve(lb, key, &e))
        return 0;
    if (e.xid >= 0)
        *v = le->x[e.xid];
    else
        v->kind = LV_ABSENT;
    return 1;
}

/* a value's ASCII text when it is a str: 1 (p, n set), 0 not a str, -1 a str that is not ASCII */
static int lv_str(const lval *v, const char **p, Py_ssize_t *n)
{
    if (v->kind == LV_STR) {
        *p = v->p;
        *n = v->n;
        return 1;
    }
    if (v->kind == LV_OBJ && PyUnicode_CheckExact(v->o)) {
        if (!PyUnicode_IS_ASCII(v->o))
            return -1;
        *p = (const char *)PyUnicode_1BYTE_DATA(v->o);
        *n = PyUnicode_GET_LENGTH(v->o);
        return 1;
    }
    return 0;
}

/* the value as an object (a new reference), NULL with no exception for extra (not covered) */
static PyObject *lv_obj(const lval *v)
{
    switch (v->kind) {
    case LV_OBJ: return Py_NewRef(v->o);
    case LV_STR: return new_ascii((const unsigned char *)v->p, v->n);
    case LV_INT: return PyLong_FromLong(v->i);
    case LV_FLOAT: return PyFloat_FromDouble(v->d);
    case LV_EXTRA: return NULL;
    default: return Py_NewRef(Py_None);
    }
}

/* ---- the routes: a program the lane evaluates without calling Python, checked per batch */
/* the Event attributes a rule may name that the lane has (prog_cmp's G_ATTR) */
static const int lane_attrs[] = {S_FORMAT, S_PRI, S_FACILITY, S_SEVERITY, S_HOSTNAME, S_APP_NAME, S_MSGID};

/* the Event's attribute, as parse_frame sets it */
static void lane_attr(const lane_ev *le, PyObject *name, lval *v)
{
    v->kind = LV_ABSENT;
    if (name == slot_name_obj[S_FORMAT])
        *v = (lval){LV_OBJ, .o = format_value};
    else if (name == slot_name_obj[S_PRI])
        *v = (lval){LV_INT, .i = le->pri};
    else if (name == slot_name_obj[S_FACILITY])
        *v = (lval){LV_INT, .i = le->pri >> 3};
    else if (name == slot_name_obj[S_SEVERITY])
        *v = (lval){LV_INT, .i = le->pri & 7};
    else if (name == slot_name_obj[S_HOSTNAME])
        *v = le->host == Py_None ? (lval){LV_NONE} : (lval){LV_OBJ, .o = le->host};
    else if (name == slot_name_obj[S_APP_NAME])
        *v = (lval){LV_OBJ, .o = le->app};
    else if (name == slot_name_obj[S_MSGID])
        *v = (lval){LV_OBJ, .o = le->msgid};
}

static int lane_prog_ok(PyObject *node, int depth)
{
    if (!PyTuple_CheckExact(node) || PyTuple_GET_SIZE(node) < 2 || depth > 64)
        return 0;
    long op = PyLong_AsLong(PyTuple_GET_ITEM(node, 0));
    PyObject *a = PyTuple_GET_ITEM(node, 1);
    if (op == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    switch (op) {
    case P_CONST:
        return 1;
    case P_AND:
    case P_OR:
        if (!PyTuple_CheckExact(a))
            return 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++)
            if (!lane_prog_ok(PyTuple_GET_ITEM(a, i), depth + 1))
                return 0;
        return 1;
    case P_NOT:
        return lane_prog_ok(a, depth + 1);
    case P_CMP: {
        if (PyTuple_GET_SIZE(node) != 11 || !PyTuple_CheckExact(a) || PyTuple_GET_SIZE(a) != 2
            || !PyLong_CheckExact(PyTuple_GET_ITEM(a, 0)) || !PyLong_CheckExact(PyTuple_GET_ITEM(node, 4)))
            return 0;
        long g = PyLong_AsLong(PyTuple_GET_ITEM(a, 0)), cop = PyLong_AsLong(PyTuple_GET_ITEM(node, 4));
        if (g == G_ATTR) {
            PyObject *name = PyTuple_GET_ITEM(a, 1);
            int known = 0;
            for (size_t k = 0; k < sizeof lane_attrs / sizeof *lane_attrs; k++)
                known |= slot_name_obj[lane_attrs[k]] == name;
            if (!known)
                return 0;
        } else if (g != G_BARE)
            return 0;
        if (cop == OP_IN || cop == OP_NOT_IN)
            return PyFrozenSet_CheckExact(PyTuple_GET_ITEM(node, 5));
        return (cop >= Py_LT && cop <= Py_GE) || cop == OP_EXISTS || cop == OP_MISSING;
    }
    default:
        return 0;
    }
}

/* the types whose comparison with each other cannot raise (exact int, float, str) */
static int lane_plain_pair(PyObject *a, PyObject *b)
{
    int na = PyLong_CheckExact(a) || PyFloat_CheckExact(a), nb = PyLong_CheckExact(b) || PyFloat_CheckExact(b);
    return (na && nb) || (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b));
}

/* 1 true, 0 false, -2 not covered (prog_eval would call Python), -1 error */
static int lane_eval(PyObject *node, lane_batch *lb, const lane_ev *le)
{
    long op = PyLong_AsLong(PyTuple_GET_ITEM(node, 0));
    PyObject *a = PyTuple_GET_ITEM(node, 1);
    switch (op) {
    case P_CONST:
        return a == Py_True;
    case P_AND:
    case P_OR:
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++) {
            int r = lane_eval(PyTuple_GET_ITEM(a, i), lb, le);
            if (r < 0 || r == (op == P_OR))
                return r;
        }
        return op == P_AND;
    case P_NOT: {
        int r = lane_eval(a, lb, le);
        return r < 0 ? r : !r;
    }
    default: {          /* P_CMP: prog_cmp with prog_bare's value, or the attribute's */
        lval v;
        if (PyLong_AsLong(PyTuple_GET_ITEM(a, 0)) == G_ATTR)
            lane_attr(le, PyTuple_GET_ITEM(a, 1), &v);
        else if (!lane_get(lb, le, PyTuple_GET_ITEM(a, 1), &v))
            return -2;
        if (v.kind == LV_ABSENT || v.kind == LV_NONE) {
            PyObject *c = PyTuple_GET_ITEM(node, 10);
            return PyBool_Check(c) ? c == Py_True : -2;
        }
        long cop = PyLong_AsLong(PyTuple_GET_ITEM(node, 4));
        if (cop == OP_EXISTS || cop == OP_MISSING)      /* present; extra: the object path says */
            return v.kind == LV_EXTRA ? -2 : cop == OP_EXISTS;
        PyObject *o = lv_obj(&v);
        if (!o)
            return PyErr_Occurred() ? -1 : -2;
        PyObject *k1 = PyTuple_GET_ITEM(node, 2), *k2 = PyTuple_GET_ITEM(node, 3), *cst = PyTuple_GET_ITEM(node, 5);
        int r = -2;
        if ((PyObject *)Py_TYPE(o) == k1 || (PyObject *)Py_TYPE(o) == k2) {
            if (cop == OP_IN || cop == OP_NOT_IN) {     /* a frozenset (lane_prog_ok) */
                r = PySet_Contains(cst, o);
                if (r >= 0 && cop == OP_NOT_IN)
                    r = !r;
            } else if (lane_plain_pair(o, cst)) {
                PyObject *res = PyObject_RichCompare(o, cst, (int)cop);
                r = res ? PyObject_IsTrue(res) : -1;
                Py_XDECREF(res);
            }
        }
        Py_DECREF(o);
        return r;
    }
    }
}

/* ---- the frame: parse_frame's grammar, the covered shape only */
/* the batch's param names (rx_configure's, ASCII) and whether rx_used holds each: 1, or 0
 * when one is not an ASCII str (no lane), -1 error */
static int lane_pnames(lane_batch *lb)
{
    PyObject *names[P_N] = {rx_p_id, rx_p_risk, rx_p_status, rx_p_actor, rx_p_actor_type, rx_p_entity, rx_p_alarm,
                            rx_p_sigma, rx_p_threat, rx_p_related};
    for (int k = 0; k < P_N; k++) {
        if (!is_ascii_str(names[k]))
            return 0;
        lb->pname[k] = (const char *)PyUnicode_1BYTE_DATA(names[k]);
        lb->plen[k] = PyUnicode_GET_LENGTH(names[k]);
        if ((lb->pused[k] = PySet_Contains(rx_used, names[k])) < 0)
            return -1;
    }
    return 1;
}

#define LANE_BODY 16

/* 1 read and normalised into *le, 0 not covered, -1 error.  On 1 and 0 alike the caller
 * releases le's references (lane_release). */
static int lane_read(const unsigned char *p, Py_ssize_t n, PyObject *rx_app, const lane_batch *lb, lane_ev *le)
{
    /* PRI VERSION */
    int pri, ver;
    Py_ssize_t i = pri_version(p, n, &pri, &ver);
    if (!i)
        return 0;
    /* TIMESTAMP: yyyy-mm-ddThh:mm:ss.mmmZ only (rx_normalise_impl's) */
    const unsigned char *t = p + i;
    if (n - i < 25 || t[24] != ' ' || t[23] != 'Z' || t[19] != '.' || t[10] != 'T')
        return 0;
    if (!(is_digit(t[0]) && is_digit(t[1]) && is_digit(t[2]) && is_digit(t[3]) && t[4] == '-' && is_digit(t[5])
          && is_digit(t[6]) && t[7] == '-' && is_digit(t[8]) && is_digit(t[9]) && is_digit(t[11])
          && is_digit(t[12]) && t[13] == ':' && is_digit(t[14]) && is_digit(t[15]) && t[16] == ':'
          && is_digit(t[17]) && is_digit(t[18]) && is_digit(t[20]) && is_digit(t[21]) && is_digit(t[22])))
        return 0;
    {
        int y = d2(t) * 100 + d2(t + 2), mo = d2(t + 5), d = d2(t + 8);
        int h = d2(t + 11), mi = d2(t + 14), sec = d2(t + 17);
        if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59)
            return 0;
        long long base = days_from_civil(y, mo, d) * 86400LL + h * 3600 + mi * 60;
        long num = (t[20] - '0') * 100 + (t[21] - '0') * 10 + (t[22] - '0');
        le->time_unix = ((double)base + (double)sec) + (double)num / 1e3;
    }
    le->ts = t;
    i += 25;
    /* HOSTNAME APP-NAME PROCID MSGID */
    Py_ssize_t fs[4], fl[4];
    if (!(i = header_four(p, n, i, fs, fl)))
        return 0;
    /* APP-NAME is rx_app's, MSGID an ASCII one without capitals (the event type as it is) */
    Py_ssize_t al = PyUnicode_GET_LENGTH(rx_app);
    if (fl[1] != al || memcmp(p + fs[1], PyUnicode_1BYTE_DATA(rx_app), al) != 0)
        return 0;
    if (fl[3] == 1 && p[fs[3]] == '-')
        return 0;
    for (Py_ssize_t k = 0; k < fl[3]; k++)
        if (p[fs[3] + k] >= 'A' && p[fs[3] + k] <= 'Z')
            return 0;
    /* one SD element, rx_sd_id's, then " {" the body */
    if (i >= n || p[i] != '[')
        return 0;
    const unsigned char *rb = memchr(p + i, ']', n - i);
    if (!rb)
        return 0;
    Py_ssize_t j = rb - p;
    if (memchr(p + i, '\\', j - i) || j + 2 >= n || p[j + 1] != ' ' || p[j + 2] != '{')
        return 0;
    Py_ssize_t k = i + 1, s0 = k;
    while (k < j && is_name(p[k]))
        k++;
    Py_ssize_t sl = PyUnicode_GET_LENGTH(rx_sd_id);
    if (k - s0 != sl || k >= j || p[k] != ' ' || memcmp(p + s0, PyUnicode_1BYTE_DATA(rx_sd_id), sl) != 0)
        return 0;
    Py_ssize_t pv0[P_N], pvn[P_N];     /* each param's value, pvn -1 when absent */
    for (int m = 0; m < P_N; m++)
        pvn[m] = -1;
    int ok = 0;
    while (k < j && p[k] == ' ') {
        Py_ssize_t n0 = ++k;
        while (k < j && is_name(p[k]))
            k++;
        if (k == n0 || k - n0 > 32 || k + 1 >= j || p[k] != '=' || p[k + 1] != '"')
            return 0;
        Py_ssize_t q0 = k + 2;
        const unsigned char *q = memchr(p + q0, '"', j - q0);
        if (!q)
            return 0;
        Py_ssize_t q1 = q - p;
        for (Py_ssize_t c = q0; c < q1; c++)      /* rx_normalise_impl takes ASCII values only */
            if (p[c] & 0x80)
                return 0;
        /* one of the params the normaliser reads, each once (a repeated PARAM-NAME: parse_frame
           falls back) and in rx_used; any other name: the object path */
        int m = 0;
        while (m < P_N && !(lb->plen[m] == k - n0 && memcmp(lb->pname[m], p + n0, k - n0) == 0))
            m++;
        if (m == P_N || !lb->pused[m] || pvn[m] >= 0)
            return 0;
        pv0[m] = q0;
        pvn[m] = q1 - q0;
        k = q1 + 1;
        if (k == j) {
            ok = 1;
            break;
        }
    }
    if (!ok)
        return 0;
    /* the body: p[j + 2 .. n), ASCII, flat_json's shape, its keys in rx_body_ok */
    const unsigned char *b = p + j + 2;
    Py_ssize_t bn = n - (j + 2);
    Py_ssize_t bk[2 * LANE_BODY];
    int nb = 0;
    Py_ssize_t b_id0 = -1, b_idn = 0;
    int b_has_score = 0;
    long long b_score = 0;
    {
        Py_ssize_t q = 1;
        q = json_ws(b, q, bn);
        if (q < bn && b[q] == '}')
            q++;
        else
            for (;;) {
                json_member jm;
                if ((q = json_read_member(b, q, bn, &jm)) < 0)
                    return 0;
                Py_ssize_t k0 = jm.k0, kl = jm.kl;
                if (nb == LANE_BODY)
                    return 0;
                for (int m = 0; m < nb; m++)       /* a repeated key: orjson decides */
                    if (bk[2 * m + 1] == kl && memcmp(b + bk[2 * m], b + k0, kl) == 0)
                        return 0;
                bk[2 * nb] = k0; bk[2 * nb + 1] = kl;
                nb++;
                PyObject *key = cached_str((const char *)b + k0, kl);
                if (!key)
                    return -1;
                int in = PySet_Contains(rx_body_ok, key);
                int is_id = in > 0 && PyUnicode_Compare(key, k_incident_id) == 0;
                int is_score = in > 0 && !is_id && PyUnicode_Compare(key, k_risk_score) == 0;
                Py_DECREF(key);
                if (in <= 0)
                    return in;
                if (is_id) {
                    if (!jm.is_str)
                        return 0;
                    b_id0 = jm.s0;
                    b_idn = jm.sl;
                } else if (is_score) {
                    if (jm.is_str)
                        return 0;
                    b_has_score = 1;
                    b_score = jm.x;
                }
                int more = json_next(b, &q, bn);
                if (more < 0)
                    return 0;
                if (!more)
                    break;
            }
        if (json_ws(b, q, bn) != bn)
            return 0;
        for (Py_ssize_t c = 0; c < bn; c++)       /* flat_json takes an ASCII str only */
            if (b[c] & 0x80)
                return 0;
    }
    /* rx_normalise_impl's checks and fields */
    if (pvn[P_ID] < 0 || pvn[P_ACTOR_TYPE] >= 0 || pvn[P_RELATED] >= 0 || pvn[P_RISK] < 0)
        return 0;
    Py_ssize_t id0 = pv0[P_ID], idn = pvn[P_ID];
    long score = small_digits(p + pv0[P_RISK], pvn[P_RISK]);
    if (score < 0)
        return 0;
    if (score > 100)
        score = 100;
    long counts[3];
    for (int c = 0; c < 3; c++) {
        counts[c] = -1;
        if (pvn[P_ALARM + c] >= 0 && (counts[c] = small_digits(p + pv0[P_ALARM + c], pvn[P_ALARM + c])) < 0)
            return 0;
    }
    int has_actor = pvn[P_ACTOR] >= 0, has_entity = pvn[P_ENTITY] >= 0, has_status = pvn[P_STATUS] >= 0;
    Py_ssize_t a0 = has_actor ? pv0[P_ACTOR] : 0, an = has_actor ? pvn[P_ACTOR] : 0;
    Py_ssize_t e0 = has_entity ? pv0[P_ENTITY] : 0, en = has_entity ? pvn[P_ENTITY] : 0;
    Py_ssize_t st0 = has_status ? pv0[P_STATUS] : 0, stn = has_status ? pvn[P_STATUS] : 0;
    if (has_actor && ((an && is_digit(p[a0])) || memchr(p + a0, ':', an)))
        return 0;
    if (b_id0 >= 0 && (b_idn != idn || memcmp(b + b_id0, p + id0, idn) != 0))
        return 0;
    if (b_has_score) {
        long long bs = b_score > 100 ? 100 : b_score < 0 ? 0 : b_score;
        if (bs != score)
            return 0;
    }
    /* the objects the header and the LEEF line's cache key need (cached strs) */
    le->pri = pri;
    if (!(le->host = field_obj(p + fs[0], fl[0])) || !(le->app = cached_str((const char *)p + fs[1], fl[1]))
        || !(le->msgid = cached_str((const char *)p + fs[3], fl[3])))
        return -1;
    PyObject *cstatus = NULL;
    if (has_status) {
        PyObject *so = cached_str((const char *)p + st0, stn);
        if (!so)
            return -1;
        PyObject *hit = PyDict_GetItemWithError(rx_status_cache, so);
        if (hit)
            cstatus = Py_NewRef(hit);
        else if (!PyErr_Occurred())
            cstatus = PyObject_CallOneArg(rx_canonical_status, so);
        Py_DECREF(so);
        if (!cstatus)
            return -1;
    }
    if (cstatus == NULL || cstatus == Py_None) {
        Py_XDECREF(cstatus);
        PyObject *hit = PyDict_GetItemWithError(rx_status_from_event, le->msgid);
        if (!hit && PyErr_Occurred())
            return -1;
        cstatus = Py_NewRef(hit ? hit : Py_None);
    }
    le->status = cstatus;
    /* the texts, into the scratch buffer */
    char *s = le->scratch, *end = le->scratch + sizeof le->scratch;
#define SPUT(src_, n_) do { Py_ssize_t n__ = (n_); if (end - s < n__) return 0; memcpy(s, (src_), n__); s += n__; } while (0)
#define SLIT(lit) SPUT(lit, (Py_ssize_t)sizeof(lit) - 1)
#define SNUM(v_) do { if ((v_) < 0) SLIT("?"); else { char nb_[24]; int q_ = put_long(nb_, (v_)); SPUT(nb_, q_); } } while (0)
    const char *ids = (const char *)p + id0, *act = (const char *)p + a0, *ent = (const char *)p + e0;
    char *t0 = s;
    SPUT(PyUnicode_1BYTE_DATA(rx_dedup_prefix), PyUnicode_GET_LENGTH(rx_dedup_prefix));
    SLIT(":");
    SPUT(ids, idn);
    le->f[F_DEDUP] = (lval){LV_STR, t0, s - t0};
    t0 = s;
    SLIT("RhythmX incident ");
    if (idn) SPUT(ids, idn); else SLIT("?");
    if (has_actor && an) { SLIT(": "); SPUT(act, an); }
    le->f[F_NAME] = (lval){LV_STR, t0, s - t0};
    t0 = s;
    SLIT("SigmaIncident ");
    if (fl[3]) SPUT(p + fs[3], fl[3]); else SLIT("event");
    SLIT(" for ");
    if (has_actor && an) SPUT(act, an); else SLIT("unknown actor");
    SLIT(" at ");
    if (has_entity && en) SPUT(ent, en); else SLIT("unknown entity");
    SLIT(": risk score ");
    SNUM(score);
    SLIT(", ");
    SNUM(counts[0]);
    SLIT(" alarms, ");
    SNUM(counts[1]);
    SLIT(" sigma alerts, ");
    SNUM(counts[2]);
    SLIT(" threat cases");
    le->f[F_DESCR] = (lval){LV_STR, t0, s - t0};
#undef SPUT
#undef SLIT
#undef SNUM
    le->f[F_ID] = (lval){LV_STR, ids, idn};
    le->f[F_EVENT] = (lval){LV_OBJ, .o = le->msgid};
    le->f[F_SCORE] = (lval){LV_INT, .i = score};
    le->f[F_SEV] = (lval){LV_OBJ, .o = sev_names[score >= 80 ? 4 : score >= 60 ? 3 : score >= 40 ? 2 : score >= 20 ? 1 : 0]};
    le->f[F_STATUS] = cstatus == Py_None ? (lval){LV_NONE} : (lval){LV_OBJ, .o = cstatus};
    le->f[F_OCCURRED] = (lval){LV_STR, (const char *)t, 24};
    le->f[F_OCC_UNIX] = (lval){LV_FLOAT, .d = le->time_unix};
    le->f[F_USER] = has_actor ? (lval){LV_STR, act, an} : (lval){LV_ABSENT};
    le->f[F_EXTRA] = (lval){LV_EXTRA};
    le->x[X_ACTOR] = has_actor ? (lval){LV_STR, act, an} : (lval){LV_ABSENT};
    le->x[X_ENTITY] = has_entity ? (lval){LV_STR, ent, en} : (lval){LV_ABSENT};
    le->nx = has_actor + has_entity;
    for (int c = 0; c < 3; c++) {
        le->x[X_ALARM + c] = counts[c] >= 0 ? (lval){LV_INT, .i = counts[c]} : (lval){LV_ABSENT};
        le->nx += counts[c] >= 0;
    }
    return 1;
}

static void lane_release(lane_ev *le)
{
    Py_CLEAR(le->host);
    Py_CLEAR(le->app);
    Py_CLEAR(le->msgid);
    Py_CLEAR(le->status);
}

/* ---- the LEEF line: leef_line_impl on the lane's values; bytes, None not covered, NULL error */
/* a value that event_id_of takes (not None, not an empty str) */
static int lane_some(const lval *v)
{
    if (v->kind == LV_ABSENT || v->kind == LV_NONE)
        return 0;
    if (v->kind == LV_STR)
        return v->n > 0;
    if (v->kind == LV_OBJ && PyUnicode_CheckExact(v->o))
        return PyUnicode_GET_LENGTH(v->o) > 0;
    return 1;
}

/* the batch's compiled table of tab (NULL: a table the lane does not take) */
static const lane_tab *lane_tab_of(lane_batch *lb, PyObject *tab, int extra)
{
    for (int t = 0; t < lb->ntabs; t++)
        if (lb->tabs[t].tab == tab && lb->tabs[t].extra == extra)
            return lb->tabs[t].bad ? NULL : &lb->tabs[t];
    int t = lb->ntabs < LANE_TABS ? lb->ntabs++ : (lb->nexttab++ % LANE_TABS);
    lane_tab *c = &lb->tabs[t];
    Py_XSETREF(c->tab, Py_NewRef(tab));
    c->extra = extra;
    c->bad = 1;
    c->n = 0;
    if (!PyTuple_Check(tab) || PyTuple_GET_SIZE(tab) != 2)
        return NULL;
    PyObject *prefixes = PyTuple_GET_ITEM(tab, 0), *names = PyTuple_GET_ITEM(tab, 1);
    if (!PyTuple_Check(prefixes) || !PyTuple_Check(names) || PyTuple_GET_SIZE(prefixes) != PyTuple_GET_SIZE(names)
        || PyTuple_GET_SIZE(names) > LANE_TAB_MAX)
        return NULL;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); k++) {
        PyObject *prefix = PyTuple_GET_ITEM(prefixes, k);
        if (!lane_resolve(lb, PyTuple_GET_ITEM(names, k), &c->key[k]) || !is_ascii_str(prefix))
            return NULL;     /* a prefix the object path may never write (its value absent): declined all the same */
        c->pp[k] = (const char *)PyUnicode_1BYTE_DATA(prefix);
        c->pl[k] = PyUnicode_GET_LENGTH(prefix);
    }
    c->n = (int)PyTuple_GET_SIZE(names);
    c->bad = 0;
    return c;
}

static int lane_pairs(char *buf, size_t cap, size_t *len, char dch, PyObject *tab, lane_batch *lb, const lane_ev *le,
                      int extra, Py_ssize_t *n)
{
    const lane_tab *c = lane_tab_of(lb, tab, extra);
    if (!c)
        return 0;
    for (int k = 0; k < c->n; k++) {
        lval v;
        if (extra) {
            if (c->key[k].xid < 0)
                continue;
            v = le->x[c->key[k].xid];
        } else
            lane_val(&c->key[k], le, &v);
        if (v.kind == LV_ABSENT || v.kind == LV_NONE)
            continue;
        const char *sp;
        Py_ssize_t sn;
        char nb[24];
        int r = lv_str(&v, &sp, &sn);
        if (r < 0)
            return 0;
        if (r == 1) {
            if (sn == 0)
                continue;
        } else if (v.kind == LV_INT) {
            sp = nb;
            sn = put_long(nb, v.i);
        } else if (v.kind == LV_OBJ && PyLong_CheckExact(v.o)) {
            int ovf;
            long lv = PyLong_AsLongAndOverflow(v.o, &ovf);
            if (ovf || (lv == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return 0;
            }
            sp = nb;
            sn = put_long(nb, lv);
        } else
            return 0;
        Py_ssize_t pl = c->pl[k];
        if (*len + 1 + pl + sn > cap)
            return 0;
        buf[(*len)++] = dch;
        memcpy(buf + *len, c->pp[k], pl);
        *len += pl;
        memcpy(buf + *len, sp, sn);
        *len += sn;
        (*n)++;
    }
    return 1;
}

static PyObject *lane_leef(lane_batch *lb, const lane_ev *le, PyObject *spec)
{
    lval v;
    PyObject *table = PyTuple_GET_ITEM(spec, 0), *ps = PyTuple_GET_ITEM(spec, 1), *lheads = PyTuple_GET_ITEM(spec, 2),
             *hostopt = PyTuple_GET_ITEM(spec, 3);     /* spec[4], the app name, is for an empty APP-NAME */
    /* sb_leef: the profile of fields["vendor"] */
    if (!lane_get(lb, le, k_vendor3, &v))
        Py_RETURN_NONE;
    if (v.kind != LV_ABSENT && v.kind != LV_NONE) {
        if (v.kind != LV_OBJ || !PyUnicode_CheckExact(v.o))
            Py_RETURN_NONE;
        PyObject *hit = PyDict_GetItemWithError(table, v.o);
        if (hit)
            ps = hit;
        else if (PyErr_Occurred())
            return NULL;
    }
    if (!PyTuple_CheckExact(ps) || PyTuple_GET_SIZE(ps) != 3 || !PyTuple_CheckExact(PyTuple_GET_ITEM(ps, 0)))
        Py_RETURN_NONE;
    PyObject *plan = PyTuple_GET_ITEM(ps, 0), *profile = PyTuple_GET_ITEM(ps, 1), *eid_field = PyTuple_GET_ITEM(ps, 2);
    if (PyTuple_GET_SIZE(plan) != 7)
        Py_RETURN_NONE;
    PyObject *d = PyTuple_GET_ITEM(plan, 0), *sev_dt = PyTuple_GET_ITEM(plan, 1), *dt_tail = PyTuple_GET_ITEM(plan, 3),
             *common = PyTuple_GET_ITEM(plan, 4), *extra_keys = PyTuple_GET_ITEM(plan, 5),
             *cat_field = PyTuple_GET_ITEM(plan, 6);
    if (!is_ascii_str(d) || PyUnicode_GET_LENGTH(d) != 1 || !PyDict_CheckExact(sev_dt) || !is_ascii_str(dt_tail)
        || !PyTuple_Check(common) || !PyTuple_Check(extra_keys))
        Py_RETURN_NONE;
    char dch = (char)PyUnicode_1BYTE_DATA(d)[0];
    /* the band and its text */
    if (!lane_get(lb, le, k_vendor_sev, &v) || v.kind != LV_OBJ || !PyUnicode_CheckExact(v.o))
        Py_RETURN_NONE;
    PyObject *band = v.o, *sevtxt = PyDict_GetItemWithError(sev_dt, band);
    if (!sevtxt)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (!is_ascii_str(sevtxt))
        Py_RETURN_NONE;
    /* the time */
    char stamp[24];
    if (!lane_get(lb, le, k_occ, &v))
        Py_RETURN_NONE;
    if (v.kind == LV_FLOAT ? !stamp23d(v.d, stamp) : (v.kind != LV_OBJ || !stamp23(v.o, stamp)))
        Py_RETURN_NONE;
    /* cat: fields[cat_field], else fields["kind"] when that is None or empty */
    int has_cat = 0;
    const char *cp = NULL;
    Py_ssize_t cn = 0;
    if (!lane_get(lb, le, cat_field, &v))
        Py_RETURN_NONE;
    if (v.kind != LV_ABSENT && v.kind != LV_NONE) {
        if (lv_str(&v, &cp, &cn) != 1)
            Py_RETURN_NONE;
        has_cat = 1;
    }
    if (!has_cat || cn == 0) {
        if (!lane_get(lb, le, k_kind, &v))
            Py_RETURN_NONE;
        has_cat = 0;
        if (v.kind != LV_ABSENT && v.kind != LV_NONE) {
            if (lv_str(&v, &cp, &cn) != 1)
                Py_RETURN_NONE;
            has_cat = 1;
        }
    }
    /* render_common: no triage, extra, the event id, the header's fields */
    if (!lane_get(lb, le, k_triage, &v) || (v.kind != LV_ABSENT && v.kind != LV_NONE))
        Py_RETURN_NONE;
    if (!lane_get(lb, le, k_extra2, &v) || v.kind != LV_EXTRA)
        Py_RETURN_NONE;
    int use_extra = le->nx > 0;
    if (eid_field != Py_None && !PyUnicode_CheckExact(eid_field))
        Py_RETURN_NONE;
    lval e = {LV_ABSENT};
    if (use_extra && eid_field != Py_None && PyUnicode_GET_LENGTH(eid_field) && !lane_xget(lb, le, eid_field, &e))
        Py_RETURN_NONE;
    PyObject *chain[2] = {k_event2, k_kind};
    for (int k = 0; k < 2 && !lane_some(&e); k++)
        if (!lane_get(lb, le, chain[k], &e))
            Py_RETURN_NONE;
    PyObject *event_id;             /* a new reference */
    if (lane_some(&e)) {
        const char *ep;
        Py_ssize_t en;
        if (lv_str(&e, &ep, &en) != 1)
            Py_RETURN_NONE;
        if (!(event_id = lv_obj(&e)))
            return NULL;
    } else
        event_id = Py_NewRef(truthy_str(le->msgid) ? le->msgid : truthy_str(le->app) ? le->app : s_syslog);
    PyObject *host = hostopt, *app = le->app, *msgid;
    int orig = PyUnicode_Compare(hostopt, s_original);
    if (orig == -1 && PyErr_Occurred())
        goto error;
    if (orig == 0) {
        if (truthy_str(le->host))
            host = le->host;
        else {
            if (!lane_get(lb, le, k_host, &v) || v.kind != LV_OBJ || !truthy_str(v.o))
                goto none;
            host = v.o;
        }
    }
    if (!truthy_str(app))
        goto none;      /* the lane's APP-NAME is rx_app's: never empty */
    if (!lane_get(lb, le, k_event2, &v))
        goto none;
    if (v.kind == LV_OBJ && truthy_str(v.o))
        msgid = v.o;
    else if (v.kind == LV_ABSENT || v.kind == LV_NONE || (v.kind == LV_OBJ && PyUnicode_CheckExact(v.o)))
        msgid = le->msgid;
    else
        goto none;
    /* the header: the batch's last one, else lheads */
    PyObject *fac = PyLong_FromLong(le->pri >> 3);
    if (!fac)
        goto error;
    PyObject *kv[8] = {fac, band, host, app, msgid, profile, event_id, lheads};
    size_t hs = (lane_addr_hash(host) ^ lane_addr_hash(msgid) ^ lane_addr_hash(event_id) ^ (size_t)(le->pri >> 3)
                 ^ lane_addr_hash(band) ^ lane_addr_hash(lheads)) & (LANE_HEADS - 1);
    int same = lb->hhit[hs] != NULL;
    for (int k = 0; k < 8 && same; k++)
        same = lb->hkey[hs][k] == kv[k];
    if (!same) {
        PyObject *key = PyTuple_Pack(7, fac, band, host, app, msgid, profile, event_id);
        if (!key) {
            Py_DECREF(fac);
            goto error;
        }
        PyObject *hit = PyDict_GetItemWithError(lheads, key);
        Py_DECREF(key);
        if (!hit) {
            Py_DECREF(fac);
            if (PyErr_Occurred())
                goto error;
            goto none;
        }
        for (int k = 0; k < 8; k++)
            Py_XSETREF(lb->hkey[hs][k], Py_NewRef(kv[k]));
        Py_XSETREF(lb->hhit[hs], Py_NewRef(hit));
    }
    Py_DECREF(fac);
    PyObject *hit = lb->hhit[hs];
    if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 3 || !PyLong_CheckExact(PyTuple_GET_ITEM(hit, 2))
        || PyLong_AsLong(PyTuple_GET_ITEM(hit, 2)) != 0)
        goto none;
    PyObject *pre = PyTuple_GET_ITEM(hit, 0), *rest = PyTuple_GET_ITEM(hit, 1);
    if (!is_ascii_str(pre) || !is_ascii_str(rest))
        goto none;
    /* the attributes */
    char buf[16384];
    size_t len = 0;
    Py_ssize_t npairs = 0, ndel = 2;
#define PUT(p_, n_) do { size_t n__ = (size_t)(n_); if (len + n__ > sizeof buf) goto none; \
        memcpy(buf + len, (p_), n__); len += n__; } while (0)
    if (has_cat) {
        PUT("cat=", 4);
        PUT(cp, cn);
        PUT(&dch, 1);
        ndel = 3;
    }
    PUT(PyUnicode_1BYTE_DATA(sevtxt), PyUnicode_GET_LENGTH(sevtxt));
    PUT(stamp, 23);
    PUT("+0000", 5);
    PUT(PyUnicode_1BYTE_DATA(dt_tail), PyUnicode_GET_LENGTH(dt_tail));
#undef PUT
    if (!lane_pairs(buf, sizeof buf, &len, dch, common, lb, le, 0, &npairs)
        || (use_extra && !lane_pairs(buf, sizeof buf, &len, dch, extra_keys, lb, le, 1, &npairs)))
        goto none;
    Py_DECREF(event_id);
    return leef_finish(buf, len, dch, npairs + ndel, pre, stamp, rest);
none:
    Py_DECREF(event_id);
    Py_RETURN_NONE;
error:
    Py_DECREF(event_id);
    return NULL;
}

/* ---- one message through the lane: 1 staged, 0 not covered (nothing done: the object path
 * does it), -1 error after its routes were counted, as sb_event fails */
static int lane_event(PyObject *raw, PyObject *rx_app, lane_batch *lb, PyObject *routes, Py_ssize_t nr,
                      long long *rcount, long long *unrouted, unsigned long long *mkeys, PyObject **mvals, int *nm,
                      int *mnext, PyObject *for_mask)
{
    lane_ev le;
    le.host = le.app = le.msgid = le.status = NULL;
    int r = lane_read((const unsigned char *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), rx_app, lb, &le);
    if (r <= 0) {
        if (r < 0)
            PyErr_Clear();          /* the object path meets it again and does what it does */
        lane_release(&le);
        return 0;
    }
    unsigned long long mask = 0;
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *rt = PyTuple_GET_ITEM(routes, i);
        int t = lane_eval(PyTuple_GET_ITEM(rt, 2), lb, &le);
        if (t < 0) {
            PyErr_Clear();
            lane_release(&le);
            return 0;
        }
        if (t) {
            mask |= 1ULL << i;
            if (PyTuple_GET_ITEM(rt, 1) == Py_True)
                break;
        }
    }
    if (!mask) {
        lane_release(&le);
        (*unrouted)++;
        return 1;
    }
    PyObject *payload = NULL;
    PyObject *entry = sb_entry(mask, mkeys, mvals, nm, mnext, for_mask);
    if (entry) {
        PyObject *single = PyTuple_GET_ITEM(entry, 2);
        if (single == Py_None || PyTuple_GET_ITEM(single, 4) == Py_None) {
            lane_release(&le);
            return 0;
        }
        payload = lane_leef(lb, &le, PyTuple_GET_ITEM(single, 4));
        if (!payload || payload == Py_None) {
            PyErr_Clear();
            Py_XDECREF(payload);
            lane_release(&le);
            return 0;
        }
    }
    lane_release(&le);
    for (Py_ssize_t i = 0; i < nr; i++)
        if (mask >> i & 1)
            rcount[i]++;
    if (!entry)
        return -1;
    PyObject *single = PyTuple_GET_ITEM(entry, 2);
    int rc = PyList_Append(PyTuple_GET_ITEM(single, 1), payload);
    Py_DECREF(payload);
    if (rc < 0 || PyList_Append(PyTuple_GET_ITEM(single, 2), PyTuple_GET_ITEM(entry, 1)) < 0)
        return -1;
    return 1;
}

static PyObject *py_stage_batch(PyObject *self, PyObject *args)
{
    PyObject *items, *received, *source, *fallback, *plan;
    int lenient;
    if (!PyArg_ParseTuple(args, "OOOOpO!", &items, &received, &source, &fallback, &lenient, &PyTuple_Type, &plan))
        return NULL;
    /* items: [(raw, peer), ...], or (peer, [raw, ...]) for one sender's messages (a TCP read) */
    PyObject *one_peer = NULL, *frames = items;
    if (PyTuple_CheckExact(items) && PyTuple_GET_SIZE(items) == 2
        && (PyList_CheckExact(PyTuple_GET_ITEM(items, 1)) || PyTuple_CheckExact(PyTuple_GET_ITEM(items, 1)))) {
        one_peer = PyTuple_GET_ITEM(items, 0);
        frames = PyTuple_GET_ITEM(items, 1);
    } else if (!PyList_CheckExact(items))
        return PyErr_Format(PyExc_TypeError, "stage_batch: items must be a list of (raw, peer) pairs or (peer, [raw])");
    if (!event_type || !rx_ready)
        return PyErr_Format(PyExc_RuntimeError, "configure() and rx_configure() first");
    if (!k_vendor3 && !(k_vendor3 = PyUnicode_InternFromString("vendor")))
        return NULL;
    if (render_keys() < 0)
        return NULL;
    if (PyTuple_GET_SIZE(plan) != 10)
        return PyErr_Format(PyExc_TypeError, "stage_batch: a plan of 10 expected");
    PyObject *normalise = PyTuple_GET_ITEM(plan, 0), *rx_app = PyTuple_GET_ITEM(plan, 1),
             *raw_format = PyTuple_GET_ITEM(plan, 2), *count_run = PyTuple_GET_ITEM(plan, 3),
             *slow = PyTuple_GET_ITEM(plan, 4), *routes = PyTuple_GET_ITEM(plan, 5),
             *for_mask = PyTuple_GET_ITEM(plan, 6), *multi = PyTuple_GET_ITEM(plan, 7),
             *dead = PyTuple_GET_ITEM(plan, 8), *done = PyTuple_GET_ITEM(plan, 9);
    if (!PyTuple_CheckExact(routes) || PyTuple_GET_SIZE(routes) > SB_ROUTES)
        return PyErr_Format(PyExc_TypeError, "stage_batch: at most %d routes, as a tuple", SB_ROUTES);
    Py_ssize_t nr = PyTuple_GET_SIZE(routes);
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *rt = PyTuple_GET_ITEM(routes, i);
        if (!PyTuple_CheckExact(rt) || PyTuple_GET_SIZE(rt) != 3 || !PyBool_Check(PyTuple_GET_ITEM(rt, 1)))
            return PyErr_Format(PyExc_TypeError, "stage_batch: routes[%zd] must be (match, final, program)", i);
    }
    /* the lane (see lane_event) for this batch: strict parsing, every route a program it evaluates */
    lane_batch lb;
    memset(&lb, 0, sizeof lb);
    int lane_on = !lenient && rx_small_canonical && is_ascii_str(rx_app) && is_ascii_str(rx_sd_id);
    if (lane_on && (lane_on = lane_pnames(&lb)) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < nr && lane_on; i++)
        lane_on = lane_prog_ok(PyTuple_GET_ITEM(PyTuple_GET_ITEM(routes, i), 2), 0);
    long long rcount[SB_ROUTES] = {0}, unrouted = 0;
    unsigned long long mkeys[SB_MASKS];
    PyObject *mvals[SB_MASKS] = {NULL};
    int nm = 0, mnext = 0, failed = 0;
    PyObject *run_ev = NULL;           /* the first event of the current run of counted events */
    Py_ssize_t run_n = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(frames);     /* a list or a tuple (checked) */
    for (Py_ssize_t k = 0; k < n && !failed; k++) {
        /* the item is held: a callback may change the list */
        PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(frames, k));
        PyObject *ev = NULL, *raw = item, *peer = one_peer;
        if (!one_peer) {
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                Py_DECREF(item);
                PyErr_Format(PyExc_TypeError, "items[%zd]: a (raw, peer) pair expected", k);
                failed = 1;
                break;
            }
            raw = PyTuple_GET_ITEM(item, 0);
            peer = PyTuple_GET_ITEM(item, 1);
        }
        int r = 0;
        if (lane_on && run_ev && SLOT(run_ev, S_FORMAT) == format_value && PyBytes_CheckExact(raw)) {
            r = lane_event(raw, rx_app, &lb, routes, nr, rcount, &unrouted, mkeys, mvals, &nm, &mnext, for_mask);
            if (r != 0) {       /* one more of the run, as the object path counts it first */
                Py_DECREF(item);
                run_n++;
                lb.taken++;
                if (r < 0) {
                    failed = 1;
                    break;
                }
                continue;
            }
            lb.declined++;
        }
        if (!lenient && PyBytes_CheckExact(raw))
            r = parse_frame(raw, (const unsigned char *)PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw),
                            received, peer, source, &ev);
        if (r == 0)
            ev = PyObject_CallFunctionObjArgs(fallback, raw, peer, NULL);
        Py_DECREF(item);
        if (r < 0 || ev == NULL) {
            failed = 1;
            break;
        }
        /* counted: runs of events of the parsed format, any other one by itself */
        PyObject *fmt = SLOT(ev, S_FORMAT);
        if (run_ev && fmt == format_value && SLOT(run_ev, S_FORMAT) == fmt)
            run_n++;
        else {
            if (run_ev && sb_count(count_run, &run_ev, run_n) < 0)
                goto fail_ev;
            run_ev = Py_NewRef(ev);
            run_n = 1;
        }
        /* normalised: the covered SigmaIncident shape here, anything else by parsers.normalise */
        int done_n = 0;
        PyObject *app = SLOT(ev, S_APP_NAME);
        if (fmt != raw_format && app && PyUnicode_CheckExact(app) && PyUnicode_Compare(app, rx_app) == 0) {
            int rr = rx_normalise_impl(ev);
            if (rr < 0)
                PyErr_Clear();      /* Python runs it again and notes the failure as it does */
            done_n = rr == 1;
        }
        if (!done_n) {
            PyObject *res = PyObject_CallOneArg(normalise, ev);
            if (!res)
                goto fail_ev;
            Py_DECREF(res);
        }
        PyObject *m = SLOT(ev, S_META);
        if (m && m != Py_None) {
            PyObject *res = PyObject_CallOneArg(slow, ev);
            if (!res)
                goto fail_ev;
            Py_DECREF(res);
        } else if (sb_event(ev, routes, nr, rcount, &unrouted, mkeys, mvals, &nm, &mnext, for_mask, multi, dead) < 0)
            goto fail_ev;
        Py_DECREF(ev);
        continue;
    fail_ev:
        Py_DECREF(ev);
        failed = 1;
    }
    /* the counters, even after an error (what was counted happened) */
    PyObject *et = NULL, *ex = NULL, *tb = NULL;
    if (failed)
        PyErr_Fetch(&et, &ex, &tb);
    int cfail = 0;
    if (run_ev && sb_count(count_run, &run_ev, run_n) < 0)
        cfail = 1;
    if (!cfail) {
        PyObject *counts = PyTuple_New(nr);
        PyObject *un = counts ? PyLong_FromLongLong(unrouted) : NULL;
        for (Py_ssize_t i = 0; un && i < nr; i++) {
            PyObject *c = PyLong_FromLongLong(rcount[i]);
            if (!c) {
                Py_CLEAR(un);
                break;
            }
            PyTuple_SET_ITEM(counts, i, c);
        }
        PyObject *res = un ? PyObject_CallFunctionObjArgs(done, counts, un, NULL) : NULL;
        Py_XDECREF(counts);
        Py_XDECREF(un);
        if (res)
            Py_DECREF(res);
        else
            cfail = 1;
    }
    for (int j = 0; j < nm; j++)
        Py_XDECREF(mvals[j]);
    for (int j = 0; j < LANE_HEADS; j++) {
        for (int k = 0; k < 8; k++)
            Py_XDECREF(lb.hkey[j][k]);
        Py_XDECREF(lb.hhit[j]);
    }
    for (int t = 0; t < lb.ntabs; t++)
        Py_XDECREF(lb.tabs[t].tab);
    lane_taken_total += lb.taken;
    lane_declined_total += lb.declined;
    if (failed) {
        if (cfail)
            PyErr_Clear();
        PyErr_Restore(et, ex, tb);
        return NULL;
    }
    if (cfail)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_lane_stats(PyObject *self, PyObject *noargs)
{
    return Py_BuildValue("(nn)", lane_taken_total, lane_declined_total);
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(Event, format_value): once, before parsing"},
    {"parse_one", py_parse_one, METH_O, "parse_one(raw) -> Event, or None when the frame is not covered"},
    {"parse_items", py_parse_items, METH_VARARGS,
     "parse_items(items, received, source, fallback) -> [Event]: see the module comment"},
    {"lf_frames", py_lf_frames, METH_VARARGS,
     "lf_frames(buf, pos, out, max_frame, trailer, nul) -> pos: parsers.framing's simple LF frames"},
    {"leef_line", py_leef_line, METH_VARARGS,
     "leef_line(ev, f, plan, lheads, profile, event_id_field, hostname, app_name) -> bytes or None"},
    {"cef_line", py_cef_line, METH_VARARGS,
     "cef_line(ev, f, plan, cheads, hcache, profile, event_id_field, hostname, app_name) -> bytes or None"},
    {"leef_join", py_leef_join, METH_VARARGS,
     "leef_join(first, d, f, common, extra, extra_keys) -> (body, n) or None: formats.render's LEEF pairs"},
    {"frame_spans", py_frame_spans, METH_VARARGS,
     "frame_spans(spans, octet) -> bytes or None: formats.syslog.frame_batch for [(buf, offsets)] spans"},
    {"rx_configure", rx_configure, METH_O, "rx_configure(dict): parsers.rhythmx's names and tables, once"},
    {"flat_json", py_flat_json, METH_O,
     "flat_json(str) -> orjson.loads(str) for a flat object of plain strings and integers, else None"},
    {"rx_normalise", py_rx_normalise, METH_O,
     "rx_normalise(ev) -> bool: parsers.rhythmx.normalise(ev) for the covered shape, else False (untouched)"},
    {"rule_eval", py_rule_eval, METH_VARARGS, "rule_eval(program, ev) -> bool: relay.rules' program on ev"},
    {"stage_batch", py_stage_batch, METH_VARARGS,
     "stage_batch(items, received, source, fallback, lenient, plan) -> None: relay.pipeline's stage_rows"},
    {"lane_stats", py_lane_stats, METH_NOARGS,
     "lane_stats() -> (taken, declined): messages stage_batch's lane staged, and those it handed to the object path"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "parsers._speedups",
    "Native accelerator of parsers.detect.parse for valid RFC 5424 (see parsers/native.py).", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&moddef);
    /* parsers.native.ABI: raise both with every change of what the Python code hands over */
    if (m && PyModule_AddIntConstant(m, "ABI", 3) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
