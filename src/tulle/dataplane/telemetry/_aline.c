/* One access log record as one JSON line, in C (ADR 0076).
 *
 * Why: with a JSON access log of every request, building the record (28 values, five of them
 * header bytes decoded to strings, three durations as floats, a msgspec struct) and encoding it
 * later in the writer thread was the largest part of the telemetry's cost per request.  This
 * writes the line straight from what the request already holds -- header bytes, integers,
 * integer microseconds -- into one bytes object: no per-field objects, nothing for the writer
 * thread to encode.
 *
 * The line is byte for byte msgspec's encoding of `access_record.AccessRecord` (the fallback,
 * and what the pure-Python build uses): keys in `FIELDS` order (a test holds them equal to
 * `proxyconfig/log_fields.ACCESS_FIELDS`), strings escaped as msgspec escapes them (`"`, `\`
 * and the C0 controls; \b \t \n \f \r short, the rest \u00XX; everything else as UTF-8),
 * header bytes read as Latin-1 (as the record's `.decode("latin-1")` did), durations written
 * from integer microseconds as the shortest decimal of the float milliseconds `_ms` made.
 * A record it cannot write the same way (a lone surrogate in a string, a duration outside
 * [0, 10^15) microseconds, an integer beyond 64 bits, a bool or an int enum) goes to the fallback `set_fallback`
 * named (`access_record.encode_line`, which encodes it with msgspec and raises what msgspec
 * raises); without one, ValueError.
 *
 * Called with the GIL held and never releasing it, and no Python code runs while it writes:
 * the one scratch buffer is safe to share.
 *
 * `Lines` (ADR 0080) is a JSON line sink's batch: `Lines.access` writes the same line straight
 * to the end of the batch, with no bytes object in between.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

enum kind { STR, INT, DUR, TIME };

#define F(key, kind) {key, sizeof(key) - 1, kind}
static const struct { const char *key; size_t len; enum kind kind; } FIELD[] = {
    F("start_time", TIME), F("method", STR), F("path", STR), F("protocol", STR),
    F("response_code", INT), F("response_flags", STR), F("response_code_details", STR),
    F("bytes_received", INT), F("bytes_sent", INT), F("duration", DUR),
    F("response_duration", DUR), F("upstream_duration", DUR), F("upstream_host", STR),
    F("upstream_cluster", STR), F("route_name", STR), F("upstream_request_attempt_count", INT),
    F("request_id", STR), F("trace_id", STR), F("authority", STR), F("user_agent", STR),
    F("x_forwarded_for", STR), F("downstream_remote_address", STR),
    F("requested_server_name", STR), F("source_principal", STR),
    F("destination_principal", STR), F("direction", STR), F("listener", STR), F("authz", STR),
};
#define NFIELDS ((Py_ssize_t)(sizeof(FIELD) / sizeof(FIELD[0])))
#define MAX_US 1000000000000000LL /* 10^15 us: below it the decimal is exact (see put_ms) */

#define SLACK 64  /* room past the line for whole-word copies (a prefix, a string's last word) */
#define PFX 48    /* a field's prefix, `,"key":`, padded: copied as one fixed-size block */
static char prefix[NFIELDS][PFX];
static size_t prefix_len[NFIELDS];

#define KEEP 65536  /* the scratch room kept between lines (a line is ~600 bytes) */

static PyObject *fallback = NULL;
static char *buf = NULL;
static size_t cap = 0;

/* `*data` grown to hold `need` bytes: `*cap` doubled from `first` until it does (one growth
 * rule for the scratch room and a batch's halves).  -1 with MemoryError when it cannot be, a
 * size past what doubling can reach included. */
static int grow(char **data, size_t *cap, size_t need, size_t first) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : first;
    while (n < need) {
        if (n > PY_SSIZE_T_MAX / 2) { PyErr_NoMemory(); return -1; }
        n *= 2;
    }
    char *p = PyMem_RawRealloc(*data, n);
    if (p == NULL) { PyErr_NoMemory(); return -1; }
    *data = p;
    *cap = n;
    return 0;
}

static int reserve(size_t need) {
    return grow(&buf, &cap, need, 4096);
}

static const char HEX[] = "0123456789abcdef";

/* Eight bytes at a time: whether any is one a string cannot hold as it is (a C0 control,
 * `"`, `\`, or with `high` any byte >= 0x80).  Standard SWAR tests: a byte below 0x20, a byte
 * equal to a value (its XOR is zero), the top bits. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline int special8(uint64_t x, uint64_t high) {
    uint64_t lt20 = (x - ONES * 0x20) & ~x;
    uint64_t q = x ^ (ONES * 0x22), b = x ^ (ONES * 0x5C), d = x ^ (ONES * 0x7F);
    uint64_t eq = ((q - ONES) & ~q) | ((b - ONES) & ~b) | ((d - ONES) & ~d);
    return ((lt20 | eq) & HIGHS) != 0 || (x & high) != 0;
}

/* Escaped as msgspec escapes (`"`, `\`, C0 controls), and DEL and the C1 controls
 * (U+007F-U+009F) as \u00XX too: U+0085 is a line break to some readers and U+009B a
 * terminal's escape prefix (attack audit, ADR 0099; `access_record.escape_c1` does the same
 * after msgspec).  Other bytes >= 0x80 are Latin-1 -> UTF-8 when `latin1`, copied as they are
 * (already UTF-8) otherwise. */
static size_t put_escaped_slow(char *o, const unsigned char *s, Py_ssize_t n, int latin1) {
    char *start = o;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7F) {
            *o++ = (char)c;
            continue;
        }
        if (c >= 0x80 && !latin1) {  /* UTF-8: C1 is 0xC2 0x80-0x9F */
            if (c == 0xC2 && i + 1 < n && s[i + 1] <= 0x9F) {
                c = s[++i];  /* (the byte after 0xC2 is 0x80 or more: a continuation) */
                memcpy(o, "\\u00", 4);
                o += 4;
                *o++ = HEX[c >> 4];
                *o++ = HEX[c & 0xF];
                continue;
            }
            *o++ = (char)c;
            continue;
        }
        if (c >= 0xA0) {  /* Latin-1 past the C1 controls */
            *o++ = (char)(0xC0 | (c >> 6));
            *o++ = (char)(0x80 | (c & 0x3F));
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default:
            memcpy(o, "u00", 3);
            o += 3;
            *o++ = HEX[c >> 4];
            *o++ = HEX[c & 0xF];
        }
    }
    return (size_t)(o - start);
}

/* The common case first: eight plain bytes at a time, copied as a word (the output has
 * SLACK bytes of room past the line, so a word may run over what a string needs); the last
 * word of a string of eight or more re-reads a few bytes rather than going byte by byte.  The
 * first word with a byte to escape sends the rest to the byte loop. */
static size_t put_escaped(char *o, const unsigned char *s, Py_ssize_t n, int latin1) {
    uint64_t high = HIGHS;  /* (UTF-8 too: its C1 controls are escaped) */
    (void)latin1;
    uint64_t x;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&x, s + i, 8);
        if (special8(x, high)) return (size_t)i + put_escaped_slow(o + i, s + i, n - i, latin1);
        memcpy(o + i, &x, 8);
    }
    if (i == n) return (size_t)n;
    if (n >= 8) {
        memcpy(&x, s + n - 8, 8);
        if (!special8(x, high)) {
            memcpy(o + n - 8, &x, 8);
            return (size_t)n;
        }
    }
    return (size_t)i + put_escaped_slow(o + i, s + i, n - i, latin1);
}

static size_t put_u64(char *o, unsigned long long v) {
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (int i = 0; i < n; i++) o[i] = tmp[n - 1 - i];
    return (size_t)n;
}

/* Integer microseconds as msgspec writes float(us) / 1000.0: the shortest decimal that reads
 * back as that float, which below 10^15 us is the exact q.rrr with trailing zeros dropped
 * (one kept: "2.0"); a float's spacing there is under half a microsecond. */
static size_t put_ms(char *o, long long us) {
    size_t n = put_u64(o, (unsigned long long)(us / 1000));
    int r = (int)(us % 1000);
    o[n++] = '.';
    if (r == 0) { o[n++] = '0'; return n; }
    o[n++] = (char)('0' + r / 100);
    if (r % 100) {
        o[n++] = (char)('0' + (r / 10) % 10);
        if (r % 10) o[n++] = (char)('0' + r % 10);
    }
    return n;
}

/* A start time given as integer nanoseconds since the epoch, as `starttime.start_time` writes
 * it: `2026-12-03T15:04:05.123Z` (UTC, milliseconds truncated).  The second's text is kept
 * from the last call: under load many requests end in the same second. */
static long long last_sec = -1;
static char sec_text[32];
static size_t sec_len = 0;

static size_t put_time(char *o, long long ns) {
    long long ms = ns / 1000000, sec = ms / 1000;
    if (sec != last_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        if (gmtime_r(&t, &tm) == NULL) return 0;
        sec_len = strftime(sec_text, sizeof sec_text, "%Y-%m-%dT%H:%M:%S.", &tm);
        last_sec = sec_len ? sec : -1;
        if (!sec_len) return 0;
    }
    int r = (int)(ms - sec * 1000);
    memcpy(o, sec_text, sec_len);
    o += sec_len;
    o[0] = (char)('0' + r / 100);
    o[1] = (char)('0' + (r / 10) % 10);
    o[2] = (char)('0' + r % 10);
    o[3] = 'Z';
    return sec_len + 4;
}

/* The record goes to the fallback (or ValueError(why) without one).  The call holds its own
 * reference: the fallback is Python code, and a `set_fallback` while it runs would otherwise
 * free the callable being called (a crash, for one that reads itself after its callee, such
 * as an `lru_cache` wrapper). */
static PyObject *refer(PyObject *const *args, Py_ssize_t nargs, const char *why) {
    if (fallback == NULL) {
        PyErr_SetString(PyExc_ValueError, why);
        return NULL;
    }
    PyObject *f = Py_NewRef(fallback);
    PyObject *line = PyObject_Vectorcall(f, args, (size_t)nargs, NULL);
    Py_DECREF(f);
    return line;
}

/* What pass 1 learns of each value: its text (UTF-8, or Latin-1 bytes when `num` is 1) or its
 * number. */
typedef struct {
    const char *text[NFIELDS];
    Py_ssize_t len[NFIELDS];
    long long num[NFIELDS];
} Parts;

/* Pass 1: the room the line needs (its bytes; the caller adds SLACK).  0 when the record is
 * not one this encoder writes: `*line` is then the fallback's line (NULL with an error set).
 * A TypeError for a value of a type no record holds. */
static size_t measure(PyObject *const *args, Py_ssize_t nargs, Parts *p, PyObject **line) {
    *line = NULL;
    if (nargs != NFIELDS) {
        PyErr_Format(PyExc_TypeError, "access_line takes %zd arguments (%zd given)",
                     NFIELDS, nargs);
        return 0;
    }
    size_t need = 2;  /* }, \n */
    for (Py_ssize_t i = 0; i < NFIELDS; i++) {
        PyObject *v = args[i];
        need += FIELD[i].len + 4;  /* "key": and a comma */
        p->text[i] = NULL;
        p->len[i] = 0;
        if (v == Py_None) { need += 4; continue; }
        if (FIELD[i].kind == TIME && PyLong_CheckExact(v)) {  /* nanoseconds */
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            /* (beyond 2^63 - 1 ns, 2262-04-11, is an overflow: the fallback, as before 1970) */
            if (overflow || (x == -1 && PyErr_Occurred()) || x < 0) {
                PyErr_Clear();
                *line = refer(args, nargs, "a start time out of range");
                return 0;
            }
            p->num[i] = x;
            need += 2 + 32;
            continue;
        }
        if (FIELD[i].kind == STR || FIELD[i].kind == TIME) {
            if (PyUnicode_Check(v) && PyUnicode_IS_COMPACT_ASCII(v)) {  /* its own UTF-8 */
                p->text[i] = (const char *)PyUnicode_DATA(v);
                p->len[i] = PyUnicode_GET_LENGTH(v);
                p->num[i] = 0;
            } else if (PyUnicode_Check(v)) {
                p->text[i] = PyUnicode_AsUTF8AndSize(v, &p->len[i]);
                if (p->text[i] == NULL) {  /* a lone surrogate */
                    PyErr_Clear();
                    *line = refer(args, nargs, "a string not encodable as UTF-8");
                    return 0;
                }
                p->num[i] = 0;  /* UTF-8 as it is */
            } else if (PyBytes_Check(v)) {
                p->text[i] = PyBytes_AS_STRING(v);
                p->len[i] = PyBytes_GET_SIZE(v);
                p->num[i] = 1;  /* Latin-1 */
            } else {
                if (FIELD[i].kind == TIME && PyLong_Check(v)) {  /* a bool or an int enum */
                    *line = refer(args, nargs, "an int subclass");
                    return 0;
                }
                PyErr_Format(PyExc_TypeError, "%s: str, bytes or None%s", FIELD[i].key,
                             FIELD[i].kind == TIME ? " (or int nanoseconds)" : "");
                return 0;
            }
            need += 2 + 6 * (size_t)p->len[i];
        } else {
            if (!PyLong_CheckExact(v)) {  /* a bool or an int enum: msgspec's own spelling */
                if (PyLong_Check(v)) {
                    *line = refer(args, nargs, "an int subclass");
                    return 0;
                }
                PyErr_Format(PyExc_TypeError, "%s: int or None", FIELD[i].key);
                return 0;
            }
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow || (x == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                *line = refer(args, nargs, "an integer beyond 64 bits");
                return 0;
            }
            if (FIELD[i].kind == DUR && (x < 0 || x >= MAX_US)) {
                *line = refer(args, nargs, "a duration out of range");
                return 0;
            }
            p->num[i] = x;
            need += 24;
        }
    }
    return need;
}

/* Pass 2: the line at `o`, which has the room `measure` asked for and SLACK past it; its end.
 * NULL when a start time turns out to be one gmtime cannot take: `*line` is then the
 * fallback's line (NULL with an error set). */
static char *compose(char *o, PyObject *const *args, Py_ssize_t nargs, const Parts *p,
                     PyObject **line) {
    *line = NULL;
    for (Py_ssize_t i = 0; i < NFIELDS; i++) {
        memcpy(o, prefix[i], PFX);  /* `{"key":` or `,"key":` and padding */
        o += prefix_len[i];
        if (args[i] == Py_None) { memcpy(o, "null", 4); o += 4; continue; }
        switch (FIELD[i].kind) {
        case TIME:
            if (p->text[i] == NULL) {  /* nanoseconds */
                *o++ = '"';
                size_t n = put_time(o, p->num[i]);
                if (n == 0) {
                    *line = refer(args, nargs, "a start time gmtime cannot take");
                    return NULL;
                }
                o += n;
                *o++ = '"';
                break;
            }
            __attribute__((fallthrough));  /* a start time already written out */
        case STR:
            *o++ = '"';
            o += put_escaped(o, (const unsigned char *)p->text[i], p->len[i], (int)p->num[i]);
            *o++ = '"';
            break;
        case INT:
            if (p->num[i] < 0) { *o++ = '-'; o += put_u64(o, 0ULL - (unsigned long long)p->num[i]); }
            else o += put_u64(o, (unsigned long long)p->num[i]);
            break;
        case DUR:
            o += put_ms(o, p->num[i]);
            break;
        }
    }
    *o++ = '}';
    *o++ = '\n';
    return o;
}

static PyObject *access_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Parts p;
    PyObject *line;
    size_t need = measure(args, nargs, &p, &line);
    if (need == 0) return line;
    if (reserve(need + SLACK) < 0) return NULL;
    char *end = compose(buf, args, nargs, &p, &line);
    if (end != NULL) line = PyBytes_FromStringAndSize(buf, end - buf);
    if (cap > KEEP) {  /* a huge record's room is given back, not held for the process's life */
        PyMem_RawFree(buf);
        buf = NULL;
        cap = 0;
    }
    return line;
}

/* ---- Lines: a line sink's batch, in two halves (ADR 0080, ADR 0082) -----------------------
 *
 * Why: a line made as a bytes object, queued, joined with its batch in the writer thread and
 * written cost a bytes object per request, a queue entry each way and a join, and held every
 * queued line as an object of its own.  Here the line is written where it will be written
 * from: the end of the active half.  Only the thread holding the GIL appends to the active
 * half and touches its counts.
 *
 * The hand-over (ADR 0082): when the active half reaches `wake` bytes and the writer thread
 * is in `serve` (waiting with the GIL released), the loop's thread hands the half over itself
 * (`lines_hand_over`: it becomes READY, the other half active) and signals a condition
 * variable; `serve` writes it without ever taking the GIL, empties it (FREE) and waits for the
 * next.  Before, the writer took the half in `write`, and could do so only once it held the
 * GIL: up to a switch interval (5 ms) after the wake, while the loop's thread, holding it, went
 * on filling the same half, so each half grew to 128-256 KiB under load.  `write` remains for
 * what is below `wake` (the flush interval's partial half) and for a sink's last flush: it
 * takes a READY half first (older lines first), else swaps the active one.  A half's state
 * (FREE, READY, WRITING) changes under `mu`; the loop's thread takes `mu` holding the GIL, the
 * writer never asks for the GIL while it holds `mu`: one order, no deadlock.  The counts of the
 * half that is not active are read by the loop's thread without `mu` (`__len__`, the bound),
 * with atomic loads: a stale one only moves the bound by a half, for a moment.
 *
 * A write that fails inside a line (part of it taken, then EAGAIN or ENOSPC) hands the rest of
 * that line to its caller (`torn`), who finishes the line before writing anything after it:
 * the output never holds half a line with more lines after it.
 *
 * Bounded: at most `max_lines` lines held in both halves (a full sink drops the line and the
 * caller counts it); a half grown past KEEP_HALF by a burst is freed once written.  A sealed
 * batch (a closed sink's, still referenced for its counts) frees each half once written or
 * cleared: no line comes again. */

#define KEEP_HALF (256 * 1024)
#define FIRST_HALF (16 * 1024)
/* How long `serve`, the other half written, waits for the line that hands a due half over
 * before it returns for its caller to write that half (`write`, with the GIL): under load the
 * line comes within microseconds; longer than a time slice the scheduler may take the loop's
 * thread away for (a few ms on a busy host), so that the writer seldom leaves `serve` only to
 * wait for a GIL the loop's thread holds.  After a burst, the last half is written this long
 * after, not a flush interval after. */
#define DUE_WAIT_NS 20000000L  /* 20 ms */

enum { FREE = 0, READY = 1, WRITING = 2 };

typedef struct {
    PyObject_HEAD
    char *data[2];
    size_t len[2], cap[2];
    Py_ssize_t count[2];
    int state[2];          /* FREE (the active half is always FREE), READY, WRITING: under mu */
    int active;            /* the half lines are appended to (the GIL's) */
    int writing;           /* a half is being written (set under mu; a diagnostic) */
    Py_ssize_t max_lines;  /* lines held in both halves at most; 0: sealed (set under mu) */
    size_t wake;           /* bytes in the active half that call for a write */
    int made;              /* __init__ has run: a second one is refused */
    int serving;           /* the writer thread is in `serve` (set and read with the GIL) */
    int nudged;            /* `serve` returns at its next look (under mu) */
    int due;               /* the active half called for a write while the other was still
                            * handed over or written, so could not be handed over (set under
                            * mu, cleared when it is taken; read without mu with a load) */
    Py_ssize_t served;     /* lines `serve` has written, ever: added as each half is written,
                            * read when asked (a metric does not wait for `serve` to return) */
    PyObject *torn;        /* bytes: the rest of the line the last write stopped inside */
    pthread_mutex_t mu;    /* the halves' states, `nudged`, `max_lines` once sealed */
    pthread_cond_t cv;     /* signalled: a half handed over, a nudge, a seal */
} Lines;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

static int lines_init(Lines *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"max_lines", "wake_bytes", NULL};
    Py_ssize_t max_lines, wake = 64 * 1024;
    /* Once only: `max_lines` goes from its bound to 0 (`seal`) and nowhere else, and `wake`
     * never changes.  A second __init__ would unseal a closed sink's batch (lines taken that
     * no writer will write) or move the bound under a writer holding a half; refusing it is
     * the one answer that keeps that rule, where ignoring it would hide the caller's bug. */
    if (self->made) {
        PyErr_SetString(PyExc_RuntimeError, "a Lines batch is made once: __init__ again refused");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|n", kw, &max_lines, &wake)) return -1;
    if (max_lines < 1 || wake < 1) {
        PyErr_SetString(PyExc_ValueError, "max_lines and wake_bytes must be positive");
        return -1;
    }
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0
            || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0  /* `serve`'s deadline */
            || pthread_cond_init(&self->cv, &ca) != 0
            || pthread_mutex_init(&self->mu, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "Lines: no condition variable or mutex");
        return -1;
    }
    pthread_condattr_destroy(&ca);
    self->max_lines = max_lines;
    self->wake = (size_t)wake;
    self->made = 1;
    return 0;
}

static void lines_dealloc(Lines *self) {
    Py_XDECREF(self->torn);
    PyMem_RawFree(self->data[0]);
    PyMem_RawFree(self->data[1]);
    if (self->made) {  /* (no writer can be in `serve`: it holds a reference) */
        pthread_cond_destroy(&self->cv);
        pthread_mutex_destroy(&self->mu);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void lines_free_half(Lines *self, int h) {
    PyMem_RawFree(self->data[h]);  /* (the raw allocator: no GIL needed) */
    self->data[h] = NULL;
    STORE(self->cap[h], 0);
}

/* Under mu: half `h`, written (or dropped), emptied and FREE for the loop's thread again. */
static void lines_finish_half(Lines *self, int h) {
    STORE(self->len[h], 0);
    STORE(self->count[h], 0);
    if (self->cap[h] > KEEP_HALF || self->max_lines == 0)  /* a burst's room is given back, */
        lines_free_half(self, h);                       /* and a sealed batch's at once */
    STORE(self->writing, 0);
    STORE(self->state[h], FREE);
}

/* With the GIL held: the active half handed to the writer in `serve` (READY), the other one
 * becoming active; 0 when the other is still READY or being written (the active one then
 * grows, and is handed over at a later line).  That first failure is told to `serve` (`due`,
 * under mu: set before the writer can finish the other half and look), which waits a moment
 * for that later line once the other half is written, and returns without one: after a burst
 * none comes, and the half that called for a write would wait out the whole `serve` (a flush
 * interval, up to a minute).  No lock taken while the other is busy and `serve` knows. */
static int lines_hand_over(Lines *self) {
    int a = self->active, o = 1 - a, done = 0;
    if (LOAD(self->state[o]) != FREE && LOAD(self->due)) return 0;
    pthread_mutex_lock(&self->mu);
    if (self->state[o] == FREE) {
        STORE(self->state[a], READY);
        self->active = o;
        STORE(self->due, 0);
        pthread_cond_signal(&self->cv);
        done = 1;
    } else {
        STORE(self->due, 1);
    }
    pthread_mutex_unlock(&self->mu);
    return done;
}

/* Room for `need` more bytes at the end of the active half: its end, or NULL (MemoryError). */
static char *lines_room(Lines *self, size_t need) {
    int a = self->active;
    if (grow(&self->data[a], &self->cap[a], self->len[a] + need, FIRST_HALF) < 0) return NULL;
    return self->data[a] + self->len[a];
}

/* The line of `n` bytes now at the end of the active half is counted: 1, or 2 when it made
 * the half reach the bytes that call for a write and no writer is in `serve` to take it (the
 * caller wakes the writer then).  With a writer in `serve`, the half is handed over here. */
static PyObject *lines_took(Lines *self, size_t n) {
    int a = self->active;
    size_t before = self->len[a];
    self->len[a] = before + n;
    self->count[a] += 1;
    if (self->len[a] >= self->wake) {
        if (self->serving) {
            lines_hand_over(self);
            return PyLong_FromLong(1);
        }
        if (before < self->wake) return PyLong_FromLong(2);
    }
    return PyLong_FromLong(1);
}

static int lines_full(Lines *self) {
    return self->count[self->active] + LOAD(self->count[1 - self->active]) >= self->max_lines;
}

static PyObject *lines_put(Lines *self, const char *line, size_t n) {
    char *o = lines_room(self, n);
    if (o == NULL) return NULL;
    memcpy(o, line, n);
    return lines_took(self, n);
}

static PyObject *lines_add(Lines *self, PyObject *line) {
    if (!PyBytes_Check(line)) {
        PyErr_SetString(PyExc_TypeError, "add takes bytes (a line, newline ended)");
        return NULL;
    }
    if (lines_full(self)) return PyLong_FromLong(0);
    return lines_put(self, PyBytes_AS_STRING(line), (size_t)PyBytes_GET_SIZE(line));
}

static PyObject *lines_access(Lines *self, PyObject *const *args, Py_ssize_t nargs) {
    if (lines_full(self)) return PyLong_FromLong(0);  /* dropped: not even encoded */
    Parts p;
    PyObject *line;
    size_t need = measure(args, nargs, &p, &line);
    if (need != 0) {
        char *o = lines_room(self, need + SLACK);
        if (o == NULL) return NULL;
        char *end = compose(o, args, nargs, &p, &line);
        if (end != NULL) return lines_took(self, (size_t)(end - o));
    }
    /* the fallback's line (a Python call: the active half may have moved, not its bytes) */
    if (line == NULL) return NULL;
    PyObject *r = PyBytes_Check(line)
        ? lines_put(self, PyBytes_AS_STRING(line), (size_t)PyBytes_GET_SIZE(line))
        : (PyErr_SetString(PyExc_TypeError, "the fallback returned no bytes"), NULL);
    Py_DECREF(line);
    return r;
}

/* `left` bytes from `d` written to `fd` (EINTR retried); 0, or the errno that stopped it with
 * `*left` what was not written.  Without the GIL. */
static int write_all(int fd, const char *d, size_t *left) {
    while (*left > 0) {  /* bounded: each turn writes at least a byte or ends */
        ssize_t n = write(fd, d, *left);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        d += n;
        *left -= (size_t)n;
    }
    return 0;
}

/* With the GIL, after a write of half `h` failed with `left` bytes of it unwritten: stopped
 * inside a line (part of it written, then EAGAIN on a pipe that does not block, ENOSPC, ...),
 * the output ends with half a line, and whatever is written there next would go on after it,
 * one corrupt line for a reader.  The rest of that line, to its newline (or the half's end,
 * for an `add`ed line without one), is kept for the caller to finish the line with where it
 * began, before anything else, or to drop when that destination is gone.  One line at most,
 * made only on such a failure; the lines after it are lost with the half, as before. */
static void lines_keep_torn(Lines *self, int h, size_t left) {
    size_t done = self->len[h] - left;
    if (done > 0 && self->data[h][done - 1] != '\n') {
        const char *rest = self->data[h] + done;
        const char *nl = memchr(rest, '\n', left);
        self->torn = PyBytes_FromStringAndSize(rest, nl ? nl - rest + 1 : (Py_ssize_t)left);
        if (self->torn == NULL) PyErr_Clear();  /* no memory even for that: torn, as before */
    }
}

/* A file descriptor, never a bool (`write(True)` would be stdout: a mistake). */
static int lines_fd(PyObject *arg) {
    if (PyBool_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "a file descriptor, not a bool");
        return -1;
    }
    return PyObject_AsFileDescriptor(arg);  /* (a negative one: ValueError) */
}

static PyObject *lines_write(Lines *self, PyObject *arg) {
    int fd = lines_fd(arg);
    if (fd < 0) return NULL;
    if (self->writing || self->serving) {
        PyErr_SetString(PyExc_RuntimeError, "a write of these lines is in progress");
        return NULL;
    }
    Py_CLEAR(self->torn);  /* an older write's, not taken: `torn` answers for this one */
    int a = self->active, o = 1 - a, w = -1;
    pthread_mutex_lock(&self->mu);
    if (self->state[o] == READY) {
        w = o;  /* handed over and not yet written: the older lines first */
    } else if (self->count[a] > 0 && self->state[o] == FREE) {
        w = a;
        self->active = o;
        STORE(self->due, 0);
    }
    if (w >= 0) {
        STORE(self->state[w], WRITING);
        STORE(self->writing, 1);
    }
    pthread_mutex_unlock(&self->mu);
    if (w < 0) return Py_BuildValue("(ni)", (Py_ssize_t)0, 0);
    Py_ssize_t count = self->count[w];
    size_t left = self->len[w];
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = write_all(fd, self->data[w], &left);
    Py_END_ALLOW_THREADS
    if (err) lines_keep_torn(self, w, left);
    pthread_mutex_lock(&self->mu);
    lines_finish_half(self, w);
    pthread_mutex_unlock(&self->mu);
    return Py_BuildValue("(ni)", count, err);
}

/* `t` moved `ns` nanoseconds on (0 <= ns < 1 s); whether `a` is at or past `b`. */
static void ts_add(struct timespec *t, long ns) {
    t->tv_nsec += ns;
    if (t->tv_nsec >= 1000000000L) {
        t->tv_sec += 1;
        t->tv_nsec -= 1000000000L;
    }
}

static int ts_reached(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec >= b->tv_nsec);
}

static PyObject *lines_serve(Lines *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "serve(fd, seconds)");
        return NULL;
    }
    int fd = lines_fd(args[0]);
    if (fd < 0) return NULL;
    double seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred()) return NULL;
    if (!(seconds > 0.0 && seconds <= 3600.0)) {
        PyErr_SetString(PyExc_ValueError, "serve: seconds must be in (0, 3600]");
        return NULL;
    }
    if (self->writing || self->serving) {
        PyErr_SetString(PyExc_RuntimeError, "a write of these lines is in progress");
        return NULL;
    }
    Py_CLEAR(self->torn);
    self->serving = 1;
    if (self->len[self->active] >= self->wake)  /* it called for a write before we came */
        lines_hand_over(self);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)seconds;
    ts_add(&until, (long)((seconds - (double)(time_t)seconds) * 1e9));
    Py_ssize_t written = 0, lost = 0;
    int err = 0, failed_half = -1, waited_due = 0;
    size_t left = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->mu);
    for (;;) {  /* bounded: returns by `until` (each turn writes a half, or waits for one) */
        int h = self->state[0] == READY ? 0 : self->state[1] == READY ? 1 : -1;
        if (h >= 0) {
            STORE(self->state[h], WRITING);
            STORE(self->writing, 1);
            Py_ssize_t c = self->count[h];
            left = self->len[h];
            pthread_mutex_unlock(&self->mu);
            err = write_all(fd, self->data[h], &left);
            pthread_mutex_lock(&self->mu);
            if (err) {  /* finished below, with the GIL: the rest of a torn line is an object */
                failed_half = h;
                lost = c;
                break;
            }
            lines_finish_half(self, h);
            __atomic_add_fetch(&self->served, c, __ATOMIC_RELEASE);
            written += c;
            waited_due = 0;
        } else if (self->nudged || self->max_lines == 0) {
            break;
        } else if (self->due && waited_due) {
            break;  /* no line came to hand the due half over: the caller writes it (`write`) */
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (ts_reached(&now, &until)) break;
        if (h < 0 && self->due) {  /* a moment for the next line to hand it over (under load
                                    * it comes at once: no GIL for this thread to wait for) */
            struct timespec soon = now;
            ts_add(&soon, DUE_WAIT_NS);
            if (ts_reached(&soon, &until)) soon = until;
            pthread_cond_timedwait(&self->cv, &self->mu, &soon);
            waited_due = 1;
        } else if (h < 0) {
            pthread_cond_timedwait(&self->cv, &self->mu, &until);
        }
    }
    self->nudged = 0;
    pthread_mutex_unlock(&self->mu);
    Py_END_ALLOW_THREADS
    self->serving = 0;
    if (failed_half >= 0) {
        lines_keep_torn(self, failed_half, left);
        pthread_mutex_lock(&self->mu);
        lines_finish_half(self, failed_half);
        pthread_mutex_unlock(&self->mu);
    }
    return Py_BuildValue("(nni)", written, lost, err);
}

static PyObject *lines_torn(Lines *self, PyObject *unused) {
    (void)unused;
    PyObject *rest = self->torn;
    self->torn = NULL;
    return rest != NULL ? rest : PyBytes_FromStringAndSize(NULL, 0);
}

static PyObject *lines_clear(Lines *self, PyObject *unused) {
    (void)unused;
    int a = self->active, o = 1 - a;
    pthread_mutex_lock(&self->mu);
    Py_ssize_t n = self->count[a];
    self->len[a] = 0;
    self->count[a] = 0;
    STORE(self->due, 0);
    if (self->state[o] == READY) {  /* handed over, not yet taken by a write: dropped too */
        n += self->count[o];
        lines_finish_half(self, o);
    }
    if (self->max_lines == 0) {  /* sealed: no line comes again, the room can go (a closed
                                  * sink's batch stays referenced for its counts) */
        lines_free_half(self, a);
        if (self->state[o] == FREE) lines_free_half(self, o);  /* empty, and no writer's */
    }
    pthread_mutex_unlock(&self->mu);
    return PyLong_FromSsize_t(n);
}

static PyObject *lines_seal(Lines *self, PyObject *unused) {
    (void)unused;
    pthread_mutex_lock(&self->mu);
    self->max_lines = 0;
    pthread_cond_signal(&self->cv);  /* a `serve` waiting returns */
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static PyObject *lines_nudge(Lines *self, PyObject *unused) {
    (void)unused;
    pthread_mutex_lock(&self->mu);
    self->nudged = 1;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    Py_RETURN_NONE;
}

static PyObject *lines_pending_bytes(Lines *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(self->len[self->active] + LOAD(self->len[1 - self->active]));
}

static PyObject *lines_room_held(Lines *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSize_t(self->cap[self->active] + LOAD(self->cap[1 - self->active]));
}

static Py_ssize_t lines_len(Lines *self) {
    return self->count[self->active] + LOAD(self->count[1 - self->active]);
}

static PyMethodDef lines_methods[] = {
    {"access", (PyCFunction)(void (*)(void))lines_access, METH_FASTCALL,
     "access(*fields) -> int: the record's JSON line (as access_line writes it) appended; 0: "
     "dropped (full or sealed), 1: appended, 2: appended, and the half now calls for a write "
     "(only when no writer is in `serve`: one in `serve` is handed the half at once)."},
    {"add", (PyCFunction)lines_add, METH_O,
     "add(line: bytes) -> int: a ready line appended; returns as access does."},
    {"serve", (PyCFunction)(void (*)(void))lines_serve, METH_FASTCALL,
     "serve(fd, seconds) -> (written, lost, errno): the halves handed over written to fd as "
     "they come (each counted in `served` as it is), the GIL released throughout, for up to "
     "`seconds`; returns sooner on `nudge`, "
     "on `seal` (once nothing handed over is left), on a failed write (errno, the lines of "
     "that half lost, `torn` as for write), or when the active half called for a write while "
     "the other was written and no line came to hand it over (`write` takes it).  One writer "
     "thread only."},
    {"write", (PyCFunction)lines_write, METH_O,
     "write(fd) -> (lines, errno): a half handed over, else the active half, written to fd "
     "(GIL released) and emptied; errno 0: all written, else those lines are lost (and `torn` "
     "has the rest of a line the failure stopped inside).  One writer thread only."},
    {"torn", (PyCFunction)lines_torn, METH_NOARGS,
     "torn() -> bytes: the rest of the line the last write stopped inside when it failed, to be "
     "written where that line began before anything else; b'' if none.  Handed over once."},
    {"clear", (PyCFunction)lines_clear, METH_NOARGS,
     "clear() -> int: the lines not being written dropped (a half handed over included); how "
     "many.  A sealed batch's room is freed too."},
    {"seal", (PyCFunction)lines_seal, METH_NOARGS,
     "seal(): every later line is dropped (a sink closing); a `serve` returns."},
    {"nudge", (PyCFunction)lines_nudge, METH_NOARGS,
     "nudge(): a `serve` returns at once (its thread has other work: a full queue)."},
    {"pending_bytes", (PyCFunction)lines_pending_bytes, METH_NOARGS,
     "pending_bytes() -> int: the bytes of the lines held."},
    {"room", (PyCFunction)lines_room_held, METH_NOARGS,
     "room() -> int: the bytes both halves hold allocated (a diagnostic)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef lines_members[] = {
    {"serving", T_INT, offsetof(Lines, serving), READONLY,
     "1 while the writer thread is in `serve`, else 0."},
    {NULL, 0, 0, 0, NULL},
};

/* `served` and `writing` are stored by `serve` without the GIL while the loop's thread reads
 * them (a metric, a diagnostic): read with an atomic load.  A member's plain read of a field
 * another thread stores to at the same time is a data race in C11's terms (undefined, however
 * harmless an aligned word is on x86-64), and ThreadSanitizer would report it. */
static PyObject *lines_get_writing(Lines *self, void *unused) {
    (void)unused;
    return PyLong_FromLong(LOAD(self->writing));
}

static PyObject *lines_get_served(Lines *self, void *unused) {
    (void)unused;
    return PyLong_FromSsize_t(LOAD(self->served));
}

static PyGetSetDef lines_getset[] = {
    {"writing", (getter)lines_get_writing, NULL,
     "1 while a write holds one half (the GIL released), else 0.", NULL},
    {"served", (getter)lines_get_served, NULL,
     "Lines `serve` has written, ever, counted as each half is written.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods lines_as_sequence = {
    .sq_length = (lenfunc)lines_len,
};

static PyTypeObject LinesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_aline.Lines",
    .tp_basicsize = sizeof(Lines),
    .tp_dealloc = (destructor)lines_dealloc,
    .tp_as_sequence = &lines_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lines(max_lines, wake_bytes=65536): a line sink's batch in two halves (ADR 0080).",
    .tp_methods = lines_methods,
    .tp_members = lines_members,
    .tp_getset = lines_getset,
    .tp_init = (initproc)lines_init,
    .tp_new = PyType_GenericNew,
};

static PyObject *set_fallback(PyObject *self, PyObject *f) {
    (void)self;
    Py_XSETREF(fallback, Py_NewRef(f));
    Py_RETURN_NONE;
}

static PyObject *scratch_size(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyLong_FromSize_t(cap);
}

static PyMethodDef methods[] = {
    {"scratch_size", scratch_size, METH_NOARGS,
     "scratch_size() -> int: the bytes of scratch room held between lines (a diagnostic)."},
    {"set_fallback", set_fallback, METH_O,
     "set_fallback(f): where a record goes that this encoder cannot write as msgspec would."},
    {"access_line", (PyCFunction)(void (*)(void))access_line, METH_FASTCALL,
     "access_line(*fields) -> bytes: one access log record as a JSON line (newline ended)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_aline", "The access log's JSON line, written in C (ADR 0076).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__aline(void) {
    for (Py_ssize_t i = 0; i < NFIELDS; i++) {
        char *p = prefix[i];
        size_t n = 0;
        p[n++] = i ? ',' : '{';
        p[n++] = '"';
        memcpy(p + n, FIELD[i].key, FIELD[i].len);
        n += FIELD[i].len;
        p[n++] = '"';
        p[n++] = ':';
        prefix_len[i] = n;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *names = PyTuple_New(NFIELDS);
    if (names == NULL) { Py_DECREF(m); return NULL; }
    for (Py_ssize_t i = 0; i < NFIELDS; i++) {
        PyObject *s = PyUnicode_FromString(FIELD[i].key);
        if (s == NULL) { Py_DECREF(names); Py_DECREF(m); return NULL; }
        PyTuple_SET_ITEM(names, i, s);
    }
    if (PyModule_AddObject(m, "FIELDS", names) < 0) { Py_DECREF(names); Py_DECREF(m); return NULL; }
    if (PyType_Ready(&LinesType) < 0) { Py_DECREF(m); return NULL; }
    Py_INCREF(&LinesType);
    if (PyModule_AddObject(m, "Lines", (PyObject *)&LinesType) < 0) {
        Py_DECREF(&LinesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
