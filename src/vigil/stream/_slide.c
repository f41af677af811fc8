/* Per-key sliding-window count and sum in C: the in-memory index of vigil.stream.vectorised.
 *
 * Why C: once the runtime has decoded a batch, the window is most of a windowed rule's cost.
 * In numpy a batch took a few dozen array passes and a dict lookup per event (2-4 µs an event);
 * here it is one pass, each event a hash-table lookup, a binary search among its key's few
 * entries and an append.  The durable state (chunks, watermark) stays in Python: this index is rebuilt
 * from it after a restart, so nothing here needs saving.
 *
 * The answers are WindowedAggregate's with Window.sliding(size, lateness), event by event: an
 * event at t is late when t is below the watermark as it stood before it (the largest time
 * accepted so far less the lateness); otherwise its window is (t - size, t] over the events of
 * its key accepted before it, and itself.  Sums add the window's values left to right from
 * 0.0 (as Python's sum() did before 3.12), for windows of up to add_up_at_most events; longer windows (a
 * busy key) are differences of running totals kept per key, compensated (see Entry), so that
 * they round about as adding the window up would, not relative to all the key held before it.
 * Values beyond +-2**1000 count as +-2**1000.  Time arithmetic saturates at int64's ends (the
 * caller keeps times, size and lateness within 2**62 of zero, so it never has to).
 * The Python twin is vigil.stream.slide: the same algorithm, used when this module is not
 * built, and held to the same tests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Keys are swept (entries the watermark has passed dropped, empty keys let go) once this many
 * more are held than after the last sweep, at least: memory follows the keys in the window.  And
 * once the watermark has moved a window's size and the lateness since the last sweep (what an
 * entry lives): a burst on a key that then went quiet stayed until as many keys again came (with
 * a steady set of keys, never).  (Every window's size alone, a sweep of every key freed nothing
 * with a long lateness: 12 times the cost an event at a second's window and an hour's lateness.) */
#define SWEEP_MIN 1024
#define MIN_BUCKETS 64
/* How many events ahead update() asks for a key's bucket (and, half as far, for its str and
 * entries).  Measured in-process over 50,000 keys: 0.21 µs an event against 0.25 without. */
#define PREFETCH 8
/* A key with room for more entries than this moves to a smaller array once it holds an eighth
 * of it, and lets go of its array when it empties (see drop). */
#define SHRINK_MIN 64
/* A table of more buckets than this is rebuilt smaller once under an eighth of it is used. */
#define SHRINK_BUCKETS 65536
/* Values are clamped to +-2**1000 (about 1e301; see add). */
#define VALUE_MAX 0x1p1000

/* One accepted event of a key. */
typedef struct {
    int64_t t;
    double v;
    /* The running total up to v, from an origin at or before the key's head, as an unevaluated
     * sum cum + lo: lo gathers what rounding cum lost (Neumaier).  A plain running total rounds
     * relative to everything before it, so once a huge value had left the window its later
     * windows summed to its rounding error (1e17 then a hundred 1.0s: 0.0); with lo, a window
     * rounds about as if added up (to within 2**-104 of the key's totals). */
    double cum, lo;
} Entry;

/* A key and its entries in time order (ties in arrival order): live ones are e[head, len).
 * The table holds these in place, so finding a key touches its bucket, its str (to compare)
 * and its entries: a few cache lines, which is what an event costs over 50,000 keys. */
typedef struct {
    PyObject *key; /* owned; NULL: an empty bucket */
    Py_hash_t hash;
    Entry *e;
    Py_ssize_t head, len, cap;
    /* Where the running totals last restarted: at or before head, before the array's start
     * (negative) once compacted; head - origin entries were dropped since. */
    Py_ssize_t origin;
} Slot;

typedef struct {
    PyObject_HEAD
    int64_t size, lateness;
    Py_ssize_t add_up_at_most, max_key_chars;
    Slot *table; /* open addressing, linear probing; a power of two long, at most half full */
    size_t mask;
    Py_ssize_t used;
    Py_ssize_t sweep_at;
    /* The watermark at the last sweep (INT64_MIN: none yet; the first update sets it). */
    int64_t swept_wm;
    int64_t entries;
} Slide;

static inline int64_t sat_sub(int64_t a, int64_t b) {
    int64_t r;
    if (__builtin_sub_overflow(a, b, &r)) return b > 0 ? INT64_MIN : INT64_MAX;
    return r;
}

/* First place in e[lo, hi) holding a time above x. */
static inline Py_ssize_t upper(const Entry *e, Py_ssize_t lo, Py_ssize_t hi, int64_t x) {
    while (lo < hi) {
        Py_ssize_t mid = lo + ((hi - lo) >> 1);
        if (e[mid].t <= x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void recum(Slot *s, Py_ssize_t from) {
    double run = from > s->head ? s->e[from - 1].cum : 0.0;
    double lo = from > s->head ? s->e[from - 1].lo : 0.0;
    for (Py_ssize_t i = from; i < s->len; i++) {
        double v = s->e[i].v, sum = run + v;
        /* What the addition lost: exact, from the larger addend (Neumaier). */
        lo += fabs(run) >= fabs(v) ? (run - sum) + v : (v - sum) + run;
        run = sum;
        s->e[i].cum = run;
        s->e[i].lo = lo;
    }
}

/* The live entries moved to a new array of cap entries (at least as many), their running totals
 * as they were (they restart where the twin's do: see drop); -1 when that array cannot be had
 * (nothing changed, no exception set). */
static int move_to(Slot *s, Py_ssize_t cap) {
    Py_ssize_t live = s->len - s->head;
    Entry *e = PyMem_Malloc((size_t)cap * sizeof(Entry));
    if (!e) return -1;
    if (live) memcpy(e, s->e + s->head, (size_t)live * sizeof(Entry));
    PyMem_Free(s->e);
    s->e = e;
    s->cap = cap;
    s->origin -= s->head; /* (before the array's start: the entries dropped since are counted) */
    s->head = 0;
    s->len = live;
    return 0;
}

/* Drop the entries at or before cut.  The running totals restart once as many entries were
 * dropped since they last did as are held, and only then, as the twin's do (so the two add
 * alike): a huge value gone then stops blurring the key's sums (restarted only when the array
 * filled, a key with a thousand large values behind a 1e30 answered windows of a hundred 1.0s
 * as 1.0 for as long).  And memory follows what the window holds, not the key's busiest
 * moment: a key holding an eighth of its room moves to a smaller array, and one left empty lets
 * go of its array (200 keys, each a burst of 20,000 events then one an interval, held 206 MiB). */
static void drop(Slot *s, int64_t cut, int64_t *entries) {
    Py_ssize_t head = s->head;
    while (head < s->len && s->e[head].t <= cut) head++;
    if (head == s->head) return;
    *entries -= head - s->head;
    s->head = head;
    Py_ssize_t live = s->len - head;
    if (live == 0) { /* empty: start again at the front */
        s->head = s->len = s->origin = 0;
        if (s->cap > SHRINK_MIN) {
            PyMem_Free(s->e);
            s->e = NULL;
            s->cap = 0;
        }
        return;
    }
    if (head - s->origin >= live) {
        recum(s, head);
        s->origin = head;
    }
    /* (Without memory for a smaller array, the key stays where it is.) */
    if (s->cap > SHRINK_MIN && live <= s->cap / 8) (void)move_to(s, live * 2 > 4 ? live * 2 : 4);
}

/* Room for one more entry at the end: compact first, grow if full. */
static int reserve(Slot *s) {
    if (s->len < s->cap) return 0;
    Py_ssize_t live = s->len - s->head;
    if (s->head > 0 && live <= s->cap / 2) {
        memmove(s->e, s->e + s->head, (size_t)live * sizeof(Entry));
        s->origin -= s->head;
        s->head = 0;
        s->len = live;
        return 0;
    }
    if (move_to(s, s->cap ? s->cap * 2 : 4) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The empty bucket where a key of this hash goes (the key is not in the table). */
static Slot *free_bucket(Slot *table, size_t mask, Py_hash_t hash) {
    size_t i = (size_t)hash & mask;
    while (table[i].key) i = (i + 1) & mask;
    return &table[i];
}

/* A new table of `buckets` buckets: every slot of the old one (growing), or only those with
 * entries after cut (sweeping), the others' keys and entries let go. */
static int rebuild(Slide *self, size_t buckets, int sweeping, int64_t cut) {
    Slot *table = PyMem_Calloc(buckets, sizeof(Slot));
    if (!table) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t used = 0;
    for (size_t i = 0; self->table && i <= self->mask; i++) {
        Slot *s = &self->table[i];
        if (!s->key) continue;
        if (sweeping) drop(s, cut, &self->entries);
        if (sweeping && s->len == s->head) {
            Py_DECREF(s->key);
            PyMem_Free(s->e);
            continue;
        }
        *free_bucket(table, buckets - 1, s->hash) = *s;
        used++;
    }
    PyMem_Free(self->table);
    self->table = table;
    self->mask = buckets - 1;
    self->used = used;
    return 0;
}

static size_t buckets_for(Py_ssize_t keys) {
    size_t n = MIN_BUCKETS;
    while (n < (size_t)keys * 4) n <<= 1;
    return n;
}

static Slot *slot_for(Slide *self, PyObject *key, Py_hash_t hash) {
    size_t i = (size_t)hash & self->mask;
    for (Slot *s = &self->table[i]; s->key; s = &self->table[i = (i + 1) & self->mask]) {
        if (s->hash != hash) continue;
        if (s->key == key) return s;
        if (PyUnicode_GET_LENGTH(s->key) == PyUnicode_GET_LENGTH(key)) {
            int cmp = PyUnicode_Compare(s->key, key);
            if (cmp == 0) return s;
            if (cmp == -1 && PyErr_Occurred()) return NULL;
        }
    }
    if ((size_t)(self->used + 1) * 2 > self->mask + 1) {
        if (rebuild(self, (self->mask + 1) * 2, 0, 0) < 0) return NULL;
    }
    Slot *s = free_bucket(self->table, self->mask, hash);
    Py_INCREF(key);
    s->key = key;
    s->hash = hash;
    self->used++;
    return s;
}

/* Add one accepted event to its key, dropping entries at or before cut; its window's count
 * and sum through the pointers (both NULL: a rebuild, nothing answered). */
static int add(Slide *self, Slot *s, int64_t when, double value, int64_t cut, int64_t *count, double *total) {
    /* Clamped, so that no running total overflows (and then no difference of two is inf - inf)
     * before 2**23 such values: a value this large is past every threshold either way. */
    if (value > VALUE_MAX) value = VALUE_MAX;
    else if (value < -VALUE_MAX) value = -VALUE_MAX;
    drop(s, cut, &self->entries);
    if (reserve(s) < 0) return -1;
    Py_ssize_t head = s->head, len = s->len;
    Entry *e = s->e;
    Py_ssize_t at = (len == head || e[len - 1].t <= when) ? len : upper(e, head, len, when);
    if (at < len) memmove(e + at + 1, e + at, (size_t)(len - at) * sizeof(Entry));
    e[at].t = when;
    e[at].v = value;
    s->len = ++len;
    self->entries++;
    recum(s, at);
    if (count == NULL) return 0;
    Py_ssize_t start = upper(e, head, at, sat_sub(when, self->size));
    Py_ssize_t n = at + 1 - start;
    *count = n;
    if (n <= self->add_up_at_most) {
        double sum = 0.0;
        for (Py_ssize_t i = start; i <= at; i++) sum += e[i].v;
        *total = sum;
    } else {
        /* cum runs from an origin at or before the head (entries dropped since still in it):
         * the window is the total up to `at` less the total before `start`, the two parts of
         * each taken apart (the big parts cancel exactly when a huge value is in both). */
        const Entry *last = &e[at], *before = start > head ? &e[start - 1] : &e[head];
        double sum = (last->cum - before->cum) + (last->lo - before->lo);
        *total = start > head ? sum : sum + e[head].v;
    }
    return 0;
}

/* Drop entries at or before cut from every key; let go of keys left empty. */
static int sweep(Slide *self, int64_t cut) {
    Py_ssize_t live = 0;
    for (size_t i = 0; i <= self->mask; i++) {
        Slot *s = &self->table[i];
        if (!s->key) continue;
        drop(s, cut, &self->entries);
        live += s->len > s->head;
    }
    /* (No key left empty: nothing to let go, and the table as it is.) */
    if (live < self->used && rebuild(self, buckets_for(live), 1, cut) < 0) return -1;
    self->sweep_at = self->used * 2 > SWEEP_MIN ? self->used * 2 : SWEEP_MIN;
    return 0;
}

static int not_ready(Slide *self) {
    if (self->table) return 0;
    PyErr_SetString(PyExc_RuntimeError, "Slide is not initialised");
    return -1;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, char kind,
                      Py_ssize_t n, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int ok = view->itemsize == itemsize && view->len == n * itemsize &&
             (kind == 'i'   ? (*f == 'q' || *f == 'l')
              : kind == 'f' ? *f == 'd'
                            : (*f == '?' || *f == 'B' || *f == 'b'));
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected %zd items of %zd bytes (format %c), got format %s, %zd bytes",
                     what, n, itemsize, kind, view->format ? view->format : "B", view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(update_doc,
             "update(keys, times, values, watermark, accepted, count, total)\n"
             "    -> (watermark, accepted events, their keys' characters)\n\n"
             "Add a batch (in arrival order): keys a list of str, times int64 ms and values float64\n"
             "buffers; each event's answer written to the three output buffers (bool, int64,\n"
             "float64).  Input that is not a plain str key of at most max_key_chars characters and a\n"
             "finite value raises ValueError before anything changes (the caller names it).");

static PyObject *Slide_update(Slide *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "update() takes 7 arguments");
        return NULL;
    }
    PyObject *keys = args[0];
    if (!PyList_CheckExact(keys) || !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "update(): keys must be a list and the watermark an int");
        return NULL;
    }
    if (not_ready(self) < 0) return NULL;
    int64_t wm = PyLong_AsLongLong(args[3]);
    if (wm == -1 && PyErr_Occurred()) return NULL;
    /* (Nothing below runs Python code that could change the list: its items are exact str; the
     * buffers taken first are checked not to have changed it.) */
    Py_ssize_t n = PyList_GET_SIZE(keys);
    Py_buffer bt, bv, ba, bc, bs;
    if (get_buffer(args[1], &bt, 0, 8, 'i', n, "times") < 0) return NULL;
    if (get_buffer(args[2], &bv, 0, 8, 'f', n, "values") < 0) goto fail_t;
    if (get_buffer(args[4], &ba, 1, 1, 'b', n, "accepted") < 0) goto fail_v;
    if (get_buffer(args[5], &bc, 1, 8, 'i', n, "count") < 0) goto fail_a;
    if (get_buffer(args[6], &bs, 1, 8, 'f', n, "total") < 0) goto fail_c;
    if (PyList_GET_SIZE(keys) != n) { /* (3.12+: a buffer's __buffer__ is Python code) */
        PyErr_SetString(PyExc_RuntimeError, "update(): the keys list changed while its buffers were taken");
        goto fail;
    }
    const int64_t *t = bt.buf;
    const double *v = bv.buf;
    uint8_t *accepted = ba.buf;
    int64_t *count = bc.buf;
    double *total = bs.buf;
    Py_hash_t *hashes = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Py_hash_t));
    if (!hashes) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (!PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) > self->max_key_chars || !isfinite(v[i])) {
            PyErr_Format(PyExc_ValueError, "event %zd: expected a str key of at most %zd characters and a finite value",
                         i, self->max_key_chars);
            goto fail_hashes;
        }
        if ((hashes[i] = PyObject_Hash(key)) == -1) goto fail_hashes;
    }
    /* Room for every key of the batch now, so that the loop below cannot fail half-way for
     * want of it (the caller promises a failed batch changed nothing). */
    if ((size_t)(self->used + n) * 2 > self->mask + 1 && rebuild(self, buckets_for(self->used + n), 0, 0) < 0)
        goto fail_hashes;
    Py_ssize_t taken = 0, chars = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* The bucket a few events ahead, fetched while this one is worked on: over tens of
         * thousands of keys nearly every bucket is a cache miss. */
        if (i + PREFETCH < n) __builtin_prefetch(&self->table[(size_t)hashes[i + PREFETCH] & self->mask]);
        /* Half as far ahead that bucket has arrived: fetch what its key's lookup reads next. */
        if (i + PREFETCH / 2 < n) {
            const Slot *ahead = &self->table[(size_t)hashes[i + PREFETCH / 2] & self->mask];
            if (ahead->key) {
                __builtin_prefetch(ahead->key);
                if (ahead->e) __builtin_prefetch(ahead->e + (ahead->len > 0 ? ahead->len - 1 : 0));
            }
        }
        int64_t when = t[i];
        if (when < wm) {
            accepted[i] = 0;
            count[i] = 0;
            total[i] = 0.0;
            continue;
        }
        int64_t moved = sat_sub(when, self->lateness);
        if (moved > wm) wm = moved;
        PyObject *key = PyList_GET_ITEM(keys, i);
        Slot *s = slot_for(self, key, hashes[i]);
        if (!s || add(self, s, when, v[i], sat_sub(wm, self->size), &count[i], &total[i]) < 0) goto fail_hashes;
        accepted[i] = 1;
        taken++;
        chars += PyUnicode_GET_LENGTH(key);
    }
    PyMem_Free(hashes);
    /* Sweeping only lets go of what no window needs: without memory for it, it waits. */
    int due = self->used > self->sweep_at;
    if (!due && wm != INT64_MIN) {
        if (self->swept_wm == INT64_MIN) self->swept_wm = wm;
        else if (sat_sub(wm, self->swept_wm) >= (self->lateness > INT64_MAX - self->size ? INT64_MAX : self->size + self->lateness))
            due = 1;
    }
    if (due) {
        if (sweep(self, sat_sub(wm, self->size)) < 0) PyErr_Clear();
        else self->swept_wm = wm;
    }
    /* A batch of many events over few keys made room for as many keys: given back (one batch
     * of a million events for one key held 224 MiB, and under SWEEP_MIN keys no sweep comes).
     * Only a large table: at the usual batch sizes this never rebuilds. */
    if (self->mask + 1 > SHRINK_BUCKETS && (size_t)self->used * 8 < self->mask + 1 &&
        rebuild(self, buckets_for(self->used), 0, 0) < 0)
        PyErr_Clear(); /* (memory not given back, nothing else) */
    PyBuffer_Release(&bs);
    PyBuffer_Release(&bc);
    PyBuffer_Release(&ba);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&bt);
    return Py_BuildValue("Lnn", (long long)wm, taken, chars);
fail_hashes:
    PyMem_Free(hashes);
fail:
    PyBuffer_Release(&bs);
fail_c:
    PyBuffer_Release(&bc);
fail_a:
    PyBuffer_Release(&ba);
fail_v:
    PyBuffer_Release(&bv);
fail_t:
    PyBuffer_Release(&bt);
    return NULL;
}

PyDoc_STRVAR(feed_doc,
             "feed(keys, times, values)\n\n"
             "Add events without answering them and without lateness (a rebuild from stored\n"
             "chunks, in the order they were accepted).");

static PyObject *Slide_feed(Slide *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "feed() takes a list of keys, times and values");
        return NULL;
    }
    if (not_ready(self) < 0) return NULL;
    PyObject *keys = args[0];
    Py_ssize_t n = PyList_GET_SIZE(keys);
    Py_buffer bt, bv;
    if (get_buffer(args[1], &bt, 0, 8, 'i', n, "times") < 0) return NULL;
    if (get_buffer(args[2], &bv, 0, 8, 'f', n, "values") < 0) {
        PyBuffer_Release(&bt);
        return NULL;
    }
    if (PyList_GET_SIZE(keys) != n) { /* (3.12+: a buffer's __buffer__ is Python code) */
        PyErr_SetString(PyExc_RuntimeError, "feed(): the keys list changed while its buffers were taken");
        PyBuffer_Release(&bv);
        PyBuffer_Release(&bt);
        return NULL;
    }
    const int64_t *t = bt.buf;
    const double *v = bv.buf;
    PyObject *result = Py_None;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (!PyUnicode_CheckExact(key)) {
            PyErr_Format(PyExc_TypeError, "key %zd: expected a str", i);
            result = NULL;
            break;
        }
        Py_hash_t hash = PyObject_Hash(key);
        Slot *s = hash == -1 ? NULL : slot_for(self, key, hash);
        if (!s || add(self, s, t[i], v[i], INT64_MIN, NULL, NULL) < 0) {
            result = NULL;
            break;
        }
    }
    PyBuffer_Release(&bv);
    PyBuffer_Release(&bt);
    Py_XINCREF(result);
    return result;
}

static PyObject *Slide_keys(Slide *self, PyObject *Py_UNUSED(ignored)) {
    if (not_ready(self) < 0) return NULL;
    return PyLong_FromSsize_t(self->used);
}

static PyObject *Slide_entries(Slide *self, PyObject *Py_UNUSED(ignored)) {
    if (not_ready(self) < 0) return NULL;
    return PyLong_FromLongLong(self->entries);
}

static int Slide_init(Slide *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"size", "lateness", "add_up_at_most", "max_key_chars", NULL};
    long long size, lateness;
    Py_ssize_t add_up_at_most = 64, max_key_chars = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LL|nn", names, &size, &lateness, &add_up_at_most, &max_key_chars))
        return -1;
    if (self->table) {
        PyErr_SetString(PyExc_RuntimeError, "Slide is initialised once");
        return -1;
    }
    if (size <= 0 || lateness < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be positive and lateness not negative");
        return -1;
    }
    self->size = size;
    self->lateness = lateness;
    self->add_up_at_most = add_up_at_most;
    self->max_key_chars = max_key_chars;
    if (rebuild(self, MIN_BUCKETS, 0, 0) < 0) return -1;
    self->sweep_at = SWEEP_MIN;
    self->swept_wm = INT64_MIN;
    return 0;
}

static void Slide_dealloc(Slide *self) {
    for (size_t i = 0; self->table && i <= self->mask; i++) {
        Py_XDECREF(self->table[i].key);
        PyMem_Free(self->table[i].e);
    }
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Slide_methods[] = {
    {"update", (PyCFunction)(void (*)(void))Slide_update, METH_FASTCALL, update_doc},
    {"feed", (PyCFunction)(void (*)(void))Slide_feed, METH_FASTCALL, feed_doc},
    {"keys", (PyCFunction)Slide_keys, METH_NOARGS, "Keys held (with entries the watermark may have passed)."},
    {"entries", (PyCFunction)Slide_entries, METH_NOARGS, "Entries held."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SlideType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vigil.stream._slide.Slide",
    .tp_basicsize = sizeof(Slide),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One partition's sliding-window index: Slide(size_ms, lateness_ms, add_up_at_most=64, max_key_chars=no limit).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Slide_init,
    .tp_dealloc = (destructor)Slide_dealloc,
    .tp_methods = Slide_methods,
};

/* ------------------------------------------------------------------ times */

#define DAY_US ((int64_t)86400 * 1000000)

static inline int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    /* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

PyDoc_STRVAR(datetimes_ms_doc,
             "datetimes_ms(times, out) -> int\n\n"
             "Aware datetimes as epoch milliseconds, floored, into the int64 buffer out.  Returns -1,\n"
             "or the index of the first item that is not an aware datetime (the caller names it);\n"
             "a tzinfo's utcoffset() that raises, or gives what Python's datetime refuses, raises.");

static PyObject *datetimes_ms(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "datetimes_ms() takes a list of datetimes and a buffer");
        return NULL;
    }
    /* A copy: a tzinfo's utcoffset() runs any Python, which may change the caller's list. */
    PyObject *times = PyList_AsTuple(args[0]);
    if (!times) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(times);
    Py_buffer out;
    if (get_buffer(args[1], &out, 1, 8, 'i', n, "out") < 0) {
        Py_DECREF(times);
        return NULL;
    }
    int64_t *ms = out.buf;
    Py_ssize_t bad = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *dt = PyTuple_GET_ITEM(times, i);
        if (!PyDateTime_Check(dt)) {
            bad = i;
            break;
        }
        PyObject *tz = PyDateTime_DATE_GET_TZINFO(dt);
        int64_t offset_us = 0;
        if (tz == Py_None) {
            bad = i;
            break;
        }
        if (tz != PyDateTime_TimeZone_UTC) {
            PyObject *off = PyObject_CallMethod(tz, "utcoffset", "O", dt);
            if (!off) goto fail; /* the zone's own error, for the caller to name */
            if (off == Py_None) { /* naive after all, as Python's datetime takes it */
                Py_DECREF(off);
                bad = i;
                break;
            }
            if (!PyDelta_Check(off)) {
                PyErr_Format(PyExc_TypeError, "tzinfo.utcoffset() must return None or timedelta, not '%.200s'",
                             Py_TYPE(off)->tp_name);
                Py_DECREF(off);
                goto fail;
            }
            offset_us = ((int64_t)PyDateTime_DELTA_GET_DAYS(off) * 86400 + PyDateTime_DELTA_GET_SECONDS(off)) *
                            1000000 +
                        PyDateTime_DELTA_GET_MICROSECONDS(off);
            Py_DECREF(off);
            if (offset_us <= -DAY_US || offset_us >= DAY_US) {
                PyErr_SetString(PyExc_ValueError,
                                "offset must be a timedelta strictly between -timedelta(hours=24) and "
                                "timedelta(hours=24)");
                goto fail;
            }
        }
        int64_t days = days_from_civil(PyDateTime_GET_YEAR(dt), PyDateTime_GET_MONTH(dt), PyDateTime_GET_DAY(dt));
        int64_t us = ((days * 24 + PyDateTime_DATE_GET_HOUR(dt)) * 60 + PyDateTime_DATE_GET_MINUTE(dt)) * 60 +
                     PyDateTime_DATE_GET_SECOND(dt);
        us = us * 1000000 + PyDateTime_DATE_GET_MICROSECOND(dt) - offset_us;
        int64_t q = us / 1000;
        if (us % 1000 < 0) q -= 1; /* floor, as timedelta // timedelta(milliseconds=1) */
        ms[i] = q;
    }
    PyBuffer_Release(&out);
    Py_DECREF(times);
    return PyLong_FromSsize_t(bad);
fail:
    PyBuffer_Release(&out);
    Py_DECREF(times);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"datetimes_ms", (PyCFunction)(void (*)(void))datetimes_ms, METH_FASTCALL, datetimes_ms_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "vigil.stream._slide",
    .m_doc = "Sliding-window index in C (see vigil.stream.vectorised).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__slide(void) {
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    if (PyType_Ready(&SlideType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SlideType);
    if (PyModule_AddObject(m, "Slide", (PyObject *)&SlideType) < 0) {
        Py_DECREF(&SlideType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
