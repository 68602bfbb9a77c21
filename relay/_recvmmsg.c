/* relay._recvmmsg: a batch receive for the UDP source (issue 19), Linux recvmmsg(2).
 *
 *   recvmmsg(fd, count, size) -> [(length, data, address), ...]
 *       Up to ``count`` datagrams in one system call on the non-blocking socket ``fd``, each
 *       read into a buffer of ``size`` bytes with MSG_TRUNC, so ``length`` is the datagram's
 *       real length (as socket.recvfrom_into(buf, 0, MSG_TRUNC) returns it) and ``data`` its
 *       first min(length, size) bytes.  ``address`` is the sender's raw sockaddr as bytes (a
 *       cheap dict key); sockaddr(address) turns it into the tuple socket.recvfrom gives.
 *       Nothing waiting: BlockingIOError, as recvfrom_into raises; other errors: OSError.
 *   sockaddr(address) -> (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6,
 *       host from getnameinfo(NI_NUMERICHOST) as the socket module makes it.
 *   recv_items(...): the UDP source's whole receive loop for one call (see below).
 *
 * No Python object per datagram but the result: the buffers are one block reused per call.
 * The GIL is released around the system call.  relay/sources/udp.py falls back to
 * recvfrom_into when this module is not built or RELAY_PURE=1 is set.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define _GNU_SOURCE 1
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netdb.h>
#include <errno.h>
#include <string.h>

#define MAXCOUNT 1024

static char *pool = NULL;
static size_t pool_size = 0;

/* one call's headers (on the caller's stack); the datagrams' bytes are in the pool */
struct batch {
    struct mmsghdr msgs[MAXCOUNT];
    struct iovec iov[MAXCOUNT];
    struct sockaddr_storage addrs[MAXCOUNT];
};

/* one recvmmsg(2) call into the pool: -> datagrams read, or -1 with an exception set */
static int receive(int fd, int count, Py_ssize_t size, struct batch *bt)
{
    struct mmsghdr *msgs = bt->msgs;
    struct iovec *iov = bt->iov;
    struct sockaddr_storage *addrs = bt->addrs;
    if (count < 1 || count > MAXCOUNT || size < 1 || size > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "count 1..%d and size 1..1 MiB expected", MAXCOUNT);
        return -1;
    }
    size_t need = (size_t)count * (size_t)size;
    if (need > pool_size) {
        char *p = PyMem_RawRealloc(pool, need);
        if (!p) {
            PyErr_NoMemory();
            return -1;
        }
        pool = p;
        pool_size = need;
    }
    memset(msgs, 0, sizeof(struct mmsghdr) * count);
    for (int k = 0; k < count; k++) {
        iov[k].iov_base = pool + (size_t)k * size;
        iov[k].iov_len = size;
        msgs[k].msg_hdr.msg_iov = &iov[k];
        msgs[k].msg_hdr.msg_iovlen = 1;
        msgs[k].msg_hdr.msg_name = &addrs[k];
        msgs[k].msg_hdr.msg_namelen = sizeof(addrs[k]);
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    do {
        got = recvmmsg(fd, msgs, count, MSG_DONTWAIT | MSG_TRUNC, NULL);
    } while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (got < 0)
        PyErr_SetFromErrno(PyExc_OSError);          /* EAGAIN -> BlockingIOError */
    return got;
}

static PyObject *py_recvmmsg(PyObject *self, PyObject *args)
{
    int fd, count;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "iin", &fd, &count, &size))
        return NULL;
    struct batch bt;
    int got = receive(fd, count, size, &bt);
    if (got < 0)
        return NULL;
    struct mmsghdr *msgs = bt.msgs;
    struct sockaddr_storage *addrs = bt.addrs;
    PyObject *out = PyList_New(got);
    if (!out)
        return NULL;
    for (int k = 0; k < got; k++) {
        Py_ssize_t n = msgs[k].msg_len;
        Py_ssize_t have = n < size ? n : size;
        PyObject *t = Py_BuildValue("(ny#y#)", n, pool + (size_t)k * size, have, (char *)&addrs[k],
                                    (Py_ssize_t)msgs[k].msg_hdr.msg_namelen);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, t);
    }
    return out;
}

/* recv_items(fd, count, size, max_size, drop_big, peers, resolve, items)
 *     -> (read, not allowed, empty, oversize dropped, oversize truncated)
 * relay/sources/udp.py's receive loop for one recvmmsg(2) call, with no Python frame per
 * datagram: each sender's peer is ``peers[raw sockaddr bytes]`` (else ``resolve(raw)``, which
 * adds it; None: not allowed, dropped), one trailing LF or NUL is stripped, empty datagrams
 * are dropped, longer than ``max_size`` ones dropped (``drop_big``) or cut, and the rest are
 * appended to ``items`` as (bytes, peer).  ``size`` is max_size + 1 (see UdpSource). */
static PyObject *py_recv_items(PyObject *self, PyObject *args)
{
    int fd, count, drop_big;
    Py_ssize_t size, mx;
    PyObject *peers, *resolve, *items;
    if (!PyArg_ParseTuple(args, "iinnpO!OO!", &fd, &count, &size, &mx, &drop_big, &PyDict_Type, &peers, &resolve,
                          &PyList_Type, &items))
        return NULL;
    if (mx < 0 || mx + 1 > size)
        return PyErr_Format(PyExc_ValueError, "size must be at least max_size + 1");
    struct batch bt;
    int got = receive(fd, count, size, &bt);
    if (got < 0)
        return NULL;
    struct mmsghdr *msgs = bt.msgs;
    struct sockaddr_storage *addrs = bt.addrs;
    long n_allow = 0, n_empty = 0, n_big = 0, n_trunc = 0;
    PyObject *last_key = NULL, *last_peer = NULL;     /* the previous datagram's sender */
    for (int k = 0; k < got; k++) {
        const char *a = (const char *)&addrs[k];
        Py_ssize_t alen = (Py_ssize_t)msgs[k].msg_hdr.msg_namelen;
        if (!last_key || PyBytes_GET_SIZE(last_key) != alen || memcmp(PyBytes_AS_STRING(last_key), a, alen) != 0) {
            PyObject *key = PyBytes_FromStringAndSize(a, alen);
            if (!key)
                goto error;
            PyObject *peer = PyDict_GetItemWithError(peers, key);
            if (peer)
                Py_INCREF(peer);
            else if (PyErr_Occurred() || !(peer = PyObject_CallOneArg(resolve, key))) {
                Py_DECREF(key);
                goto error;
            }
            Py_XSETREF(last_key, key);
            Py_XSETREF(last_peer, peer);
        }
        if (last_peer == Py_None) {
            n_allow++;
            continue;
        }
        Py_ssize_t n = msgs[k].msg_len;
        const char *d = pool + (size_t)k * size;
        if (n && n <= mx + 1 && (d[n - 1] == '\n' || d[n - 1] == '\0'))
            n--;
        if (n > mx) {
            if (drop_big) {
                n_big++;
                continue;
            }
            n_trunc++;
            n = mx;
        } else if (!n) {
            n_empty++;
            continue;
        }
        PyObject *b = PyBytes_FromStringAndSize(d, n);
        PyObject *t = b ? PyTuple_Pack(2, b, last_peer) : NULL;
        Py_XDECREF(b);
        if (!t || PyList_Append(items, t) < 0) {
            Py_XDECREF(t);
            goto error;
        }
        Py_DECREF(t);
    }
    Py_XDECREF(last_key);
    Py_XDECREF(last_peer);
    return Py_BuildValue("(illll)", got, n_allow, n_empty, n_big, n_trunc);
error:
    Py_XDECREF(last_key);
    Py_XDECREF(last_peer);
    return NULL;
}

static PyObject *py_sockaddr(PyObject *self, PyObject *arg)
{
    char *p;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &p, &len) < 0)
        return NULL;
    struct sockaddr_storage ss;
    if (len < (Py_ssize_t)sizeof(sa_family_t) || len > (Py_ssize_t)sizeof(ss))
        return PyErr_Format(PyExc_ValueError, "not a socket address (%zd bytes)", len);
    memcpy(&ss, p, len);
    char host[NI_MAXHOST];
    int r = getnameinfo((struct sockaddr *)&ss, (socklen_t)len, host, sizeof(host), NULL, 0, NI_NUMERICHOST);
    if (r != 0)
        return PyErr_Format(PyExc_OSError, "getnameinfo: %s", gai_strerror(r));
    if (ss.ss_family == AF_INET && len >= (Py_ssize_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (ss.ss_family == AF_INET6 && len >= (Py_ssize_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    return PyErr_Format(PyExc_ValueError, "address family %d not supported", (int)ss.ss_family);
}

static PyMethodDef methods[] = {
    {"recvmmsg", py_recvmmsg, METH_VARARGS, "recvmmsg(fd, count, size) -> [(length, data, address)]"},
    {"sockaddr", py_sockaddr, METH_O, "sockaddr(address bytes) -> the socket module's address tuple"},
    {"recv_items", py_recv_items, METH_VARARGS,
     "recv_items(fd, count, size, max_size, drop_big, peers, resolve, items) -> (read, not allowed, empty, "
     "oversize dropped, oversize truncated)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "relay._recvmmsg", "recvmmsg(2) for the UDP source (see relay/sources/udp.py).", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__recvmmsg(void)
{
    return PyModule_Create(&moddef);
}
