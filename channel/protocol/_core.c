/* The channel's two hot paths in C: post a command / take one, reap a completion / publish one.
 *
 * `channel/sides_pure.py` is the executable reference: every result, error, counter and byte
 * written here must equal what it does (tests/test_core_differential.py drives both).
 *
 * Offsets and sizes come from Python at import and construction time (`configure`, and the
 * constructors' arguments, all taken from channel/layout.py); the only C constants are the
 * fixed header layouts below, which tests/test_core_differential.py checks against
 * channel/protocol.py's struct formats through `_core.HEADER_LAYOUT`.
 *
 * The region is hostile input (the peer may rewrite any byte at any time):
 *   - every pointer into the mapping is computed from a counter masked to the ring, or from
 *     offsets bounds-checked against the buffer's length once, at construction;
 *   - each shared field is read once, into a local, and only the local is validated and used
 *     (headers are copied word by word with atomic loads before being parsed; bodies are
 *     copied into a private bytes object before msgpack sees them);
 *   - the core reaches the mapping only through the memoryviews the Python side holds (the
 *     header page's words, one view per slot, the statistics block) and checks that a view
 *     is not released before each use: `Region.close` can then unmap at once, as with the
 *     reference, and a released region is a ValueError here, never a dangling pointer. (The
 *     GIL is held from the check to the last access, so the mapping cannot go in between.)
 *
 * Memory ordering (x86-64 only; channel/ring.py refuses to import elsewhere). This is the
 * argument of channel/ring.py, restated for the C code that relies on it:
 *   - counters are loaded and stored with __atomic_load_n/__atomic_store_n on aligned 8-byte
 *     words: single MOVs, atomic on x86-64, never torn, and not reordered by the compiler;
 *   - producer: the slot is written, then the tail stored with release order. x86 does not
 *     reorder a store with an earlier store, so a consumer that sees the tail sees the slot;
 *   - consumer: the tail is loaded with acquire order, then the slot is read. x86 does not
 *     reorder a load with an earlier load. The head store (release) comes after the slot's
 *     reads; x86 does not move a store before an earlier load, so the producer cannot reuse
 *     a slot still being read;
 *   - parking is store-then-load, the one pattern x86 reorders: the consumer stores
 *     NEED_WAKEUP then re-reads the tail, the producer stores the tail then reads the flags.
 *     A full fence (__atomic_thread_fence(SEQ_CST), an MFENCE) sits between the store and the
 *     load on both sides (Dekker: at least one side sees the other's store). The Python
 *     reference's fence is a LOCK-prefixed instruction, also a full barrier; either side may
 *     be either implementation.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__x86_64__)
#error "ringfs rings rely on x86-64 memory ordering"
#endif

/* Header layouts: channel/protocol.py's COMMAND_HEADER "<QHHI16siIQQQIIIIII" and
 * COMPLETION_HEADER "<QiIIiQ" (little-endian, no padding). */
enum {
    C_TAG = 0, C_OPCODE = 8, C_FLAGS = 10, C_BODY_LEN = 12, C_TOKEN = 16, C_BUF = 32,
    C_DATA_LEN = 36, C_INO = 40, C_FH = 48, C_OFFSET = 56, C_SIZE = 64, C_UID = 68,
    C_GID = 72, C_PID = 76, C_UMASK = 80, C_RESERVED = 84, COMMAND_SIZE = 88,
    TOKEN_SIZE = 16,
};
enum {
    R_TAG = 0, R_STATUS = 8, R_BODY_LEN = 12, R_DATA_LEN = 16, R_BUF = 20, R_VALUE = 24,
    COMPLETION_SIZE = 32,
};
#define NO_BUFFER (-1)

/* -- configuration, from channel/layout.py and channel/sides_pure.py (see `configure`) ---- */
static struct {
    int ready;
    uint64_t need_wakeup;
    Py_ssize_t opcode_counters, latency_buckets, stats_words;
    /* client counters */
    Py_ssize_t c_commands, c_completions, c_bytes_out, c_bytes_in, c_latency_sum, c_latency,
        c_by_opcode;
    /* server counters */
    Py_ssize_t s_commands, s_completions, s_errors, s_auth_failures, s_protocol_errors,
        s_by_opcode;
    PyObject *protocol_error, *struct_error, *command_type, *completion_type, *rejected_type,
        *unpack_body;
} cfg;

static PyObject *s_flush, *s_append; /* "flush", "append" */
static PyObject *kw_data_len, *kw_buf, *kw_value;

/* -- little-endian field access on private copies ---------------------------------------- */
static inline uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }

/* Copy `n` (a multiple of 8) bytes of a slot into `dst`, each word read exactly once. */
static inline void copy_words_in(unsigned char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = __atomic_load_n((const uint64_t *)(src + i), __ATOMIC_RELAXED);
        memcpy(dst + i, &w, 8);
    }
}

static inline uint64_t load_word(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_word(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* what time.monotonic_ns() reads on Linux */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Python-int conversions with struct's range rules; errors are struct.error like the
 * reference's pack_into. */
static int to_u64(PyObject *o, uint64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_SetString(cfg.struct_error, "required argument is not an integer");
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(cfg.struct_error, "argument out of range");
        return -1;
    }
    *out = v;
    return 0;
}

static int to_range(PyObject *o, long long lo, long long hi, long long *out)
{
    if (!PyLong_Check(o)) {
        PyErr_SetString(cfg.struct_error, "required argument is not an integer");
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(cfg.struct_error, "argument out of range (%lld..%lld)", lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* ========================================================================================
 * Ring ends: drop-in replacements of channel.protocol.ring.RingProducer / RingConsumer.
 * ======================================================================================== */
typedef struct {
    PyObject_HEAD
    PyObject *words; /* memoryview of the header page (Region.words) */
    uint64_t *head_p, *tail_p, *flags_p;
    unsigned long long entries, mask, pos; /* pos: tail (producer) or head (consumer) */
    Py_ssize_t slot_size;
    PyObject *slots; /* tuple of memoryviews, one per slot (made in Python) */
} Ring;

/* A memoryview the core may still use: not released, nor its exporter. */
static inline int is_live(PyObject *view)
{
    PyMemoryViewObject *m = (PyMemoryViewObject *)view;
    return !((m->flags & _Py_MEMORYVIEW_RELEASED) || (m->mbuf->flags & _Py_MANAGED_BUFFER_RELEASED));
}

/* 0 if the core may still use `view`, else -1 with ValueError set. */
static inline int live(PyObject *view)
{
    if (!is_live(view)) {
        PyErr_SetString(PyExc_ValueError, "operation forbidden on released memoryview object");
        return -1;
    }
    return 0;
}

/* A writable, contiguous memoryview of at least `min_len` bytes, 8-byte aligned. */
static Py_buffer *usable_view(PyObject *o, Py_ssize_t min_len, const char *what)
{
    if (!PyMemoryView_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a memoryview", what);
        return NULL;
    }
    if (live(o) < 0)
        return NULL;
    Py_buffer *b = PyMemoryView_GET_BUFFER(o);
    if (b->readonly || !PyBuffer_IsContiguous(b, 'C') || b->len < min_len
        || ((uintptr_t)b->buf) % 8) {
        PyErr_Format(PyExc_ValueError, "%s is not a writable view of %zd aligned bytes", what,
                     min_len);
        return NULL;
    }
    return b;
}

static int word_ptr(Py_buffer *words, Py_ssize_t off, uint64_t **out)
{
    if (off < 0 || off % 8 || off > words->len - 8) {
        PyErr_Format(PyExc_ValueError, "ring word offset %zd outside the header", off);
        return -1;
    }
    *out = (uint64_t *)((char *)words->buf + off);
    return 0;
}

/* Ring(words, head, tail, flags, entries, slot_size, slots, producer): `words` is the
 * header page's view, head/tail/flags byte offsets into it, `slots` a tuple of `entries`
 * views of `slot_size` bytes each. */
static int Ring_init(Ring *self, PyObject *args, PyObject *kwds)
{
    PyObject *words, *slots;
    Py_ssize_t head, tail, flags, entries, slot_size;
    int producer;
    (void)kwds;
    if (!PyArg_ParseTuple(args, "OnnnnnO!p", &words, &head, &tail, &flags, &entries,
                          &slot_size, &PyTuple_Type, &slots, &producer))
        return -1;
    if (self->words != NULL) {
        PyErr_SetString(PyExc_TypeError, "ring already initialised");
        return -1;
    }
    if (entries <= 0 || (entries & (entries - 1)) || slot_size < COMMAND_SIZE
        || PyTuple_GET_SIZE(slots) != entries) {
        PyErr_SetString(PyExc_ValueError, "ring geometry is not a power of two of slots");
        return -1;
    }
    for (Py_ssize_t i = 0; i < entries; i++)
        if (usable_view(PyTuple_GET_ITEM(slots, i), slot_size, "a slot") == NULL)
            return -1;
    Py_buffer *w = usable_view(words, 8, "the header page");
    if (w == NULL || word_ptr(w, head, &self->head_p) < 0 || word_ptr(w, tail, &self->tail_p) < 0
        || word_ptr(w, flags, &self->flags_p) < 0)
        return -1;
    self->words = Py_NewRef(words);
    self->entries = (unsigned long long)entries;
    self->mask = self->entries - 1;
    self->slot_size = slot_size;
    self->slots = Py_NewRef(slots);
    /* Each side starts from the current word of the counter it owns. */
    self->pos = load_word(producer ? self->tail_p : self->head_p);
    return 0;
}

static void Ring_dealloc(Ring *self)
{
    Py_CLEAR(self->slots);
    Py_CLEAR(self->words);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The slot of `counter` (masked: always one of the ring's views), or NULL if released. */
static inline char *ring_slot(Ring *r, unsigned long long counter)
{
    PyObject *view = PyTuple_GET_ITEM(r->slots, (Py_ssize_t)(counter & r->mask));
    return live(view) < 0 ? NULL : PyMemoryView_GET_BUFFER(view)->buf;
}

/* Before each use of the ring's words. */
#define RING_LIVE(r, fail)                                                                     \
    do {                                                                                       \
        if ((r) == NULL || live((r)->words) < 0)                                               \
            return fail;                                                                       \
    } while (0)

static void corrupt(const char *fmt, unsigned long long a, unsigned long long b,
                    unsigned long long entries)
{
    /* The count as the reference computes it, a - b over Python's unbounded integers. */
    PyObject *pa = PyLong_FromUnsignedLongLong(a), *pb = PyLong_FromUnsignedLongLong(b);
    PyObject *d = (pa && pb) ? PyNumber_Subtract(pa, pb) : NULL;
    if (d != NULL)
        PyErr_Format(cfg.protocol_error, fmt, d, entries);
    Py_XDECREF(pa);
    Py_XDECREF(pb);
    Py_XDECREF(d);
}

/* Free slots of a producer, or -1 with ProtocolError set. */
static long long producer_free(Ring *r)
{
    RING_LIVE(r, -1);
    unsigned long long head = load_word(r->head_p);
    unsigned long long used = r->pos - head;
    if (r->pos < head || used > r->entries) {
        corrupt("ring head is corrupt (%S slots in use of %llu)", r->pos, head, r->entries);
        return -1;
    }
    return (long long)(r->entries - used);
}

/* Filled slots of a consumer, or -1 with ProtocolError set. */
static long long consumer_available(Ring *r)
{
    RING_LIVE(r, -1);
    unsigned long long tail = load_word(r->tail_p);
    unsigned long long ready = tail - r->pos;
    if (tail < r->pos || ready > r->entries) {
        corrupt("ring tail is corrupt (%S slots ready of %llu)", tail, r->pos, r->entries);
        return -1;
    }
    return (long long)ready;
}

/* Callers have checked the ring's words are live. */
static inline int publish(Ring *r, unsigned long long count)
{
    r->pos += count;
    store_word(r->tail_p, r->pos);
    full_fence(); /* the tail store must be visible before the flags are read */
    return (load_word(r->flags_p) & cfg.need_wakeup) != 0;
}

static PyObject *Producer_free_slots(Ring *self, PyObject *unused)
{
    (void)unused;
    long long n = producer_free(self);
    return n < 0 ? NULL : PyLong_FromLongLong(n);
}

static PyObject *Ring_slot_at_pos(Ring *self, PyObject *unused)
{
    (void)unused;
    PyObject *slot = PyTuple_GET_ITEM(self->slots, (Py_ssize_t)(self->pos & self->mask));
    return Py_NewRef(slot);
}

static PyObject *Producer_publish(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long count = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "publish takes at most one argument");
        return NULL;
    }
    if (nargs == 1) {
        count = PyLong_AsUnsignedLongLong(args[0]);
        if (count == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    RING_LIVE(self, NULL);
    return PyBool_FromLong(publish(self, count));
}

static PyObject *Consumer_available(Ring *self, PyObject *unused)
{
    (void)unused;
    long long n = consumer_available(self);
    return n < 0 ? NULL : PyLong_FromLongLong(n);
}

static PyObject *Consumer_release(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned long long count = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "release takes at most one argument");
        return NULL;
    }
    if (nargs == 1) {
        count = PyLong_AsUnsignedLongLong(args[0]);
        if (count == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    RING_LIVE(self, NULL);
    self->pos += count;
    store_word(self->head_p, self->pos);
    Py_RETURN_NONE;
}

static PyObject *Consumer_prepare_park(Ring *self, PyObject *unused)
{
    (void)unused;
    RING_LIVE(self, NULL);
    store_word(self->flags_p, load_word(self->flags_p) | cfg.need_wakeup);
    full_fence(); /* the flag store must be visible before the tail is re-read */
    long long n = consumer_available(self);
    if (n < 0)
        return NULL;
    if (n) {
        store_word(self->flags_p, load_word(self->flags_p) & ~cfg.need_wakeup);
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyObject *Consumer_finish_park(Ring *self, PyObject *unused)
{
    (void)unused;
    RING_LIVE(self, NULL);
    store_word(self->flags_p, load_word(self->flags_p) & ~cfg.need_wakeup);
    Py_RETURN_NONE;
}

static PyObject *Consumer_parked(Ring *self, void *unused)
{
    (void)unused;
    RING_LIVE(self, NULL);
    return PyBool_FromLong((load_word(self->flags_p) & cfg.need_wakeup) != 0);
}

static PyMethodDef Producer_methods[] = {
    {"free_slots", (PyCFunction)Producer_free_slots, METH_NOARGS, "Slots the producer may fill now."},
    {"next_slot", (PyCFunction)Ring_slot_at_pos, METH_NOARGS, "The slot to fill next."},
    {"publish", (PyCFunction)(void (*)(void))Producer_publish, METH_FASTCALL,
     "Make `count` filled slots visible; True if the consumer must be woken."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef Consumer_methods[] = {
    {"available", (PyCFunction)Consumer_available, METH_NOARGS, "Filled slots waiting."},
    {"current_slot", (PyCFunction)Ring_slot_at_pos, METH_NOARGS, "The oldest filled slot."},
    {"release", (PyCFunction)(void (*)(void))Consumer_release, METH_FASTCALL,
     "Hand `count` consumed slots back to the producer."},
    {"prepare_park", (PyCFunction)Consumer_prepare_park, METH_NOARGS,
     "Announce a sleep; False if work arrived meanwhile."},
    {"finish_park", (PyCFunction)Consumer_finish_park, METH_NOARGS, "Back from sleep."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Consumer_getset[] = {
    {"parked", (getter)Consumer_parked, NULL, "NEED_WAKEUP is set", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Producer_members[] = {
    {"tail", T_ULONGLONG, offsetof(Ring, pos), 0, "the producer's private tail"},
    {"entries", T_ULONGLONG, offsetof(Ring, entries), READONLY, NULL},
    {"mask", T_ULONGLONG, offsetof(Ring, mask), READONLY, NULL},
    {"slots", T_OBJECT, offsetof(Ring, slots), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMemberDef Consumer_members[] = {
    {"head", T_ULONGLONG, offsetof(Ring, pos), 0, "the consumer's private head"},
    {"entries", T_ULONGLONG, offsetof(Ring, entries), READONLY, NULL},
    {"mask", T_ULONGLONG, offsetof(Ring, mask), READONLY, NULL},
    {"slots", T_OBJECT, offsetof(Ring, slots), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ProducerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "channel.protocol._core.Producer",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The producing end of a ring (see channel.protocol.ring.RingProducer).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Producer_methods,
    .tp_members = Producer_members,
};

static PyTypeObject ConsumerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "channel.protocol._core.Consumer",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The consuming end of a ring (see channel.protocol.ring.RingConsumer).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Consumer_methods,
    .tp_members = Consumer_members,
    .tp_getset = Consumer_getset,
};

/* Statistics words of one side: its view, checked to hold the whole block. */
static int stats_ptr(PyObject *view, uint64_t **out)
{
    Py_buffer *b = usable_view(view, 8 * cfg.stats_words, "the statistics block");
    if (b == NULL)
        return -1;
    *out = b->buf;
    return 0;
}

/* One writer per statistics word: a plain load and store (wrapping at 2**64). */
static inline void bump(uint64_t *stats, Py_ssize_t index, uint64_t n)
{
    __atomic_store_n(&stats[index], __atomic_load_n(&stats[index], __ATOMIC_RELAXED) + n,
                     __ATOMIC_RELAXED);
}

static inline Py_ssize_t opcode_counter(unsigned opcode)
{
    Py_ssize_t last = cfg.opcode_counters - 1;
    return (Py_ssize_t)opcode < last ? (Py_ssize_t)opcode : last;
}

static int check_ready(void)
{
    if (!cfg.ready) {
        PyErr_SetString(PyExc_RuntimeError, "channel.protocol._core.configure() was not called");
        return -1;
    }
    return 0;
}

/* A record of `n` fields: an instance of `cls`, a tuple subclass without fields of its own
 * (Command, Completion; checked by `configure`), built in place as tuple.__new__ would build
 * it, without the NamedTuple keyword constructor or an intermediate tuple. Steals the `n`
 * references in `items`, even on failure; a NULL item (a failed conversion) fails it. */
static PyObject *new_record(PyObject *cls, PyObject **items, Py_ssize_t n)
{
    PyObject *r = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == NULL)
            goto fail;
    r = ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, n);
    if (r == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(r, i, items[i]);
    return r;
fail:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

static inline PyObject *u64_obj(uint64_t v) { return PyLong_FromUnsignedLongLong(v); }
static inline PyObject *u32_obj(uint32_t v) { return PyLong_FromUnsignedLong(v); }
static inline PyObject *i32_obj(int32_t v) { return PyLong_FromLong(v); }

/* The msgpack body of a private copy, or None when empty; ProtocolError on garbage. */
static PyObject *decode_body(const char *shared, uint32_t n)
{
    if (n == 0)
        Py_RETURN_NONE;
    PyObject *copy = PyBytes_FromStringAndSize(shared, n); /* the body's one read */
    if (copy == NULL)
        return NULL;
    PyObject *body = PyObject_CallOneArg(cfg.unpack_body, copy);
    Py_DECREF(copy);
    return body;
}

/* ========================================================================================
 * ClientCore: the hot half of channel.protocol.sides_pure.ClientSide (post, reap).
 * ======================================================================================== */
typedef struct {
    PyObject_HEAD
    Ring *sq, *cq;
    PyObject *token;
    PyObject *in_flight; /* dict: tag -> submit time (ns) */
    unsigned long long next_tag;
    PyObject *stats_view; /* the side's statistics block (Region.client_stats()) */
    uint64_t *stats;
    Py_ssize_t buf_size;
} ClientCore;

/* ClientCore(sq, cq, token, stats, buf_size) */
static int ClientCore_init(ClientCore *self, PyObject *args, PyObject *kwds)
{
    Ring *sq, *cq;
    PyObject *token, *stats;
    Py_ssize_t buf_size;
    (void)kwds;
    if (check_ready() < 0)
        return -1;
    if (!PyArg_ParseTuple(args, "O!O!OOn", &ProducerType, &sq, &ConsumerType, &cq, &token,
                          &stats, &buf_size))
        return -1;
    if (stats_ptr(stats, &self->stats) < 0)
        return -1;
    Py_XSETREF(self->stats_view, Py_NewRef(stats));
    Py_XSETREF(self->sq, (Ring *)Py_NewRef(sq));
    Py_XSETREF(self->cq, (Ring *)Py_NewRef(cq));
    Py_XSETREF(self->token, Py_NewRef(token));
    Py_XSETREF(self->in_flight, PyDict_New());
    if (self->in_flight == NULL)
        return -1;
    self->next_tag = 1;
    self->buf_size = buf_size;
    return 0;
}

static int ClientCore_traverse(ClientCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sq);
    Py_VISIT(self->cq);
    Py_VISIT(self->token);
    Py_VISIT(self->in_flight);
    Py_VISIT(self->stats_view);
    return 0;
}

static int ClientCore_clear(ClientCore *self)
{
    Py_CLEAR(self->sq);
    Py_CLEAR(self->cq);
    Py_CLEAR(self->token);
    Py_CLEAR(self->in_flight);
    Py_CLEAR(self->stats_view);
    return 0;
}

static void ClientCore_dealloc(ClientCore *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ClientCore_clear(self);
    tp->tp_free((PyObject *)self); /* a heap subclass's type is released by CPython */
}

/* The token as the '16s' struct field packs it: bytes, zero-padded or truncated. */
static int pack_token(PyObject *token, unsigned char *dst)
{
    if (token == NULL || !PyBytes_Check(token)) {
        PyErr_SetString(cfg.struct_error, "argument for 's' must be a bytes object");
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(token);
    memset(dst, 0, TOKEN_SIZE);
    memcpy(dst, PyBytes_AS_STRING(token), n < TOKEN_SIZE ? (size_t)n : TOKEN_SIZE);
    return 0;
}

/* post(opcode, body, buf, data_len, fields) -> (tag, wake) */
static PyObject *ClientCore_post(ClientCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "post(opcode, body, buf, data_len, fields)");
        return NULL;
    }
    Ring *sq = self->sq;
    unsigned long long tag = self->next_tag++;
    PyObject *fields = args[4];
    long long opcode, buf, data_len, f[9];
    static const long long field_max[9] = {
        0xffff, -1, -1, -1, 0xffffffffLL, 0xffffffffLL, 0xffffffffLL, 0xffffffffLL, 0xffffffffLL,
    }; /* flags H; ino, fh, offset Q (-1: unsigned 64); size uid gid pid umask I */
    uint64_t q[9];
    Py_buffer body;
    unsigned char header[COMMAND_SIZE];

    if (PyObject_GetBuffer(args[1], &body, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t n = body.len;
    if (n > sq->slot_size - COMMAND_SIZE) {
        PyErr_Format(PyExc_ValueError, "command body of %zd bytes does not fit a %zd-byte slot",
                     n, sq->slot_size);
        goto fail;
    }
    if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != 9) {
        PyErr_SetString(PyExc_ValueError, "fields must be a tuple of nine integers");
        goto fail;
    }
    for (int i = 0; i < 9; i++) {
        PyObject *v = PyTuple_GET_ITEM(fields, i);
        if (field_max[i] < 0) {
            if (to_u64(v, &q[i]) < 0)
                goto fail;
        } else if (to_range(v, 0, field_max[i], &f[i]) < 0) {
            goto fail;
        }
    }
    if (to_range(args[0], 0, 0xffff, &opcode) < 0
        || to_range(args[2], INT32_MIN, INT32_MAX, &buf) < 0
        || to_range(args[3], 0, 0xffffffffLL, &data_len) < 0
        || pack_token(self->token, header + C_TOKEN) < 0)
        goto fail;

    put64(header + C_TAG, tag);
    put16(header + C_OPCODE, (uint16_t)opcode);
    put16(header + C_FLAGS, (uint16_t)f[0]);
    put32(header + C_BODY_LEN, (uint32_t)n);
    put32(header + C_BUF, (uint32_t)(int32_t)buf);
    put32(header + C_DATA_LEN, (uint32_t)data_len);
    put64(header + C_INO, q[1]);
    put64(header + C_FH, q[2]);
    put64(header + C_OFFSET, q[3]);
    put32(header + C_SIZE, (uint32_t)f[4]);
    put32(header + C_UID, (uint32_t)f[5]);
    put32(header + C_GID, (uint32_t)f[6]);
    put32(header + C_PID, (uint32_t)f[7]);
    put32(header + C_UMASK, (uint32_t)f[8]);
    put32(header + C_RESERVED, 0);

    PyObject *ptag = PyLong_FromUnsignedLongLong(tag);
    PyObject *started = PyLong_FromUnsignedLongLong(now_ns());
    if (ptag == NULL || started == NULL || PyDict_SetItem(self->in_flight, ptag, started) < 0) {
        Py_XDECREF(ptag);
        Py_XDECREF(started);
        goto fail;
    }
    Py_DECREF(started);
    /* From this check to the publish nothing allocates, so no Python code (a GC finaliser,
     * another thread) can run and release the views between the check and the accesses. */
    char *slot = ring_slot(sq, sq->pos); /* masked: always one of the SQ's slots */
    if (slot == NULL || live(sq->words) < 0 || live(self->stats_view) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyDict_DelItem(self->in_flight, ptag) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
        Py_DECREF(ptag);
        goto fail;
    }
    memcpy(slot, header, COMMAND_SIZE);
    if (n)
        memcpy(slot + COMMAND_SIZE, body.buf, (size_t)n);
    PyBuffer_Release(&body);
    uint64_t *stats = self->stats;
    bump(stats, cfg.c_commands, 1);
    bump(stats, cfg.c_by_opcode + opcode_counter((unsigned)opcode), 1);
    if (data_len)
        bump(stats, cfg.c_bytes_out, (uint64_t)data_len);
    PyObject *wake = PyBool_FromLong(publish(sq, 1));
    PyObject *result = PyTuple_Pack(2, ptag, wake);
    Py_DECREF(ptag);
    Py_DECREF(wake);
    return result;
fail:
    PyBuffer_Release(&body);
    return NULL;
}

/* reap() -> Completion | None */
static PyObject *ClientCore_reap(ClientCore *self, PyObject *unused)
{
    (void)unused;
    Ring *cq = self->cq;
    unsigned char h[COMPLETION_SIZE];
    for (;;) {
        long long ready = consumer_available(cq);
        if (ready < 0)
            return NULL;
        if (ready == 0)
            Py_RETURN_NONE;
        const char *slot = ring_slot(cq, cq->pos);
        if (slot == NULL || live(self->stats_view) < 0)
            return NULL;
        copy_words_in(h, slot, COMPLETION_SIZE); /* each header field read once */
        uint64_t tag = get64(h + R_TAG), value = get64(h + R_VALUE);
        int32_t status = (int32_t)get32(h + R_STATUS), buf = (int32_t)get32(h + R_BUF);
        uint32_t body_len = get32(h + R_BODY_LEN), data_len = get32(h + R_DATA_LEN);
        PyObject *body = NULL;
        if (status > 0) {
            PyErr_Format(cfg.protocol_error,
                         "completion status %d is neither 0 nor a negative errno", status);
        } else if ((Py_ssize_t)body_len > cq->slot_size - COMPLETION_SIZE) {
            PyErr_Format(cfg.protocol_error, "completion body length %u overruns the slot",
                         body_len);
        } else if ((Py_ssize_t)data_len > self->buf_size) {
            PyErr_Format(cfg.protocol_error, "completion data length %u is too large", data_len);
        } else {
            body = decode_body(slot + COMPLETION_SIZE, body_len);
        }
        /* Python ran since the check (error text, msgpack): the views may be gone now. */
        if (live(cq->words) < 0) {
            Py_XDECREF(body);
            return NULL;
        }
        cq->pos += 1; /* released whatever the slot held, as the reference's `finally` */
        store_word(cq->head_p, cq->pos);
        if (body == NULL)
            return NULL;
        PyObject *ptag = PyLong_FromUnsignedLongLong(tag);
        if (ptag == NULL) {
            Py_DECREF(body);
            return NULL;
        }
        PyObject *started = PyDict_GetItemWithError(self->in_flight, ptag);
        if (started == NULL) {
            Py_DECREF(ptag);
            Py_DECREF(body);
            if (PyErr_Occurred())
                return NULL;
            continue; /* not in flight: dropped */
        }
        Py_INCREF(started);
        if (PyDict_DelItem(self->in_flight, ptag) < 0) {
            Py_DECREF(started);
            Py_DECREF(ptag);
            Py_DECREF(body);
            return NULL;
        }
        uint64_t t0 = PyLong_AsUnsignedLongLong(started);
        Py_DECREF(started);
        if (t0 == (uint64_t)-1 && PyErr_Occurred()) {
            Py_DECREF(ptag);
            Py_DECREF(body);
            return NULL;
        }
        uint64_t elapsed = now_ns() - t0;
        if (live(self->stats_view) < 0) {
            Py_DECREF(ptag);
            Py_DECREF(body);
            return NULL;
        }
        uint64_t *stats = self->stats;
        bump(stats, cfg.c_completions, 1);
        bump(stats, cfg.c_latency_sum, elapsed);
        uint64_t us = elapsed / 1000;
        Py_ssize_t bucket = us ? 64 - __builtin_clzll(us) : 0;
        Py_ssize_t last = cfg.latency_buckets - 1;
        bump(stats, cfg.c_latency + (bucket < last ? bucket : last), 1);
        if (data_len)
            bump(stats, cfg.c_bytes_in, data_len);
        PyObject *fields[] = {
            ptag, i32_obj(status), u32_obj(body_len), u32_obj(data_len), i32_obj(buf),
            u64_obj(value), body,
        }; /* Completion's order */
        return new_record(cfg.completion_type, fields, sizeof fields / sizeof fields[0]);
    }
}

static PyMethodDef ClientCore_methods[] = {
    {"post", (PyCFunction)(void (*)(void))ClientCore_post, METH_FASTCALL,
     "Put one command on the SQ; returns (tag, True if the server must be woken)."},
    {"reap", (PyCFunction)ClientCore_reap, METH_NOARGS,
     "The next completion for a command in flight, or None when the CQ is empty."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ClientCore_members[] = {
    {"sq", T_OBJECT, offsetof(ClientCore, sq), READONLY, NULL},
    {"cq", T_OBJECT, offsetof(ClientCore, cq), READONLY, NULL},
    {"token", T_OBJECT, offsetof(ClientCore, token), 0, NULL},
    {"in_flight", T_OBJECT, offsetof(ClientCore, in_flight), READONLY, NULL},
    {"stats", T_OBJECT, offsetof(ClientCore, stats_view), READONLY, NULL},
    {"_next_tag", T_ULONGLONG, offsetof(ClientCore, next_tag), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* ========================================================================================
 * ServerCore: the hot half of channel.protocol.sides_pure.ServerSide (take, take_many,
 * complete, stage, publish).
 * ======================================================================================== */
typedef struct {
    PyObject_HEAD
    Ring *sq, *cq;
    PyObject *token;
    PyObject *pending; /* deque of queued completions (flushed by the Python subclass) */
    Py_ssize_t outstanding;
    /* completions written to CQ slots (cq->pos counts them) whose tail is not stored yet */
    Py_ssize_t staged;
    PyObject *stats_view; /* the side's statistics block (Region.server_stats()) */
    uint64_t *stats;
    Py_ssize_t buf_count, buf_size;
} ServerCore;

/* ServerCore(sq, cq, token, stats, buf_count, buf_size, pending) */
static int ServerCore_init(ServerCore *self, PyObject *args, PyObject *kwds)
{
    Ring *sq, *cq;
    PyObject *token, *pending, *stats;
    Py_ssize_t buf_count, buf_size;
    (void)kwds;
    if (check_ready() < 0)
        return -1;
    if (!PyArg_ParseTuple(args, "O!O!OOnnO", &ConsumerType, &sq, &ProducerType, &cq, &token,
                          &stats, &buf_count, &buf_size, &pending))
        return -1;
    if (stats_ptr(stats, &self->stats) < 0)
        return -1;
    Py_XSETREF(self->stats_view, Py_NewRef(stats));
    Py_XSETREF(self->sq, (Ring *)Py_NewRef(sq));
    Py_XSETREF(self->cq, (Ring *)Py_NewRef(cq));
    Py_XSETREF(self->token, Py_NewRef(token));
    Py_XSETREF(self->pending, Py_NewRef(pending));
    self->outstanding = 0;
    self->staged = 0;
    self->buf_count = buf_count;
    self->buf_size = buf_size;
    return 0;
}

static int ServerCore_traverse(ServerCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sq);
    Py_VISIT(self->cq);
    Py_VISIT(self->token);
    Py_VISIT(self->pending);
    Py_VISIT(self->stats_view);
    return 0;
}

static int ServerCore_clear(ServerCore *self)
{
    Py_CLEAR(self->sq);
    Py_CLEAR(self->cq);
    Py_CLEAR(self->token);
    Py_CLEAR(self->pending);
    Py_CLEAR(self->stats_view);
    return 0;
}

static void ServerCore_dealloc(ServerCore *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ServerCore_clear(self);
    tp->tp_free((PyObject *)self); /* a heap subclass's type is released by CPython */
}

static PyObject *rejected(uint64_t tag, int status)
{
    return PyObject_CallFunction(cfg.rejected_type, "Ki", (unsigned long long)tag, status);
}

/* The command in the SQ's slot at sq->pos, validated and counted: a Command or a Rejected.
 * The caller has checked that the slot is filled and that its completion will find room.
 * sq->pos moves past the slot once everything needed was copied out of it; with
 * `store_head` the head is stored at once, otherwise the caller stores it (take_many, once
 * for all its slots). NULL with an exception: the slot was consumed if sq->pos moved. */
static PyObject *take_slot(ServerCore *self, int store_head)
{
    Ring *sq = self->sq;
    const char *slot = ring_slot(sq, sq->pos);
    if (slot == NULL || live(self->stats_view) < 0)
        return NULL;
    uint64_t *stats = self->stats;
    unsigned char h[COMMAND_SIZE];
    copy_words_in(h, slot, COMMAND_SIZE); /* each shared field read exactly once */
    uint64_t tag = get64(h + C_TAG);
    uint32_t body_len = get32(h + C_BODY_LEN), data_len = get32(h + C_DATA_LEN);
    uint32_t size = get32(h + C_SIZE);
    int32_t buf = (int32_t)get32(h + C_BUF);
    PyObject *body = NULL;
    if ((Py_ssize_t)body_len > sq->slot_size - COMMAND_SIZE) {
        PyErr_Format(cfg.protocol_error, "body length %u overruns the slot", body_len);
    } else if (buf == NO_BUFFER) {
        if (data_len > 0)
            PyErr_Format(cfg.protocol_error, "data length %u without a data buffer", data_len);
    } else if (buf < 0 || buf >= self->buf_count) {
        PyErr_Format(cfg.protocol_error, "data buffer index %d out of range", buf);
    } else if ((Py_ssize_t)data_len > self->buf_size) {
        PyErr_Format(cfg.protocol_error, "data length %u exceeds the buffer size %zd",
                     data_len, self->buf_size);
    } else if ((Py_ssize_t)size > self->buf_size) {
        PyErr_Format(cfg.protocol_error, "size %u exceeds the buffer size %zd", size,
                     self->buf_size);
    }
    if (!PyErr_Occurred())
        body = decode_body(slot + COMMAND_SIZE, body_len); /* the bound was checked above */
    /* Python ran since the checks (error text, msgpack): the views may be gone now. */
    if (live(sq->words) < 0 || live(self->stats_view) < 0) {
        Py_XDECREF(body);
        return NULL;
    }
    sq->pos += 1; /* everything needed was copied out of the slot */
    if (store_head)
        store_word(sq->head_p, sq->pos);
    self->outstanding += 1;
    bump(stats, cfg.s_commands, 1);
    if (body == NULL) {
        if (!PyErr_ExceptionMatches(cfg.protocol_error))
            return NULL;
        bump(stats, cfg.s_protocol_errors, 1);
        PyErr_Clear();
        return rejected(tag, -EPROTO);
    }
    /* Constant-time token comparison: the reference is channel.protocol.codec.token_matches
       (hmac.compare_digest), which the pure side and the socket server call. */
    unsigned char diff = 1;
    if (self->token != NULL && PyBytes_Check(self->token) && PyBytes_GET_SIZE(self->token) == TOKEN_SIZE) {
        const unsigned char *mine = (const unsigned char *)PyBytes_AS_STRING(self->token);
        diff = 0;
        for (int i = 0; i < TOKEN_SIZE; i++)
            diff |= (unsigned char)(mine[i] ^ h[C_TOKEN + i]);
    }
    if (diff) {
        bump(stats, cfg.s_auth_failures, 1);
        Py_DECREF(body);
        return rejected(tag, -EACCES);
    }
    uint16_t opcode = get16(h + C_OPCODE);
    bump(stats, cfg.s_by_opcode + opcode_counter(opcode), 1);
    PyObject *fields[] = {
        u64_obj(tag), u32_obj(opcode), u32_obj(get16(h + C_FLAGS)), u32_obj(body_len),
        PyBytes_FromStringAndSize((const char *)h + C_TOKEN, TOKEN_SIZE), i32_obj(buf),
        u32_obj(data_len), u64_obj(get64(h + C_INO)), u64_obj(get64(h + C_FH)),
        u64_obj(get64(h + C_OFFSET)), u32_obj(size), u32_obj(get32(h + C_UID)),
        u32_obj(get32(h + C_GID)), u32_obj(get32(h + C_PID)), u32_obj(get32(h + C_UMASK)),
        u32_obj(get32(h + C_RESERVED)), body,
    }; /* Command's order: the header's fields, then the body */
    return new_record(cfg.command_type, fields, sizeof fields / sizeof fields[0]);
}

/* take() -> Command | Rejected | None */
static PyObject *ServerCore_take(ServerCore *self, PyObject *unused)
{
    (void)unused;
    long long ready = consumer_available(self->sq);
    if (ready <= 0)
        return ready < 0 ? NULL : Py_NewRef(Py_None);
    long long free = producer_free(self->cq);
    if (free < 0)
        return NULL;
    if (self->outstanding >= free)
        Py_RETURN_NONE; /* every free CQ slot is promised to a command already taken */
    return take_slot(self, 1);
}

/* take_many(limit) -> list: what up to `limit` calls of take() would return, stopping where
 * take() would return None, from one load of the SQ's tail and one of the CQ's head (each
 * validated as take() validates it); the slots go back to the client with one store of the
 * SQ's head after the last one was copied out. On an error the slots consumed so far are
 * handed back, the commands taken are dropped with the list and the exception is raised
 * (the poller then closes the channel). */
static PyObject *ServerCore_take_many(ServerCore *self, PyObject *arg)
{
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    PyObject *items = PyList_New(0);
    if (items == NULL || limit <= 0)
        return items;
    Ring *sq = self->sq;
    long long ready = consumer_available(sq); /* the tail's one load: ready <= entries */
    if (ready <= 0)
        goto done;
    long long free = producer_free(self->cq); /* the head's one load: free <= entries */
    if (free < 0)
        goto done;
    /* take() would succeed while outstanding + taken < free: every free CQ slot is
     * promised to a command already taken, or to one taken here. */
    long long n = free - (long long)self->outstanding;
    if (n > ready)
        n = ready;
    if (n > limit)
        n = limit;
    unsigned long long start = sq->pos;
    for (long long i = 0; i < n; i++) {
        PyObject *item = take_slot(self, 0);
        if (item == NULL)
            break;
        int appended = PyList_Append(items, item);
        Py_DECREF(item);
        if (appended < 0)
            break;
    }
    /* Python ran since the last check (msgpack, the records): the words may be gone. */
    if (sq->pos != start) {
        if (is_live(sq->words))
            store_word(sq->head_p, sq->pos);
        else if (!PyErr_Occurred())
            (void)live(sq->words); /* raises the released-view error */
    }
done:
    if (PyErr_Occurred())
        Py_CLEAR(items);
    return items;
}

/* Store the CQ's tail once for every completion staged so far; True if the client is parked
 * and must be woken. Callers have checked that the CQ's words are live.
 *
 * Ordering (x86-64): each staged completion was written into its slot with plain stores,
 * earlier in program order than this one release store of the tail, and x86 never makes a
 * store visible before an earlier store, so a client that loads the new tail sees every slot
 * up to it complete (the release order also keeps the compiler from sinking the slots'
 * memcpy below the store). A client that loads the old tail sees none of them and only
 * reads slots below it, which the server does not touch. The fence between the tail store
 * and the flags load is the parking argument above (Dekker), once per batch. */
static PyObject *publish_staged(ServerCore *self)
{
    self->staged = 0;
    return PyBool_FromLong(publish(self->cq, 0));
}

/* complete(tag, status, body=b"", *, data_len=0, buf=NO_BUFFER, value=0) -> wake, and
 * stage(...) -> None: the completion written to the CQ's next slot (queued while the CQ is
 * full or completions are queued already), then, for complete only, published with any
 * staged before it. */
static PyObject *complete_impl(ServerCore *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames, int now)
{
    PyObject *o_tag, *o_status, *o_body = NULL, *o_data_len = NULL, *o_buf = NULL,
                                *o_value = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "complete(tag, status, body=b'', *, data_len, buf, value)");
        return NULL;
    }
    o_tag = args[0];
    o_status = args[1];
    if (nargs == 3)
        o_body = args[2];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i), *v = args[nargs + i];
        if (k == kw_data_len || PyUnicode_Compare(k, kw_data_len) == 0)
            o_data_len = v;
        else if (k == kw_buf || PyUnicode_Compare(k, kw_buf) == 0)
            o_buf = v;
        else if (k == kw_value || PyUnicode_Compare(k, kw_value) == 0)
            o_value = v;
        else {
            PyErr_Format(PyExc_TypeError, "complete() got an unexpected keyword argument '%U'",
                         k);
            return NULL;
        }
    }
    long long status;
    if (!PyLong_Check(o_status)) {
        PyErr_SetString(PyExc_TypeError, "status must be an int");
        return NULL;
    }
    int overflow;
    status = PyLong_AsLongLongAndOverflow(o_status, &overflow);
    if (status == -1 && PyErr_Occurred())
        return NULL;
    if (live(self->stats_view) < 0)
        return NULL;
    self->outstanding -= 1;
    uint64_t *stats = self->stats;
    bump(stats, cfg.s_completions, 1);
    if (overflow < 0 || (!overflow && status < 0))
        bump(stats, cfg.s_errors, 1);
    Ring *cq = self->cq;
    int queue = PyObject_IsTrue(self->pending);
    if (queue < 0)
        return NULL;
    if (!queue) {
        long long free = producer_free(cq);
        if (free < 0)
            return NULL;
        queue = free == 0;
    }
    if (queue) { /* the rare path: queue it and let the reference's flush publish */
        PyObject *item = Py_BuildValue(
            "(OONNNN)", o_tag, o_status,
            o_body ? Py_NewRef(o_body) : PyBytes_FromStringAndSize("", 0),
            o_data_len ? Py_NewRef(o_data_len) : PyLong_FromLong(0),
            o_buf ? Py_NewRef(o_buf) : PyLong_FromLong(NO_BUFFER),
            o_value ? Py_NewRef(o_value) : PyLong_FromLong(0));
        if (item == NULL)
            return NULL;
        PyObject *r = PyObject_CallMethodOneArg(self->pending, s_append, item);
        Py_DECREF(item);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        if (!now)
            Py_RETURN_NONE; /* the next publish() flushes it */
        return PyObject_CallMethodNoArgs((PyObject *)self, s_flush);
    }
    uint64_t tag, value = 0;
    long long data_len = 0, buf = NO_BUFFER, st;
    if (to_u64(o_tag, &tag) < 0 || to_range(o_status, INT32_MIN, INT32_MAX, &st) < 0
        || (o_data_len && to_range(o_data_len, 0, 0xffffffffLL, &data_len) < 0)
        || (o_buf && to_range(o_buf, INT32_MIN, INT32_MAX, &buf) < 0)
        || (o_value && to_u64(o_value, &value) < 0))
        return NULL;
    Py_buffer body = {0};
    if (o_body && PyObject_GetBuffer(o_body, &body, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t n = o_body ? body.len : 0;
    unsigned char h[COMPLETION_SIZE];
    if (n > cq->slot_size - COMPLETION_SIZE) { /* does not fit a slot: EOVERFLOW instead */
        n = 0;
        st = -EOVERFLOW;
        data_len = 0;
        buf = NO_BUFFER;
        value = 0;
    }
    put64(h + R_TAG, tag);
    put32(h + R_STATUS, (uint32_t)(int32_t)st);
    put32(h + R_BODY_LEN, (uint32_t)n);
    put32(h + R_DATA_LEN, (uint32_t)data_len);
    put32(h + R_BUF, (uint32_t)(int32_t)buf);
    put64(h + R_VALUE, value);
    char *slot = ring_slot(cq, cq->pos);
    if (slot == NULL || live(cq->words) < 0) {
        if (o_body)
            PyBuffer_Release(&body);
        return NULL;
    }
    memcpy(slot, h, COMPLETION_SIZE);
    if (n)
        memcpy(slot + COMPLETION_SIZE, body.buf, (size_t)n);
    if (o_body)
        PyBuffer_Release(&body);
    cq->pos += 1; /* the slot is filled; the tail word is stored by publish_staged */
    self->staged += 1;
    if (!now)
        Py_RETURN_NONE;
    return publish_staged(self); /* nothing ran since the live check above */
}

static PyObject *ServerCore_complete(ServerCore *self, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    return complete_impl(self, args, nargs, kwnames, 1);
}

static PyObject *ServerCore_stage(ServerCore *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    return complete_impl(self, args, nargs, kwnames, 0);
}

/* publish() -> wake: make the staged completions visible (and the queued ones, as far as the
 * CQ has room: flush does both); False when there is nothing to publish. */
static PyObject *ServerCore_publish(ServerCore *self, PyObject *unused)
{
    (void)unused;
    int queued = PyObject_IsTrue(self->pending);
    if (queued < 0)
        return NULL;
    if (queued)
        return PyObject_CallMethodNoArgs((PyObject *)self, s_flush);
    if (self->staged == 0)
        Py_RETURN_FALSE;
    RING_LIVE(self->cq, NULL);
    return publish_staged(self);
}

static PyMethodDef ServerCore_methods[] = {
    {"take", (PyCFunction)ServerCore_take, METH_NOARGS,
     "The next command, a Rejected to answer with an error, or None."},
    {"take_many", (PyCFunction)ServerCore_take_many, METH_O,
     "Up to `limit` commands as take() returns them, with one head store."},
    {"complete", (PyCFunction)(void (*)(void))ServerCore_complete,
     METH_FASTCALL | METH_KEYWORDS,
     "Publish (or queue) one completion; True if the client must be woken."},
    {"stage", (PyCFunction)(void (*)(void))ServerCore_stage, METH_FASTCALL | METH_KEYWORDS,
     "Write (or queue) one completion without publishing it."},
    {"publish", (PyCFunction)ServerCore_publish, METH_NOARGS,
     "Publish the staged completions with one tail store; True if the client must be woken."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef ServerCore_members[] = {
    {"sq", T_OBJECT, offsetof(ServerCore, sq), READONLY, NULL},
    {"cq", T_OBJECT, offsetof(ServerCore, cq), READONLY, NULL},
    {"token", T_OBJECT, offsetof(ServerCore, token), 0, NULL},
    {"pending", T_OBJECT, offsetof(ServerCore, pending), READONLY, NULL},
    {"stats", T_OBJECT, offsetof(ServerCore, stats_view), READONLY, NULL},
    {"outstanding", T_PYSSIZET, offsetof(ServerCore, outstanding), 0, NULL},
    {"staged", T_PYSSIZET, offsetof(ServerCore, staged), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ClientCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "channel.protocol._core.ClientCore",
    .tp_basicsize = sizeof(ClientCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hot half of a ClientSide; subclassed by channel.protocol.sides.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ClientCore_init,
    .tp_dealloc = (destructor)ClientCore_dealloc,
    .tp_traverse = (traverseproc)ClientCore_traverse,
    .tp_clear = (inquiry)ClientCore_clear,
    .tp_methods = ClientCore_methods,
    .tp_members = ClientCore_members,
};

static PyTypeObject ServerCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "channel.protocol._core.ServerCore",
    .tp_basicsize = sizeof(ServerCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hot half of a ServerSide; subclassed by channel.protocol.sides.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ServerCore_init,
    .tp_dealloc = (destructor)ServerCore_dealloc,
    .tp_traverse = (traverseproc)ServerCore_traverse,
    .tp_clear = (inquiry)ServerCore_clear,
    .tp_methods = ServerCore_methods,
    .tp_members = ServerCore_members,
};

/* ========================================================================================
 * configure(**constants): the layout's numbers and the reference's types, once at import.
 * ======================================================================================== */
static int get_n(PyObject *d, const char *key, Py_ssize_t *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "configure() needs %s", key);
        return -1;
    }
    *out = PyLong_AsSsize_t(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int get_o(PyObject *d, const char *key, PyObject **out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "configure() needs %s", key);
        return -1;
    }
    Py_XSETREF(*out, Py_NewRef(v));
    return 0;
}

static PyObject *configure(PyObject *module, PyObject *args, PyObject *kwds)
{
    (void)module;
    Py_ssize_t wake;
    if (PyTuple_GET_SIZE(args) || kwds == NULL) {
        PyErr_SetString(PyExc_TypeError, "configure() takes keyword arguments only");
        return NULL;
    }
    if (get_n(kwds, "NEED_WAKEUP", &wake) < 0
        || get_n(kwds, "OPCODE_COUNTERS", &cfg.opcode_counters) < 0
        || get_n(kwds, "LATENCY_BUCKETS", &cfg.latency_buckets) < 0
        || get_n(kwds, "STATS_WORDS", &cfg.stats_words) < 0
        || get_n(kwds, "C_COMMANDS", &cfg.c_commands) < 0
        || get_n(kwds, "C_COMPLETIONS", &cfg.c_completions) < 0
        || get_n(kwds, "C_BYTES_OUT", &cfg.c_bytes_out) < 0
        || get_n(kwds, "C_BYTES_IN", &cfg.c_bytes_in) < 0
        || get_n(kwds, "C_LATENCY_SUM_NS", &cfg.c_latency_sum) < 0
        || get_n(kwds, "C_LATENCY", &cfg.c_latency) < 0
        || get_n(kwds, "C_BY_OPCODE", &cfg.c_by_opcode) < 0
        || get_n(kwds, "S_COMMANDS", &cfg.s_commands) < 0
        || get_n(kwds, "S_COMPLETIONS", &cfg.s_completions) < 0
        || get_n(kwds, "S_ERRORS", &cfg.s_errors) < 0
        || get_n(kwds, "S_AUTH_FAILURES", &cfg.s_auth_failures) < 0
        || get_n(kwds, "S_PROTOCOL_ERRORS", &cfg.s_protocol_errors) < 0
        || get_n(kwds, "S_BY_OPCODE", &cfg.s_by_opcode) < 0
        || get_o(kwds, "ProtocolError", &cfg.protocol_error) < 0
        || get_o(kwds, "struct_error", &cfg.struct_error) < 0
        || get_o(kwds, "Command", &cfg.command_type) < 0
        || get_o(kwds, "Completion", &cfg.completion_type) < 0
        || get_o(kwds, "Rejected", &cfg.rejected_type) < 0
        || get_o(kwds, "unpack_body", &cfg.unpack_body) < 0)
        return NULL;
    /* Every counter index must lie inside the statistics block. */
    Py_ssize_t words = cfg.stats_words;
    Py_ssize_t single[] = {cfg.c_commands, cfg.c_completions, cfg.c_bytes_out, cfg.c_bytes_in,
                           cfg.c_latency_sum, cfg.s_commands, cfg.s_completions, cfg.s_errors,
                           cfg.s_auth_failures, cfg.s_protocol_errors};
    for (size_t i = 0; i < sizeof single / sizeof single[0]; i++)
        if (single[i] < 0 || single[i] >= words)
            goto bad;
    if (cfg.opcode_counters < 1 || cfg.latency_buckets < 1 || cfg.c_latency < 0
        || cfg.c_latency + cfg.latency_buckets > words || cfg.c_by_opcode < 0
        || cfg.c_by_opcode + cfg.opcode_counters > words || cfg.s_by_opcode < 0
        || cfg.s_by_opcode + cfg.opcode_counters > words || wake <= 0)
        goto bad;
    /* new_record builds these in place: plain tuple subclasses, no fields of their own. */
    PyObject *records[] = {cfg.command_type, cfg.completion_type};
    for (size_t i = 0; i < 2; i++) {
        PyTypeObject *t = (PyTypeObject *)records[i];
        if (!PyType_Check(records[i]) || !PyType_IsSubtype(t, &PyTuple_Type)
            || t->tp_basicsize != PyTuple_Type.tp_basicsize
            || t->tp_itemsize != PyTuple_Type.tp_itemsize || t->tp_dictoffset != 0) {
            PyErr_SetString(PyExc_TypeError, "Command and Completion must be plain tuple subclasses");
            return NULL;
        }
    }
    cfg.need_wakeup = (uint64_t)wake;
    cfg.ready = 1;
    Py_RETURN_NONE;
bad:
    PyErr_SetString(PyExc_ValueError, "a statistics index lies outside the block");
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "Hand the layout's constants and the reference's types to the core (once, at import)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "channel.protocol._core",
    "The compiled core of channel.protocol.sides (see channel/protocol/_core.c).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void)
{
    if (PyType_Ready(&ProducerType) < 0 || PyType_Ready(&ConsumerType) < 0
        || PyType_Ready(&ClientCoreType) < 0 || PyType_Ready(&ServerCoreType) < 0)
        return NULL;
    s_flush = PyUnicode_InternFromString("flush");
    s_append = PyUnicode_InternFromString("append");
    kw_data_len = PyUnicode_InternFromString("data_len");
    kw_buf = PyUnicode_InternFromString("buf");
    kw_value = PyUnicode_InternFromString("value");
    if (!s_flush || !s_append || !kw_data_len || !kw_buf || !kw_value)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL)
        return NULL;
    PyObject *layout = Py_BuildValue(
        "{s:(nnnnnnnnnnnnnnnnn),s:(nnnnnnn)}",
        "command", (Py_ssize_t)C_TAG, (Py_ssize_t)C_OPCODE, (Py_ssize_t)C_FLAGS,
        (Py_ssize_t)C_BODY_LEN, (Py_ssize_t)C_TOKEN, (Py_ssize_t)C_BUF, (Py_ssize_t)C_DATA_LEN,
        (Py_ssize_t)C_INO, (Py_ssize_t)C_FH, (Py_ssize_t)C_OFFSET, (Py_ssize_t)C_SIZE,
        (Py_ssize_t)C_UID, (Py_ssize_t)C_GID, (Py_ssize_t)C_PID, (Py_ssize_t)C_UMASK,
        (Py_ssize_t)C_RESERVED, (Py_ssize_t)COMMAND_SIZE,
        "completion", (Py_ssize_t)R_TAG, (Py_ssize_t)R_STATUS, (Py_ssize_t)R_BODY_LEN,
        (Py_ssize_t)R_DATA_LEN, (Py_ssize_t)R_BUF, (Py_ssize_t)R_VALUE,
        (Py_ssize_t)COMPLETION_SIZE);
    if (layout == NULL || PyModule_AddObject(m, "HEADER_LAYOUT", layout) < 0
        || PyModule_AddIntConstant(m, "TOKEN_SIZE", TOKEN_SIZE) < 0
        || PyModule_AddIntConstant(m, "NO_BUFFER", NO_BUFFER) < 0
        || PyModule_AddObjectRef(m, "Producer", (PyObject *)&ProducerType) < 0
        || PyModule_AddObjectRef(m, "Consumer", (PyObject *)&ConsumerType) < 0
        || PyModule_AddObjectRef(m, "ClientCore", (PyObject *)&ClientCoreType) < 0
        || PyModule_AddObjectRef(m, "ServerCore", (PyObject *)&ServerCoreType) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
