/* gatestream._transcode: Avro (Confluent-framed) -> PostgreSQL binary COPY tuples, a batch per call.
 *
 * The Python side (gatestream.consumers.avro_plan) compiles, per (topic, writer schema id),
 * a "plan" from the writer and reader schemas: which writer fields to read and how
 * (schema resolution as fastavro does it), into which slot, and how each table column is
 * written from its slot. add() is MicroBatch.add_many's loop over a consume() batch: it
 * runs the plans with the GIL released and appends each message's COPY tuple (bytes) to
 * its table's rows, with the partition bookkeeping the Python path keeps.
 *
 * A message the plans do not handle goes to the caller's Python path for that one message
 * (fastavro, the plausibility checks, psycopg's dumpers), which produces the row or the
 * dead letter with today's reason and detail. So this code only has to be right where it
 * says yes; any doubt (a value out of range, bytes that are not valid UTF-8, a union index
 * out of range, trailing bytes, an implausible time) is a "no".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { RT_NULL, RT_BOOL, RT_INT, RT_LONG, RT_FLOAT, RT_DOUBLE, RT_STRING, RT_BYTES, RT_UNION, RT_ERROR };
enum { CV_NONE, CV_DOUBLE, CV_AS_BYTES, CV_AS_STRING };
enum { K_NULL, K_BOOL, K_INT, K_DOUBLE, K_STR, K_BYTES };
enum { E_INT2, E_INT4, E_INT8, E_FLOAT8, E_TEXT, E_UUID, E_TSTZ, E_BOOL, E_BYTEA, E_CONST };

typedef struct { int32_t rt, cv, slot; } Op;

typedef struct {
    int kind;
    int64_t i;
    double d;
    const unsigned char *p;
    Py_ssize_t n;
} Slot;

typedef struct {
    int32_t nslots;
    int32_t nops;      /* top-level ops (a union op is followed by its branch ops) */
    int32_t ncodes;    /* total Op entries */
    Op *ops;
    int32_t ncols;
    int32_t *col_slot, *col_enc, *col_const;
    int32_t time_slot; /* -1: none */
    int32_t nids;
    int32_t *id_slots;
    PyObject *consts;  /* tuple of bytes: pre-encoded constant columns (length prefix included) */
} Plan;

static const char *CAPSULE = "gatestream._transcode.Plan";

static void plan_free(PyObject *cap) {
    Plan *p = (Plan *)PyCapsule_GetPointer(cap, CAPSULE);
    if (p == NULL) return;
    PyMem_Free(p->ops);
    PyMem_Free(p->col_slot);
    PyMem_Free(p->col_enc);
    PyMem_Free(p->col_const);
    PyMem_Free(p->id_slots);
    Py_XDECREF(p->consts);
    PyMem_Free(p);
}

/* plan(codes: tuple[int, ...], consts: tuple[bytes, ...]) -> capsule
 * codes: nslots, nops, ncodes, (rt, cv, slot) * ncodes, ncols, (slot, enc, const) * ncols,
 *        time_slot, nids, id_slot * nids */
static PyObject *make_plan(PyObject *self, PyObject *args) {
    PyObject *codes, *consts;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &codes, &PyTuple_Type, &consts)) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(codes), at = 0;
    int32_t *c = PyMem_Malloc(sizeof(int32_t) * (n + 1));
    if (c == NULL) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(codes, i));
        if (v == -1 && PyErr_Occurred()) { PyMem_Free(c); return NULL; }
        c[i] = (int32_t)v;
    }
    Plan *p = PyMem_Calloc(1, sizeof(Plan));
    if (p == NULL) { PyMem_Free(c); return PyErr_NoMemory(); }
#define NEED(k) if (at + (k) > n) goto bad
    NEED(3);
    p->nslots = c[at++]; p->nops = c[at++]; p->ncodes = c[at++];
    if (p->nslots < 0 || p->nslots > 4096 || p->ncodes < 0) goto bad;
    NEED(3 * (Py_ssize_t)p->ncodes);
    p->ops = PyMem_Malloc(sizeof(Op) * (p->ncodes + 1));
    if (p->ops == NULL) goto oom;
    for (int32_t i = 0; i < p->ncodes; i++) {
        p->ops[i].rt = c[at++]; p->ops[i].cv = c[at++]; p->ops[i].slot = c[at++];
        if (p->ops[i].slot >= p->nslots) goto bad;
    }
    /* run_plan reads a union's branch op at ops[i + 1 + branch index], the index bounded
     * only by the union's branch count: every branch op must be inside the plan (and none
     * a union itself), or a message with a high index reads past ops. */
    for (int32_t i = 0; i < p->ncodes; i++) {
        if (p->ops[i].rt != RT_UNION) continue;
        int32_t nb = p->ops[i].cv;
        if (nb < 1 || nb > p->ncodes - 1 - i) goto bad;
        for (int32_t b = 1; b <= nb; b++)
            if (p->ops[i + b].rt == RT_UNION) goto bad;
        i += nb;
    }
    NEED(1);
    p->ncols = c[at++];
    if (p->ncols < 0 || p->ncols > 1600) goto bad;
    NEED(3 * (Py_ssize_t)p->ncols);
    p->col_slot = PyMem_Malloc(sizeof(int32_t) * (p->ncols + 1));
    p->col_enc = PyMem_Malloc(sizeof(int32_t) * (p->ncols + 1));
    p->col_const = PyMem_Malloc(sizeof(int32_t) * (p->ncols + 1));
    if (p->col_slot == NULL || p->col_enc == NULL || p->col_const == NULL) goto oom;
    for (int32_t i = 0; i < p->ncols; i++) {
        p->col_slot[i] = c[at++]; p->col_enc[i] = c[at++]; p->col_const[i] = c[at++];
        if (p->col_enc[i] == E_CONST) {
            if (p->col_const[i] < 0 || p->col_const[i] >= PyTuple_GET_SIZE(consts) ||
                !PyBytes_Check(PyTuple_GET_ITEM(consts, p->col_const[i])))
                goto bad;
        } else if (p->col_slot[i] < 0 || p->col_slot[i] >= p->nslots) goto bad;
    }
    NEED(2);
    p->time_slot = c[at++];
    p->nids = c[at++];
    if (p->time_slot >= p->nslots || p->nids < 0) goto bad;
    NEED(p->nids);
    p->id_slots = PyMem_Malloc(sizeof(int32_t) * (p->nids + 1));
    if (p->id_slots == NULL) goto oom;
    for (int32_t i = 0; i < p->nids; i++) {
        p->id_slots[i] = c[at++];
        if (p->id_slots[i] < 0 || p->id_slots[i] >= p->nslots) goto bad;
    }
    if (at != n) goto bad;
#undef NEED
    PyMem_Free(c);
    Py_INCREF(consts);
    p->consts = consts;
    PyObject *cap = PyCapsule_New(p, CAPSULE, plan_free);
    if (cap == NULL) {  /* the plan is not the capsule's yet: freed here */
        Py_DECREF(consts);
        PyMem_Free(p->ops); PyMem_Free(p->col_slot); PyMem_Free(p->col_enc); PyMem_Free(p->col_const);
        PyMem_Free(p->id_slots); PyMem_Free(p);
    }
    return cap;
bad:
    PyErr_SetString(PyExc_ValueError, "malformed transcoder plan");
    goto fail;
oom:
    PyErr_NoMemory();
fail:
    PyMem_Free(c);
    PyMem_Free(p->ops); PyMem_Free(p->col_slot); PyMem_Free(p->col_enc); PyMem_Free(p->col_const);
    PyMem_Free(p->id_slots); PyMem_Free(p);
    return NULL;
}

/* ------------------------------------------------------------------ Avro reading */
typedef struct { const unsigned char *p, *end; } In;

/* A zigzag varint of at most 10 bytes whose value fits 64 bits; else 0 (not handled). */
static int read_long(In *in, int64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (in->p >= in->end) return 0;
        unsigned b = *in->p++;
        if (i == 9 && b > 1) return 0;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 1;
        }
    }
    return 0;
}

/* Well-formed UTF-8 exactly as Python's strict decoder accepts it. */
static int utf8_ok(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= n || (s[i + 1] & 0xc0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= n) return 0;
            unsigned c1 = s[i + 1];
            if ((c1 & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80) return 0;
            if (c == 0xe0 && c1 < 0xa0) return 0;  /* overlong */
            if (c == 0xed && c1 > 0x9f) return 0;  /* surrogates */
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= n) return 0;
            unsigned c1 = s[i + 1];
            if ((c1 & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 || (s[i + 3] & 0xc0) != 0x80) return 0;
            if (c == 0xf0 && c1 < 0x90) return 0;  /* overlong */
            if (c == 0xf4 && c1 > 0x8f) return 0;  /* past U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static int read_one(In *in, int rt, int cv, Slot *s) {
    int64_t v;
    switch (rt) {
    case RT_NULL:
        s->kind = K_NULL;
        return 1;
    case RT_BOOL:
        if (in->p >= in->end || *in->p > 1) return 0;
        s->kind = K_BOOL; s->i = *in->p++;
        return 1;
    case RT_INT:
        if (!read_long(in, &v) || v < INT32_MIN || v > INT32_MAX) return 0;
        goto integer;
    case RT_LONG:
        if (!read_long(in, &v)) return 0;
    integer:
        if (cv == CV_DOUBLE) { s->kind = K_DOUBLE; s->d = (double)v; }
        else { s->kind = K_INT; s->i = v; }
        return 1;
    case RT_FLOAT: {
        if (in->end - in->p < 4) return 0;
        float f;
        memcpy(&f, in->p, 4);
        in->p += 4;
        s->kind = K_DOUBLE; s->d = (double)f;
        return 1;
    }
    case RT_DOUBLE:
        if (in->end - in->p < 8) return 0;
        memcpy(&s->d, in->p, 8);
        in->p += 8;
        s->kind = K_DOUBLE;
        return 1;
    case RT_STRING:
    case RT_BYTES:
        if (!read_long(in, &v) || v < 0 || v > in->end - in->p) return 0;
        s->p = in->p; s->n = (Py_ssize_t)v;
        in->p += v;
        /* fastavro decodes every string strictly (also one it skips, or promotes to bytes) */
        if ((rt == RT_STRING || cv == CV_AS_STRING) && !utf8_ok(s->p, s->n)) return 0;
        s->kind = (rt == RT_STRING) != (cv == CV_AS_BYTES || cv == CV_AS_STRING) ? K_STR : K_BYTES;
        return 1;
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------ COPY writing */
typedef struct { unsigned char *buf; size_t len, cap; int oom; } Out;

static unsigned char *grow(Out *o, size_t more) {
    if (o->len + more > o->cap) {
        size_t cap = o->cap ? o->cap : 65536;
        while (cap < o->len + more) cap *= 2;
        unsigned char *b = PyMem_RawRealloc(o->buf, cap);
        if (b == NULL) { o->oom = 1; return NULL; }
        o->buf = b; o->cap = cap;
    }
    unsigned char *at = o->buf + o->len;
    o->len += more;
    return at;
}

static void be32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void be64(unsigned char *p, uint64_t v) { be32(p, (uint32_t)(v >> 32)); be32(p + 4, (uint32_t)v); }

static int hexval(unsigned c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

#define PG_EPOCH_MS INT64_C(946684800000)

static int write_col(Out *o, const Slot *s, int enc) {
    unsigned char *w;
    if (s->kind == K_NULL) {
        if (!(w = grow(o, 4))) return 0;
        be32(w, 0xffffffffu);
        return 1;
    }
    switch (enc) {
    case E_INT2: case E_INT4: case E_INT8: {
        if (s->kind != K_INT) return 0;
        int64_t v = s->i;
        int size = enc == E_INT2 ? 2 : enc == E_INT4 ? 4 : 8;
        if (size == 2 && (v < INT16_MIN || v > INT16_MAX)) return 0;
        if (size == 4 && (v < INT32_MIN || v > INT32_MAX)) return 0;
        if (!(w = grow(o, 4 + size))) return 0;
        be32(w, size);
        if (size == 2) { w[4] = (uint16_t)v >> 8; w[5] = (uint8_t)v; }
        else if (size == 4) be32(w + 4, (uint32_t)v);
        else be64(w + 4, (uint64_t)v);
        return 1;
    }
    case E_TSTZ: {
        if (s->kind != K_INT) return 0;
        int64_t us;
        if (__builtin_sub_overflow(s->i, PG_EPOCH_MS, &us) || __builtin_mul_overflow(us, 1000, &us)) return 0;
        if (!(w = grow(o, 12))) return 0;
        be32(w, 8);
        be64(w + 4, (uint64_t)us);
        return 1;
    }
    case E_FLOAT8: {
        if (s->kind != K_DOUBLE) return 0;
        uint64_t bits;
        memcpy(&bits, &s->d, 8);
        if (!(w = grow(o, 12))) return 0;
        be32(w, 8);
        be64(w + 4, bits);
        return 1;
    }
    case E_BOOL:
        if (s->kind != K_BOOL) return 0;
        if (!(w = grow(o, 5))) return 0;
        be32(w, 1);
        w[4] = (unsigned char)s->i;
        return 1;
    case E_TEXT:
    case E_BYTEA:
        if (s->kind != (enc == E_TEXT ? K_STR : K_BYTES) || s->n > INT32_MAX) return 0;
        if (!(w = grow(o, 4 + s->n))) return 0;
        be32(w, (uint32_t)s->n);
        memcpy(w + 4, s->p, s->n);
        return 1;
    case E_UUID: {
        /* as the Python dumper: the hex digits once the dashes are removed, 16 bytes */
        if (s->kind != K_STR) return 0;
        unsigned char raw[16];
        int nd = 0, hi = -1;
        for (Py_ssize_t i = 0; i < s->n; i++) {
            unsigned c = s->p[i];
            if (c == '-') continue;
            int h = hexval(c);
            if (h < 0 || nd >= 32) return 0;
            if (hi < 0) hi = h;
            else { raw[nd / 2] = (unsigned char)(hi << 4 | h); hi = -1; }
            nd++;
        }
        if (nd != 32) return 0;
        if (!(w = grow(o, 20))) return 0;
        be32(w, 16);
        memcpy(w + 4, raw, 16);
        return 1;
    }
    default:
        return 0;
    }
}

/* One message body (after the 5-byte header): 1 and the tuple appended, or 0 and nothing. */
static int run_plan(const Plan *pl, const unsigned char *body, Py_ssize_t n, Out *o, Slot *slots,
                    int64_t lo_ms, int64_t hi_ms, int check_ids, PyObject **const_data) {
    In in = {body, body + n};
    Slot scratch;
    for (int32_t k = 0; k < pl->nslots; k++) slots[k].kind = -1;
    for (int32_t i = 0; i < pl->ncodes; i++) {
        const Op *op = &pl->ops[i];
        Slot *s = op->slot >= 0 ? &slots[op->slot] : &scratch;
        if (op->rt == RT_UNION) {
            int64_t idx;
            int32_t nb = op->cv;
            if (!read_long(&in, &idx) || idx < 0 || idx >= nb) return 0;
            const Op *b = &pl->ops[i + 1 + idx];
            if (b->rt == RT_ERROR || !read_one(&in, b->rt, b->cv, s)) return 0;
            i += nb;
        } else if (!read_one(&in, op->rt, op->cv, s)) {
            return 0;
        }
    }
    if (in.p != in.end) return 0;  /* bytes left after the record */
    if (pl->time_slot >= 0) {
        const Slot *t = &slots[pl->time_slot];
        if (t->kind == K_BOOL) return 0;
        if (t->kind == K_INT && (t->i < lo_ms || t->i > hi_ms)) return 0;
    }
    if (check_ids) {
        for (int32_t k = 0; k < pl->nids; k++) {
            const Slot *s = &slots[pl->id_slots[k]];
            if (s->kind == K_BOOL || (s->kind == K_INT && s->i <= 0)) return 0;
        }
    }
    size_t start = o->len;
    unsigned char *w = grow(o, 2);
    if (!w) return 0;
    w[0] = (unsigned char)(pl->ncols >> 8); w[1] = (unsigned char)pl->ncols;
    for (int32_t c = 0; c < pl->ncols; c++) {
        int ok;
        if (pl->col_enc[c] == E_CONST) {
            PyObject *b = const_data[c];
            Py_ssize_t len = PyBytes_GET_SIZE(b);
            ok = (w = grow(o, len)) != NULL;
            if (ok) memcpy(w, PyBytes_AS_STRING(b), len);
        } else {
            const Slot *s = &slots[pl->col_slot[c]];
            ok = s->kind >= 0 && write_col(o, s, pl->col_enc[c]);
        }
        if (!ok) { o->len = start; return 0; }
    }
    return 1;
}

/* ------------------------------------------------------------------ the batch call */
static PyObject *s_error, *s_topic, *s_partition, *s_offset, *s_value;

typedef struct {
    PyObject *value;      /* owned; NULL: the Python path takes this message */
    const Plan *plan;
    Py_ssize_t topic;     /* index into the call's list of distinct topics */
    int64_t partition, offset;
    size_t start, end;
    int ok;               /* the plan made a tuple: [start, end) of the buffer */
} Item;

/* The partition of a run of messages, its bookkeeping held in C while the run lasts and
 * written back (nxt[tp] = ends[tp] = next) before anything else can look at it. */
typedef struct {
    PyObject *key;        /* (topic, partition), owned; NULL: no run */
    Py_ssize_t topic;
    int64_t partition, next, limit;
    int owned, has_limit, dirty;
    PyObject *rows, *origins;  /* borrowed from sinks */
} Run;

static int run_flush(Run *r, PyObject *nxt, PyObject *ends) {
    if (r->key != NULL && r->dirty) {
        PyObject *v = PyLong_FromLongLong(r->next);
        if (v == NULL) return -1;
        int bad = PyDict_SetItem(nxt, r->key, v) < 0 || PyDict_SetItem(ends, r->key, v) < 0;
        Py_DECREF(v);
        if (bad) return -1;
    }
    r->dirty = 0;
    Py_CLEAR(r->key);
    return 0;
}

/* As the Python path sees a message of (topic, partition): owned?  nxt.get(tp, 0), the
 * bounded range's end (limits.get(tp), only when limits is not empty), the table's lists. */
static int run_load(Run *r, PyObject *topics, Py_ssize_t t, int64_t partition, PyObject *owned, PyObject *nxt,
                    PyObject *limits, PyObject *sinks) {
    PyObject *topic = PyList_GET_ITEM(topics, t);
    r->key = Py_BuildValue("(OL)", topic, (long long)partition);
    if (r->key == NULL) return -1;
    r->topic = t; r->partition = partition; r->dirty = 0;
    r->owned = PySet_Contains(owned, r->key);
    if (r->owned < 0) return -1;
    PyObject *v = PyDict_GetItemWithError(nxt, r->key);
    if (v == NULL && PyErr_Occurred()) return -1;
    r->next = v == NULL ? 0 : PyLong_AsLongLong(v);
    if (r->next == -1 && PyErr_Occurred()) return -1;
    r->has_limit = 0;
    if (PyDict_GET_SIZE(limits) > 0) {
        v = PyDict_GetItemWithError(limits, r->key);
        if (v == NULL && PyErr_Occurred()) return -1;
        if (v != NULL && v != Py_None) {
            r->limit = PyLong_AsLongLong(v);
            if (r->limit == -1 && PyErr_Occurred()) return -1;
            r->has_limit = 1;
        }
    }
    PyObject *sink = PyDict_GetItemWithError(sinks, topic);
    if (sink == NULL) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "no table for topic %R", topic);
        return -1;
    }
    if (!PyTuple_Check(sink) || PyTuple_GET_SIZE(sink) != 2 || !PyList_Check(PyTuple_GET_ITEM(sink, 0)) ||
        !PyList_Check(PyTuple_GET_ITEM(sink, 1))) {
        PyErr_SetString(PyExc_TypeError, "sinks: topic -> (rows list, origins list)");
        return -1;
    }
    r->rows = PyTuple_GET_ITEM(sink, 0);
    r->origins = PyTuple_GET_ITEM(sink, 1);
    return 0;
}

static int as_int64(PyObject *o, int64_t *out) {
    if (o == NULL) return -1;
    if (!PyLong_Check(o)) { Py_DECREF(o); return 0; }
    long long v = PyLong_AsLongLong(o);
    Py_DECREF(o);
    if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
    *out = v;
    return 1;
}

/* Messages per round of the three phases below: small enough that a round's messages
 * and values are still in the core's cache when the plans run and when the rows are
 * appended (a whole 10k-message batch at once missed the cache on every value). */
#define CHUNK 512

typedef struct {
    PyObject *msgs, *plans, *owned, *nxt, *limits, *ends, *sinks, *fallback;
    int64_t lo_ms, hi_ms;
    int check_ids;
    PyObject *topics;   /* the distinct topics met, in order (Item.topic indexes it) */
    Py_ssize_t last_t;
    PyObject *last_map; /* plans[topics[last_t]], borrowed (plans is not changed during the call) */
    Item items[CHUNK];
    Out out;
    Run run;
    long long read, added;
} Call;

/* The index of ``topic`` in c->topics (appended if new); -1 on error. */
static Py_ssize_t topic_index(Call *c, PyObject *topic) {
    if (c->last_t >= 0) {
        PyObject *lt = PyList_GET_ITEM(c->topics, c->last_t);
        int eq = topic == lt ? 1 : PyObject_RichCompareBool(topic, lt, Py_EQ);
        if (eq != 0) return eq < 0 ? -1 : c->last_t;
    }
    Py_ssize_t t = -1;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(c->topics) && t < 0; k++) {
        int eq = PyObject_RichCompareBool(topic, PyList_GET_ITEM(c->topics, k), Py_EQ);
        if (eq < 0) return -1;
        if (eq) t = k;
    }
    if (t < 0) {
        if (PyList_Append(c->topics, topic) < 0) return -1;
        t = PyList_GET_SIZE(c->topics) - 1;
    }
    c->last_map = PyDict_GetItemWithError(c->plans, topic);
    if (c->last_map == NULL && PyErr_Occurred()) return -1;
    c->last_t = t;
    return t;
}

/* Phase 1 (GIL): what msgs[i] is and which plan, if any, transcodes it; -1 on error. */
static int gather(Call *c, Py_ssize_t i, Item *it) {
    PyObject *msg = PyList_GET_ITEM(c->msgs, i);
    memset(it, 0, sizeof(Item));
    PyObject *err = PyObject_CallMethodNoArgs(msg, s_error);
    if (err == NULL) return -1;
    int has_err = err != Py_None;
    Py_DECREF(err);
    if (has_err) return 0;
    PyObject *topic = PyObject_CallMethodNoArgs(msg, s_topic);
    if (topic == NULL) return -1;
    Py_ssize_t t = topic_index(c, topic);
    Py_DECREF(topic);
    if (t < 0) return -1;
    PyObject *map = c->last_map;
    if (map == NULL || !PyDict_Check(map)) return 0;
    PyObject *value = PyObject_CallMethodNoArgs(msg, s_value);
    if (value == NULL) return -1;
    if (!PyBytes_Check(value) || PyBytes_GET_SIZE(value) < 6 || PyBytes_AS_STRING(value)[0] != 0) {
        Py_DECREF(value);
        return 0;
    }
    const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
    unsigned long sid = (unsigned long)v[1] << 24 | (unsigned long)v[2] << 16 | (unsigned long)v[3] << 8 | v[4];
    PyObject *key = PyLong_FromUnsignedLong(sid);
    if (key == NULL) { Py_DECREF(value); return -1; }
    PyObject *cap = PyDict_GetItemWithError(map, key);
    Py_DECREF(key);
    if (cap == NULL && PyErr_Occurred()) { Py_DECREF(value); return -1; }
    if (cap == NULL || !PyCapsule_IsValid(cap, CAPSULE)) { Py_DECREF(value); return 0; }
    int got = as_int64(PyObject_CallMethodNoArgs(msg, s_partition), &it->partition);
    if (got > 0) got = as_int64(PyObject_CallMethodNoArgs(msg, s_offset), &it->offset);
    if (got <= 0) {  /* an error, or not an int (the Python path's business) */
        Py_DECREF(value);
        return got;
    }
    it->value = value;
    it->topic = t;
    it->plan = PyCapsule_GetPointer(cap, CAPSULE);
    return 0;
}

/* Phase 2 (no GIL): the plans run over items[0:k]; 0 when out of memory. */
static int decode(Call *c, Py_ssize_t k) {
    int32_t maxslots = 1, maxcols = 1;
    for (Py_ssize_t i = 0; i < k; i++) {
        const Plan *pl = c->items[i].plan;
        if (pl != NULL && pl->nslots > maxslots) maxslots = pl->nslots;
        if (pl != NULL && pl->ncols > maxcols) maxcols = pl->ncols;
    }
    Slot *slots = PyMem_RawMalloc(sizeof(Slot) * maxslots);
    PyObject **consts = PyMem_RawMalloc(sizeof(PyObject *) * maxcols);
    Out *o = &c->out;
    o->len = 0;
    if (slots != NULL && consts != NULL) {
        Py_BEGIN_ALLOW_THREADS
        const Plan *cur = NULL;
        for (Py_ssize_t i = 0; i < k && !o->oom; i++) {
            Item *it = &c->items[i];
            const Plan *pl = it->plan;
            if (pl == NULL) continue;
            if (pl != cur) {  /* constant columns: the bytes objects, fetched once per plan */
                for (int32_t j = 0; j < pl->ncols; j++)
                    consts[j] = pl->col_enc[j] == E_CONST ? PyTuple_GET_ITEM(pl->consts, pl->col_const[j]) : NULL;
                cur = pl;
            }
            const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(it->value);
            it->start = o->len;
            it->ok = run_plan(pl, v + 5, PyBytes_GET_SIZE(it->value) - 5, o, slots, c->lo_ms, c->hi_ms, c->check_ids,
                              consts);
            it->end = o->len;
        }
        Py_END_ALLOW_THREADS
    }
    int ok = slots != NULL && consts != NULL && !o->oom;
    PyMem_RawFree(slots);
    PyMem_RawFree(consts);
    if (!ok) PyErr_NoMemory();
    return ok;
}

/* Phase 3 (GIL): items[0:k] (msgs[base:base+k]) in order; 1: go on, 0: stopped, -1: error. */
static int apply(Call *c, Py_ssize_t base, Py_ssize_t k) {
    Run *run = &c->run;
    for (Py_ssize_t j = 0; j < k; j++) {
        Item *it = &c->items[j];
        if (!it->ok) {
            if (run_flush(run, c->nxt, c->ends) < 0) return -1;
            PyObject *r = PyObject_CallFunction(c->fallback, "n", base + j);
            if (r == NULL) return -1;
            long got = PyLong_AsLong(r);
            Py_DECREF(r);
            if (got == -1 && PyErr_Occurred()) return -1;
            if (got < 0) return 0;
            c->read += got;
            continue;
        }
        if (run->key == NULL || it->topic != run->topic || it->partition != run->partition) {
            if (run_flush(run, c->nxt, c->ends) < 0) return -1;
            if (run_load(run, c->topics, it->topic, it->partition, c->owned, c->nxt, c->limits, c->sinks) < 0)
                return -1;
        }
        if (!run->owned || it->offset < run->next) continue;  /* from before a revoke or a seek */
        if (run->has_limit && it->offset >= run->limit) continue;  /* past the end of a bounded range */
        PyObject *row = PyBytes_FromStringAndSize((const char *)c->out.buf + it->start, it->end - it->start);
        if (row == NULL) return -1;
        int bad = PyList_Append(run->rows, row) < 0 ||
                  PyList_Append(run->origins, PyList_GET_ITEM(c->msgs, base + j)) < 0;
        Py_DECREF(row);
        if (bad) return -1;
        run->next = it->offset + 1;
        run->dirty = 1;
        c->read++;
        c->added++;
    }
    return 1;
}

/* add(msgs, plans, lo_ms, hi_ms, check_ids, owned, nxt, limits, ends, sinks, fallback) -> (read, added)
 *
 * MicroBatch.add_many's loop for a whole consume() batch. plans: {topic: {schema_id:
 * capsule}}; owned, nxt, limits: the pipeline's Partitions (owned, next, ends); ends: the
 * batch's offset ends; sinks: {topic: (rows, origins)}, the table batches' lists.
 * By rounds of CHUNK messages:
 * 1. (GIL) each message's error(), topic(), value(), partition(), offset() and plan;
 * 2. (no GIL) the plans run, COPY tuples into one buffer;
 * 3. (GIL) in order: a message with a tuple is checked as the Python path checks it (owned,
 *    not before nxt, not past a bounded range's end) and appended, nxt/ends moved; any other
 *    message (an error event, partition EOF, no plan, a tuple the plan could not make) goes
 *    to fallback(i), the Python path for msgs[i], which returns how many events it read (0
 *    or 1), or -1: stop here (the registry could not be asked; it recorded where). Partition
 *    bookkeeping is written back before each fallback call and at the end, so the Python
 *    path always sees it as it would have left it itself.
 * read counts events read (handled or not), added those appended here. */
static PyObject *add(PyObject *self, PyObject *args) {
    long long lo_ms, hi_ms;
    Call *c = PyMem_Calloc(1, sizeof(Call));
    if (c == NULL) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "O!O!LLpOO!O!O!O!O", &PyList_Type, &c->msgs, &PyDict_Type, &c->plans, &lo_ms, &hi_ms,
                          &c->check_ids, &c->owned, &PyDict_Type, &c->nxt, &PyDict_Type, &c->limits, &PyDict_Type,
                          &c->ends, &PyDict_Type, &c->sinks, &c->fallback)) {
        PyMem_Free(c);
        return NULL;
    }
    if (!PyAnySet_Check(c->owned)) {
        PyMem_Free(c);
        PyErr_SetString(PyExc_TypeError, "owned: a set");
        return NULL;
    }
    c->lo_ms = lo_ms;
    c->hi_ms = hi_ms;
    c->last_t = -1;
    PyObject *msgs = Py_NewRef(c->msgs);  /* its items stay alive while fallback runs Python code */
    PyObject *result = NULL;
    c->topics = PyList_New(0);
    int state = c->topics != NULL ? 1 : -1;
    for (Py_ssize_t base = 0; state == 1 && base < PyList_GET_SIZE(msgs); base += CHUNK) {
        Py_ssize_t k = PyList_GET_SIZE(msgs) - base;  /* (fallback may not change msgs, but never trust it) */
        if (k > CHUNK) k = CHUNK;
        Py_ssize_t got = 0;
        while (got < k && gather(c, base + got, &c->items[got]) == 0) got++;
        if (got == k && decode(c, k))
            state = apply(c, base, k);
        else
            state = -1;
        for (Py_ssize_t j = 0; j < got; j++) Py_CLEAR(c->items[j].value);
    }
    /* what was appended is written back also when a fallback raised */
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (run_flush(&c->run, c->nxt, c->ends) < 0) {
        if (et == NULL) PyErr_Fetch(&et, &ev, &tb);
        else PyErr_Clear();
        state = -1;
    }
    PyErr_Restore(et, ev, tb);
    if (state >= 0) result = Py_BuildValue("(LL)", c->read, c->added);
    PyMem_RawFree(c->out.buf);
    Py_XDECREF(c->topics);
    Py_DECREF(msgs);
    PyMem_Free(c);
    return result;
}

static PyMethodDef methods[] = {
    {"plan", make_plan, METH_VARARGS, "plan(codes, consts) -> an opaque compiled plan"},
    {"add", add, METH_VARARGS,
     "add(msgs, plans, lo_ms, hi_ms, check_ids, owned, nxt, limits, ends, sinks, fallback) -> (read, added)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_transcode",
                                    "Avro -> PostgreSQL binary COPY tuples (see gatestream.consumers.transcoder)",
                                    -1, methods};

PyMODINIT_FUNC PyInit__transcode(void) {
    s_error = PyUnicode_InternFromString("error");
    s_topic = PyUnicode_InternFromString("topic");
    s_partition = PyUnicode_InternFromString("partition");
    s_offset = PyUnicode_InternFromString("offset");
    s_value = PyUnicode_InternFromString("value");
    if (!s_error || !s_topic || !s_partition || !s_offset || !s_value) return NULL;
    return PyModule_Create(&module);
}
