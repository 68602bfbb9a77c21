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
#include <stdlib.h>

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

/* a small cache of short ASCII strings (SD-IDs, PARAM-NAMEs, hostnames, app names...) */
#define SCACHE 256
typedef struct { Py_ssize_t len; char buf[48]; PyObject *obj; } centry;
static centry scache[SCACHE];

static PyObject *cached_str(const char *p, Py_ssize_t len)
{
    if (len > 47)
        return PyUnicode_DecodeLatin1(p, len, NULL);
    unsigned h = 2166136261u;
    for (Py_ssize_t k = 0; k < len; k++)
        h = (h ^ (unsigned char)p[k]) * 16777619u;
    centry *e = &scache[h & (SCACHE - 1)];
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

#define SET(ev, s, v) (*(PyObject **)((char *)(ev) + slot_off[s]) = (v))

/* 1: parsed (*out = new Event), 0: fall back, -1: error (exception set) */
static int parse_frame(PyObject *raw, const unsigned char *p, Py_ssize_t n, PyObject *received,
                       PyObject *peer, PyObject *source, PyObject **out)
{
    Py_ssize_t i = 0;
    PyObject *o[S_COUNT] = {0};
    int rc = 0;
    /* ---- PRI */
    if (n < 4 || p[0] != '<')
        return 0;
    i = 1;
    int pri = 0, nd = 0;
    while (i < n && is_digit(p[i]) && nd < 4) { pri = pri * 10 + (p[i] - '0'); i++; nd++; }
    if (nd == 0 || nd > 3 || i >= n || p[i] != '>' || (nd > 1 && p[1] == '0') || pri > 191)
        return 0;
    i++;
    /* ---- VERSION */
    int ver = 0; nd = 0;
    Py_ssize_t v0 = i;
    while (i < n && is_digit(p[i]) && nd < 4) { ver = ver * 10 + (p[i] - '0'); i++; nd++; }
    if (nd == 0 || nd > 3 || p[v0] == '0' || i >= n || p[i] != ' ')
        return 0;
    i++;
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
            char fb[16];
            memcpy(fb, p + f0, f1 - f0);
            fb[f1 - f0] = 0;
            /* float() of the same text: locale-independent, correctly rounded */
            frac = PyOS_string_to_double(fb, NULL, NULL);
            if (frac == -1.0 && PyErr_Occurred())
                return -1;
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
    static const Py_ssize_t lim[4] = {255, 48, 128, 32};
    Py_ssize_t fs[4], fl[4];
    for (int f = 0; f < 4; f++) {
        Py_ssize_t l = field(p, n, i, lim[f]);
        if (l < 0)
            return 0;
        fs[f] = i;
        fl[f] = l;
        i += l + 1;
    }
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
                PyObject *val = name ? PyUnicode_DecodeUTF8((const char *)p + q0, q1 - q0, "surrogateescape") : NULL;
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
    o[S_PROCID] = field_obj(p + fs[2], fl[2]);
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

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, "configure(Event, format_value): once, before parsing"},
    {"parse_one", py_parse_one, METH_O, "parse_one(raw) -> Event, or None when the frame is not covered"},
    {"parse_items", py_parse_items, METH_VARARGS,
     "parse_items(items, received, source, fallback) -> [Event]: see the module comment"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "parsers._speedups",
    "Native accelerator of parsers.detect.parse for valid RFC 5424 (see parsers/native.py).", -1, methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&moddef);
    if (m && PyModule_AddIntConstant(m, "ABI", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
