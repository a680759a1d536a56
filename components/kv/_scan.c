/* _scan: where the run of complete, well-formed RESP commands at a position ends.
 *
 * The KV service parses requests with hiredis, which trusts every length it
 * reads.  Before hiredis sees a byte, scan() finds the longest run of complete
 * commands starting at `pos` that are arrays of 1..max_args bulk strings of at
 * most max_bulk bytes each, spelled canonically:
 *
 *     *<n>\r\n  then n times  $<len>\r\n<len bytes>\r\n
 *
 * with n and len in decimal without sign or leading zeros ("$0" is allowed).
 * It returns the offset just after the last such command (pos itself if the
 * first command is incomplete or anything else: the Python slow path takes it
 * from there, with Redis's error messages).  So hiredis only ever gets whole,
 * bounded commands, and never holds a partial one.
 *
 * It reads the buffer only; it allocates nothing and holds no state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The decimal at p (up to end), ending in \r\n; -1 if malformed or incomplete.
 * *next is set past the \r\n.  At most 19 digits, so it cannot overflow. */
static long long
read_decimal(const unsigned char *p, const unsigned char *end, const unsigned char **next)
{
    long long value = 0;
    const unsigned char *start = p;
    while (p < end && *p >= '0' && *p <= '9') {
        if (p - start >= 18)
            return -1;
        value = value * 10 + (*p - '0');
        p++;
    }
    if (p == start || (*start == '0' && p - start > 1))
        return -1;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
        return -1;
    *next = p + 2;
    return value;
}

static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan(data, pos, max_args, max_bulk)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    long long max_args = PyLong_AsLongLong(args[2]);
    long long max_bulk = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos is out of the buffer");
        return NULL;
    }
    const unsigned char *base = (const unsigned char *)view.buf;
    const unsigned char *end = base + view.len;
    const unsigned char *done = base + pos; /* after the last complete command */
    const unsigned char *p = done;
    while (p < end && *p == '*') {
        long long argc = read_decimal(p + 1, end, &p);
        if (argc < 1 || argc > max_args)
            break;
        long long i;
        for (i = 0; i < argc; i++) {
            if (p >= end || *p != '$')
                break;
            long long len = read_decimal(p + 1, end, &p);
            if (len < 0 || len > max_bulk || end - p < len + 2)
                break;
            p += len;
            if (p[0] != '\r' || p[1] != '\n')
                break;
            p += 2;
        }
        if (i < argc)
            break;
        done = p;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(done - base);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, pos, max_args, max_bulk) -> the offset after the run of complete commands at pos"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "RESP framing scanner for the KV service.", -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
