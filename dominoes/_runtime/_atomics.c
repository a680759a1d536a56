/*
 * dominoes._runtime._atomics: cross-process atomic access to aligned u64 words.
 *
 * AtomicWords(buffer) implements dominoes._core._words.Words over any writable,
 * contiguous buffer, typically multiprocessing.shared_memory.SharedMemory.buf.
 * Each method is a thin METH_FASTCALL wrapper around one GCC __atomic_* builtin,
 * so a call costs little more than a Python method call (tens of ns) instead of
 * the microseconds of cffi-based packages.
 *
 * The object holds the exporter's buffer (like a memoryview) until release(),
 * so the memory cannot be unmapped under it; SharedMemory.close() refuses to
 * run while it is held, and works once release() has been called.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define WORD 8

/* Across processes a lock-based fallback (libatomic's process-local lock
 * table) would silently give no atomicity at all, so insist on real
 * lock-free 8-byte atomics at compile time. */
#if !defined(__GCC_ATOMIC_LLONG_LOCK_FREE) || __GCC_ATOMIC_LLONG_LOCK_FREE != 2
#error "8-byte atomics must be always lock-free to work across processes"
#endif
_Static_assert(sizeof(long long) == sizeof(uint64_t), "long long must be 64 bits");

typedef struct {
    PyObject_HEAD
    Py_buffer view;      /* valid while held */
    int held;            /* 0 before the buffer is acquired and after release() */
} AtomicWords;

static PyTypeObject AtomicWords_Type;

static void
aw_release_buffer(AtomicWords *self)
{
    if (self->held) {
        self->held = 0;
        PyBuffer_Release(&self->view);
    }
}

/* Resolve an offset argument to a word pointer, or set ValueError/TypeError. */
static inline uint64_t *
aw_word(AtomicWords *self, PyObject *arg)
{
    if (!self->held) {
        PyErr_SetString(PyExc_ValueError, "buffer released");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "offset out of range for a buffer of %zd bytes",
                         self->view.len);
        }
        return NULL;
    }
    if (off & (WORD - 1)) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd is not a multiple of %d (words must be aligned)",
                     off, WORD);
        return NULL;
    }
    if (off < 0 || off > self->view.len - WORD) {
        PyErr_Format(PyExc_ValueError,
                     "offset %zd out of range for a buffer of %zd bytes",
                     off, self->view.len);
        return NULL;
    }
    return (uint64_t *)((char *)self->view.buf + off);
}

/* A value argument: an int in 0..2**64-1 (OverflowError otherwise). */
static inline int
aw_value(PyObject *arg, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* A fetch_add delta: like a value, but a negative int down to -2**63 is also
 * accepted and wraps, so fetch_add(off, -1) decrements as PlainWords does. */
static inline int
aw_delta(PyObject *arg, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();  /* slow path: negative (or too large) */
        long long s = PyLong_AsLongLong(arg);
        if (s == -1 && PyErr_Occurred())
            return -1;
        *out = (uint64_t)s;
        return 0;
    }
    *out = (uint64_t)v;
    return 0;
}

static inline int
aw_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs == want)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd argument%s (%zd given)",
                 name, want, want == 1 ? "" : "s", nargs);
    return -1;
}

static PyObject *
aw_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:AtomicWords", kwlist, &obj))
        return NULL;
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "AtomicWords needs a buffer, not '%.200s'",
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    AtomicWords *self = (AtomicWords *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* PyBUF_WRITABLE on its own also demands a contiguous byte buffer. */
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_BufferError,
                         "AtomicWords needs a writable, contiguous buffer; "
                         "'%.200s' did not provide one", Py_TYPE(obj)->tp_name);
        }
        return NULL;
    }
    /* Offsets are relative to the start, so the start itself must be aligned
     * (a memoryview slice such as buf[4:] is not). */
    if (self->view.len > 0 && ((uintptr_t)self->view.buf & (WORD - 1))) {
        PyBuffer_Release(&self->view);
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError,
                        "buffer start is not 8-byte aligned; atomic words need natural alignment");
        return NULL;
    }
    self->held = 1;
    return (PyObject *)self;
}

static int
aw_traverse(AtomicWords *self, visitproc visit, void *arg)
{
    if (self->held)
        Py_VISIT(self->view.obj);
    return 0;
}

static int
aw_clear(AtomicWords *self)
{
    aw_release_buffer(self);
    return 0;
}

static void
aw_dealloc(AtomicWords *self)
{
    PyObject_GC_UnTrack(self);
    aw_release_buffer(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
aw_load_acquire(AtomicWords *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (aw_nargs("load_acquire", nargs, 1) < 0)
        return NULL;
    uint64_t *p = aw_word(self, args[0]);
    if (p == NULL)
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(p, __ATOMIC_ACQUIRE));
}

static PyObject *
aw_store_release(AtomicWords *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v;
    if (aw_nargs("store_release", nargs, 2) < 0)
        return NULL;
    uint64_t *p = aw_word(self, args[0]);
    if (p == NULL || aw_value(args[1], &v) < 0)
        return NULL;
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyObject *
aw_store_seqcst(AtomicWords *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t v;
    if (aw_nargs("store_seqcst", nargs, 2) < 0)
        return NULL;
    uint64_t *p = aw_word(self, args[0]);
    if (p == NULL || aw_value(args[1], &v) < 0)
        return NULL;
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
#if !(defined(__x86_64__) || defined(__i386__))
    /* The log pairs store_seqcst with a later load_acquire (the asleep-flag
     * protocol).  C11 only orders a seq_cst store before seq_cst loads; on
     * ARMv8.3+ an acquire load (LDAPR) may pass an earlier STLR, so add the
     * full barrier the Words contract promises.  On x86 the seq_cst store
     * (XCHG or MOV+MFENCE) is already a full barrier. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
    Py_RETURN_NONE;
}

static PyObject *
aw_cas(AtomicWords *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t expected, desired;
    if (aw_nargs("cas", nargs, 3) < 0)
        return NULL;
    uint64_t *p = aw_word(self, args[0]);
    if (p == NULL || aw_value(args[1], &expected) < 0 || aw_value(args[2], &desired) < 0)
        return NULL;
    /* strong: a claim must not fail spuriously, or a slot could go unclaimed */
    int won = __atomic_compare_exchange_n(p, &expected, desired, 0,
                                          __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return PyBool_FromLong(won);
}

static PyObject *
aw_fetch_add(AtomicWords *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t delta;
    if (aw_nargs("fetch_add", nargs, 2) < 0)
        return NULL;
    uint64_t *p = aw_word(self, args[0]);
    if (p == NULL || aw_delta(args[1], &delta) < 0)
        return NULL;
    /* unsigned arithmetic: wraps modulo 2**64, like PlainWords */
    return PyLong_FromUnsignedLongLong(__atomic_fetch_add(p, delta, __ATOMIC_SEQ_CST));
}

static PyObject *
aw_fence(AtomicWords *self, PyObject *Py_UNUSED(ignored))
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
aw_release(AtomicWords *self, PyObject *Py_UNUSED(ignored))
{
    aw_release_buffer(self);
    Py_RETURN_NONE;
}

static PyObject *
aw_enter(AtomicWords *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->held) {
        PyErr_SetString(PyExc_ValueError, "buffer released");
        return NULL;
    }
    return Py_NewRef(self);
}

static PyObject *
aw_exit(AtomicWords *self, PyObject *const *args, Py_ssize_t nargs)
{
    aw_release_buffer(self);
    Py_RETURN_FALSE;
}

static PyObject *
aw_get_nbytes(AtomicWords *self, void *Py_UNUSED(closure))
{
    if (!self->held) {
        PyErr_SetString(PyExc_ValueError, "buffer released");
        return NULL;
    }
    return PyLong_FromSsize_t(self->view.len);
}

static PyObject *
aw_get_released(AtomicWords *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(!self->held);
}

static PyObject *
aw_repr(AtomicWords *self)
{
    if (!self->held)
        return PyUnicode_FromFormat("<%s released>", Py_TYPE(self)->tp_name);
    return PyUnicode_FromFormat("<%s nbytes=%zd>", Py_TYPE(self)->tp_name, self->view.len);
}

static PyMethodDef aw_methods[] = {
    {"load_acquire", (PyCFunction)(void (*)(void))aw_load_acquire, METH_FASTCALL,
     "load_acquire($self, offset, /)\n--\n\nRead the word at offset with acquire ordering."},
    {"store_release", (PyCFunction)(void (*)(void))aw_store_release, METH_FASTCALL,
     "store_release($self, offset, value, /)\n--\n\nWrite the word at offset with release ordering."},
    {"store_seqcst", (PyCFunction)(void (*)(void))aw_store_seqcst, METH_FASTCALL,
     "store_seqcst($self, offset, value, /)\n--\n\n"
     "Write the word at offset; no later load or store moves before it."},
    {"cas", (PyCFunction)(void (*)(void))aw_cas, METH_FASTCALL,
     "cas($self, offset, expected, new, /)\n--\n\n"
     "Strong sequentially consistent compare-and-swap; True if the word was replaced."},
    {"fetch_add", (PyCFunction)(void (*)(void))aw_fetch_add, METH_FASTCALL,
     "fetch_add($self, offset, delta, /)\n--\n\n"
     "Atomically add delta modulo 2**64 (sequentially consistent); return the old value."},
    {"fence", (PyCFunction)aw_fence, METH_NOARGS,
     "fence($self, /)\n--\n\nA sequentially consistent thread fence (full barrier)."},
    {"release", (PyCFunction)aw_release, METH_NOARGS,
     "release($self, /)\n--\n\nRelease the buffer; idempotent. Later operations raise ValueError."},
    {"__enter__", (PyCFunction)aw_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))aw_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef aw_getset[] = {
    {"nbytes", (getter)aw_get_nbytes, NULL, "Size of the buffer in bytes.", NULL},
    {"released", (getter)aw_get_released, NULL, "True once release() has been called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AtomicWords_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dominoes._runtime._atomics.AtomicWords",
    .tp_basicsize = sizeof(AtomicWords),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "AtomicWords(buffer)\n--\n\n"
              "Atomic access to aligned unsigned 64-bit words at byte offsets of a\n"
              "writable buffer, valid across processes sharing the memory.",
    .tp_new = aw_new,
    .tp_dealloc = (destructor)aw_dealloc,
    .tp_traverse = (traverseproc)aw_traverse,
    .tp_clear = (inquiry)aw_clear,
    .tp_repr = (reprfunc)aw_repr,
    .tp_methods = aw_methods,
    .tp_getset = aw_getset,
};

static struct PyModuleDef atomics_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dominoes._runtime._atomics",
    .m_doc = "Cross-process atomic operations on u64 words of a shared buffer.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__atomics(void)
{
    if (PyType_Ready(&AtomicWords_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&atomics_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "AtomicWords", (PyObject *)&AtomicWords_Type) < 0
        || PyModule_AddIntConstant(m, "WORD", WORD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
