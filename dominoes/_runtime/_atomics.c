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
 *
 * AtomicWords.ring(...) returns a Ring: the log's hot operations (append,
 * read, claim, published, sleepers) done in one C call each, over the slot
 * layout of dominoes._core._log (layout version RING_LAYOUT).  They perform
 * exactly the word operations the pure-Python Log does, in the same order and
 * with the same orderings; they only skip the interpreter between them.  A
 * Ring borrows its AtomicWords' buffer and fails once the words are released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

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

/* A seq_cst store that is also a full barrier for later acquire loads. */
static inline void
store_seqcst(uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
#if !(defined(__x86_64__) || defined(__i386__))
    /* The log pairs store_seqcst with a later load_acquire (the asleep-flag
     * protocol).  C11 only orders a seq_cst store before seq_cst loads; on
     * ARMv8.3+ an acquire load (LDAPR) may pass an earlier STLR, so add the
     * full barrier the Words contract promises.  On x86 the seq_cst store
     * (XCHG or MOV+MFENCE) is already a full barrier. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
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
    store_seqcst(p, v);
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

/* --- Ring: the log's hot path ------------------------------------------------
 *
 * Layout version 3 of dominoes._core._log (keep the two in step):
 *   replica line (64 B) at lines_offset + i * 64:
 *     +24 asleep, +32 intent_seq, +40 intent_n
 *   slot k at slots_offset + k * slot_size:
 *     +0  claim word, +64 published_seq, +72 u32 length | u16 nslots | u16 kind
 *     (little-endian), +80 payload; continuation slots carry payload at +80.
 */

#define RING_LAYOUT 3
#define LINE 64
#define R_ASLEEP 24
#define R_INTENT_SEQ 32
#define R_INTENT_N 40
#define SLOT_CLAIM 0
#define SLOT_SEQ 64
#define SLOT_META 72
#define SLOT_HEADER 80
#define MAX_NSLOTS 0xFFFF

typedef struct {
    PyObject_HEAD
    AtomicWords *words;          /* strong reference; its buffer is ours while held */
    Py_ssize_t slots_offset;
    Py_ssize_t lines_offset;
    Py_ssize_t tail_offset;
    Py_ssize_t slot_size;
    Py_ssize_t pps;              /* payload bytes per slot */
    Py_ssize_t max_entry_slots;
    Py_ssize_t max_replicas;
    uint64_t mask;               /* capacity - 1 */
} Ring;

static PyTypeObject Ring_Type;

static inline char *
ring_base(Ring *self)
{
    if (!self->words->held) {
        PyErr_SetString(PyExc_ValueError, "buffer released");
        return NULL;
    }
    return (char *)self->words->view.buf;
}

static inline char *
ring_slot(Ring *self, char *base, uint64_t seq)
{
    return base + self->slots_offset + (Py_ssize_t)(seq & self->mask) * self->slot_size;
}

static inline uint64_t *
w64(char *p)
{
    return (uint64_t *)p;
}

static inline uint32_t
get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint16_t
get_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline void
put_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void
put_le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

/* A replica index in 0..max_replicas-1, or IndexError (as Log._line raises). */
static inline int
ring_replica(Ring *self, PyObject *arg, Py_ssize_t *out)
{
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
    }
    else if (i >= 0 && i < self->max_replicas) {
        *out = i;
        return 0;
    }
    PyErr_Format(PyExc_IndexError, "replica %R out of range 0..%zd", arg,
                 self->max_replicas - 1);
    return -1;
}

static PyObject *
aw_ring(AtomicWords *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t v[8];
    if (aw_nargs("ring", nargs, 8) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < 8; i++) {
        v[i] = PyLong_AsSsize_t(args[i]);
        if (v[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_ssize_t layout = v[0], slots_offset = v[1], capacity = v[2], slot_size = v[3],
               max_entry_slots = v[4], tail_offset = v[5], lines_offset = v[6],
               max_replicas = v[7];
    if (!self->held) {
        PyErr_SetString(PyExc_ValueError, "buffer released");
        return NULL;
    }
    Py_ssize_t len = self->view.len;
    if (layout != RING_LAYOUT) {
        PyErr_Format(PyExc_ValueError, "log layout %zd; this extension knows layout %d",
                     layout, RING_LAYOUT);
        return NULL;
    }
    if (capacity < 2 || (capacity & (capacity - 1))
        || slot_size <= SLOT_HEADER || slot_size % LINE
        || max_entry_slots < 1 || max_entry_slots > capacity || max_entry_slots > MAX_NSLOTS
        || max_replicas < 1
        || slots_offset < 0 || slots_offset % WORD
        || tail_offset < 0 || tail_offset % WORD || tail_offset > len - WORD
        || lines_offset < 0 || lines_offset % WORD
        || lines_offset > len || max_replicas > (len - lines_offset) / LINE
        || slots_offset > len || capacity > (len - slots_offset) / slot_size) {
        PyErr_SetString(PyExc_ValueError, "ring geometry does not fit the buffer");
        return NULL;
    }
    Ring *ring = PyObject_GC_New(Ring, &Ring_Type);
    if (ring == NULL)
        return NULL;
    ring->words = (AtomicWords *)Py_NewRef(self);
    ring->slots_offset = slots_offset;
    ring->lines_offset = lines_offset;
    ring->tail_offset = tail_offset;
    ring->slot_size = slot_size;
    ring->pps = slot_size - SLOT_HEADER;
    ring->max_entry_slots = max_entry_slots;
    ring->max_replicas = max_replicas;
    ring->mask = (uint64_t)capacity - 1;
    PyObject_GC_Track(ring);
    return (PyObject *)ring;
}

static int
ring_traverse(Ring *self, visitproc visit, void *arg)
{
    Py_VISIT(self->words);
    return 0;
}

static int
ring_clear(Ring *self)
{
    Py_CLEAR(self->words);
    return 0;
}

static void
ring_dealloc(Ring *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->words);
    PyObject_GC_Del(self);
}

/* append(replica, limit, payload, kind): Log.try_reserve + write + done.
 *
 * Announces the intent (intent_n, then intent_seq seq_cst), CASes tail over
 * the entry's slots if they end at or below `limit`, fills continuation slots,
 * the head's payload and meta, zeroes the claim word, stores published_seq
 * (release, last) and clears the intent.  Returns the seq, or 0 without
 * reserving anything when the entry would pass `limit` (the caller refreshes
 * its limit from the cursors and may call again).  Nothing here can wait. */
static PyObject *
ring_append(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t replica;
    uint64_t limit, kind;
    Py_buffer pb = {0};
    const char *data;
    Py_ssize_t n;

    if (aw_nargs("append", nargs, 4) < 0)
        return NULL;
    char *base = ring_base(self);
    if (base == NULL || ring_replica(self, args[0], &replica) < 0
        || aw_value(args[1], &limit) < 0 || aw_value(args[3], &kind) < 0)
        return NULL;
    if (kind > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "kind must fit 16 bits");
        return NULL;
    }
    if (PyBytes_CheckExact(args[2])) {
        data = PyBytes_AS_STRING(args[2]);
        n = PyBytes_GET_SIZE(args[2]);
    }
    else {
        if (PyObject_GetBuffer(args[2], &pb, PyBUF_SIMPLE) < 0)
            return NULL;
        data = pb.buf;
        n = pb.len;
    }
    Py_ssize_t pps = self->pps;
    Py_ssize_t nslots = n <= pps ? 1 : (n - 1) / pps + 1;
    if (nslots > self->max_entry_slots || (uint64_t)n > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "an entry of %zd bytes does not fit %zd slots",
                     n, self->max_entry_slots);
        goto fail;
    }

    char *line = base + self->lines_offset + replica * LINE;
    uint64_t *tail = w64(base + self->tail_offset);
    uint64_t *intent_seq = w64(line + R_INTENT_SEQ);
    uint64_t seq;
    __atomic_store_n(w64(line + R_INTENT_N), (uint64_t)nslots, __ATOMIC_RELEASE);
    for (;;) {
        uint64_t t = __atomic_load_n(tail, __ATOMIC_ACQUIRE);
        uint64_t end = t + (uint64_t)nslots;
        if (end > limit) {
            __atomic_store_n(intent_seq, 0, __ATOMIC_RELEASE);
            if (pb.obj != NULL)
                PyBuffer_Release(&pb);
            return PyLong_FromLong(0);
        }
        store_seqcst(intent_seq, t);
        if (__atomic_compare_exchange_n(tail, &t, end, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            seq = t;
            break;
        }
    }
    /* Reserved: write and publish now, with no way to wait in between. */
    for (Py_ssize_t k = 1; k < nslots; k++) {  /* continuation slots first */
        Py_ssize_t from = k * pps;
        Py_ssize_t take = n - from < pps ? n - from : pps;
        memmove(ring_slot(self, base, seq + (uint64_t)k) + SLOT_HEADER, data + from,
                (size_t)take);
    }
    char *head = ring_slot(self, base, seq);
    memmove(head + SLOT_HEADER, data, (size_t)(n < pps ? n : pps));
    unsigned char *meta = (unsigned char *)head + SLOT_META;
    put_le32(meta, (uint32_t)n);
    put_le16(meta + 4, (uint16_t)nslots);
    put_le16(meta + 6, (uint16_t)kind);
    __atomic_store_n(w64(head + SLOT_CLAIM), 0, __ATOMIC_RELEASE);
    __atomic_store_n(w64(head + SLOT_SEQ), seq, __ATOMIC_RELEASE);  /* publish: last */
    __atomic_store_n(intent_seq, 0, __ATOMIC_RELEASE);               /* done */
    if (pb.obj != NULL)
        PyBuffer_Release(&pb);
    return PyLong_FromUnsignedLongLong(seq);

fail:
    if (pb.obj != NULL)
        PyBuffer_Release(&pb);
    return NULL;
}

/* read(seq): (kind, nslots, payload) copied out of the slot(s), or None if
 * published_seq (acquire) is not seq. */
static PyObject *
ring_read(Ring *self, PyObject *arg)
{
    uint64_t seq;
    char *base = ring_base(self);
    if (base == NULL || aw_value(arg, &seq) < 0)
        return NULL;
    char *head = ring_slot(self, base, seq);
    if (__atomic_load_n(w64(head + SLOT_SEQ), __ATOMIC_ACQUIRE) != seq)
        Py_RETURN_NONE;
    const unsigned char *meta = (const unsigned char *)head + SLOT_META;
    uint32_t n = get_le32(meta);
    uint16_t nslots = get_le16(meta + 4);
    uint16_t kind = get_le16(meta + 6);
    Py_ssize_t pps = self->pps;
    PyObject *payload;
    if (nslots == 1) {
        if ((Py_ssize_t)n > pps)
            goto corrupt;
        payload = PyBytes_FromStringAndSize(head + SLOT_HEADER, (Py_ssize_t)n);
    }
    else if (nslots == 0) {  /* never written by a producer; as the Python path */
        payload = PyBytes_FromStringAndSize(NULL, 0);
    }
    else {
        if ((Py_ssize_t)n > (Py_ssize_t)nslots * pps)
            goto corrupt;
        payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (payload == NULL)
            return NULL;
        char *out = PyBytes_AS_STRING(payload);
        Py_ssize_t left = (Py_ssize_t)n;
        for (uint64_t k = 0; k < nslots && left > 0; k++) {
            Py_ssize_t take = left < pps ? left : pps;
            memcpy(out, ring_slot(self, base, seq + k) + SLOT_HEADER, (size_t)take);
            out += take;
            left -= take;
        }
    }
    if (payload == NULL)
        return NULL;
    PyObject *result = PyTuple_New(3);
    PyObject *k = PyLong_FromLong(kind), *s = PyLong_FromLong(nslots);
    if (result == NULL || k == NULL || s == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(k);
        Py_XDECREF(s);
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, k);
    PyTuple_SET_ITEM(result, 1, s);
    PyTuple_SET_ITEM(result, 2, payload);
    return result;

corrupt:
    PyErr_Format(PyExc_ValueError,
                 "corrupt slot for seq %llu: %u bytes in %u slots of %zd",
                 (unsigned long long)seq, (unsigned)n, (unsigned)nslots, pps);
    return NULL;
}

/* published(seq): published_seq (acquire) == seq. */
static PyObject *
ring_published(Ring *self, PyObject *arg)
{
    uint64_t seq;
    char *base = ring_base(self);
    if (base == NULL || aw_value(arg, &seq) < 0)
        return NULL;
    uint64_t *p = w64(ring_slot(self, base, seq) + SLOT_SEQ);
    return PyBool_FromLong(__atomic_load_n(p, __ATOMIC_ACQUIRE) == seq);
}

/* claim(seq, replica): strong seq_cst CAS of the slot's claim word 0 -> replica + 1. */
static PyObject *
ring_claim(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t seq, replica;
    if (aw_nargs("claim", nargs, 2) < 0)
        return NULL;
    char *base = ring_base(self);
    if (base == NULL || aw_value(args[0], &seq) < 0 || aw_value(args[1], &replica) < 0)
        return NULL;
    uint64_t expected = 0;
    int won = __atomic_compare_exchange_n(w64(ring_slot(self, base, seq) + SLOT_CLAIM),
                                          &expected, replica + 1, 0, __ATOMIC_SEQ_CST,
                                          __ATOMIC_SEQ_CST);
    return PyBool_FromLong(won);
}

/* sleepers(count): a full fence, then the replicas among the first `count`
 * (at most max_replicas) whose asleep word is set (acquire loads). */
static PyObject *
ring_sleepers(Ring *self, PyObject *arg)
{
    Py_ssize_t count = PyLong_AsSsize_t(arg);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    char *base = ring_base(self);
    if (base == NULL)
        return NULL;
    if (count > self->max_replicas)
        count = self->max_replicas;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    char *line = base + self->lines_offset;
    for (Py_ssize_t i = 0; i < count; i++, line += LINE) {
        if (__atomic_load_n(w64(line + R_ASLEEP), __ATOMIC_ACQUIRE)) {
            PyObject *v = PyLong_FromSsize_t(i);
            if (v == NULL || PyList_Append(out, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(v);
        }
    }
    return out;
}

static PyObject *
ring_get_released(Ring *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(!self->words->held);
}

static PyMethodDef ring_methods[] = {
    {"append", (PyCFunction)(void (*)(void))ring_append, METH_FASTCALL,
     "append($self, replica, limit, payload, kind, /)\n--\n\n"
     "Reserve, write and publish payload as replica (Log.try_append); its seq,\n"
     "or 0 if it would end past limit (nothing reserved)."},
    {"read", (PyCFunction)ring_read, METH_O,
     "read($self, seq, /)\n--\n\n(kind, nslots, payload copy) of the entry at seq, or None."},
    {"published", (PyCFunction)ring_published, METH_O,
     "published($self, seq, /)\n--\n\nTrue if the entry at seq is published."},
    {"claim", (PyCFunction)(void (*)(void))ring_claim, METH_FASTCALL,
     "claim($self, seq, replica, /)\n--\n\nCAS the claim word of seq from 0 to replica + 1."},
    {"sleepers", (PyCFunction)ring_sleepers, METH_O,
     "sleepers($self, count, /)\n--\n\n"
     "A full fence, then the replicas among the first count whose asleep flag is set."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ring_getset[] = {
    {"released", (getter)ring_get_released, NULL,
     "True once the AtomicWords' buffer has been released.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Ring_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dominoes._runtime._atomics.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The log's hot operations over an AtomicWords buffer (AtomicWords.ring()).",
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_traverse = (traverseproc)ring_traverse,
    .tp_clear = (inquiry)ring_clear,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

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
    {"ring", (PyCFunction)(void (*)(void))aw_ring, METH_FASTCALL,
     "ring($self, layout, slots_offset, capacity, slot_size, max_entry_slots,\n"
     "     tail_offset, lines_offset, max_replicas, /)\n--\n\n"
     "A Ring: the log's hot operations for a log of this shape in the buffer."},
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
    if (PyType_Ready(&AtomicWords_Type) < 0 || PyType_Ready(&Ring_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&atomics_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "AtomicWords", (PyObject *)&AtomicWords_Type) < 0
        || PyModule_AddObjectRef(m, "Ring", (PyObject *)&Ring_Type) < 0
        || PyModule_AddIntConstant(m, "WORD", WORD) < 0
        || PyModule_AddIntConstant(m, "RING_LAYOUT", RING_LAYOUT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
