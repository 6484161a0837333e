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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

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

static int reserve(size_t need) {
    if (need <= cap) return 0;
    size_t n = cap ? cap : 4096;
    while (n < need) n *= 2;
    char *p = PyMem_Realloc(buf, n);
    if (p == NULL) { PyErr_NoMemory(); return -1; }
    buf = p;
    cap = n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* Eight bytes at a time: whether any is one a string cannot hold as it is (a C0 control,
 * `"`, `\`, or with `high` any byte >= 0x80).  Standard SWAR tests: a byte below 0x20, a byte
 * equal to a value (its XOR is zero), the top bits. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline int special8(uint64_t x, uint64_t high) {
    uint64_t lt20 = (x - ONES * 0x20) & ~x;
    uint64_t q = x ^ (ONES * 0x22), b = x ^ (ONES * 0x5C);
    uint64_t eq = ((q - ONES) & ~q) | ((b - ONES) & ~b);
    return ((lt20 | eq) & HIGHS) != 0 || (x & high) != 0;
}

/* Escaped as msgspec escapes: `"`, `\`, C0 controls; bytes >= 0x80 are Latin-1 -> UTF-8 when
 * `latin1`, copied as they are (already UTF-8) otherwise. */
static size_t put_escaped_slow(char *o, const unsigned char *s, Py_ssize_t n, int latin1) {
    char *start = o;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && (c < 0x80 || !latin1)) {
            *o++ = (char)c;
            continue;
        }
        if (c >= 0x80) {
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
    uint64_t high = latin1 ? HIGHS : 0;
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

static PyObject *access_line(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != NFIELDS) {
        PyErr_Format(PyExc_TypeError, "access_line takes %zd arguments (%zd given)",
                     NFIELDS, nargs);
        return NULL;
    }
    /* Pass 1: the size (and the UTF-8 of each str, cached by CPython on the object). */
    size_t need = 2;  /* }, \n */
    const char *text[NFIELDS];
    Py_ssize_t len[NFIELDS];
    long long num[NFIELDS];
    for (Py_ssize_t i = 0; i < NFIELDS; i++) {
        PyObject *v = args[i];
        need += FIELD[i].len + 4;  /* "key": and a comma */
        text[i] = NULL;
        len[i] = 0;
        if (v == Py_None) { need += 4; continue; }
        if (FIELD[i].kind == TIME && PyLong_CheckExact(v)) {  /* nanoseconds */
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            /* (beyond 2^63 - 1 ns, 2262-04-11, is an overflow: the fallback, as before 1970) */
            if (overflow || (x == -1 && PyErr_Occurred()) || x < 0) {
                PyErr_Clear();
                return refer(args, nargs, "a start time out of range");
            }
            num[i] = x;
            need += 2 + 32;
            continue;
        }
        if (FIELD[i].kind == STR || FIELD[i].kind == TIME) {
            if (PyUnicode_Check(v) && PyUnicode_IS_COMPACT_ASCII(v)) {  /* its own UTF-8 */
                text[i] = (const char *)PyUnicode_DATA(v);
                len[i] = PyUnicode_GET_LENGTH(v);
                num[i] = 0;
            } else if (PyUnicode_Check(v)) {
                text[i] = PyUnicode_AsUTF8AndSize(v, &len[i]);
                if (text[i] == NULL) {  /* a lone surrogate */
                    PyErr_Clear();
                    return refer(args, nargs, "a string not encodable as UTF-8");
                }
                num[i] = 0;  /* UTF-8 as it is */
            } else if (PyBytes_Check(v)) {
                text[i] = PyBytes_AS_STRING(v);
                len[i] = PyBytes_GET_SIZE(v);
                num[i] = 1;  /* Latin-1 */
            } else {
                if (FIELD[i].kind == TIME && PyLong_Check(v))  /* a bool or an int enum */
                    return refer(args, nargs, "an int subclass");
                PyErr_Format(PyExc_TypeError, "%s: str, bytes or None%s", FIELD[i].key,
                             FIELD[i].kind == TIME ? " (or int nanoseconds)" : "");
                return NULL;
            }
            need += 2 + 6 * (size_t)len[i];
        } else {
            if (!PyLong_CheckExact(v)) {  /* a bool or an int enum: msgspec's own spelling */
                if (PyLong_Check(v)) return refer(args, nargs, "an int subclass");
                PyErr_Format(PyExc_TypeError, "%s: int or None", FIELD[i].key);
                return NULL;
            }
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow || (x == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return refer(args, nargs, "an integer beyond 64 bits");
            }
            if (FIELD[i].kind == DUR && (x < 0 || x >= MAX_US))
                return refer(args, nargs, "a duration out of range");
            num[i] = x;
            need += 24;
        }
    }
    if (reserve(need + SLACK) < 0) return NULL;
    /* Pass 2: the line. */
    char *o = buf;
    for (Py_ssize_t i = 0; i < NFIELDS; i++) {
        memcpy(o, prefix[i], PFX);  /* `{"key":` or `,"key":` and padding */
        o += prefix_len[i];
        if (args[i] == Py_None) { memcpy(o, "null", 4); o += 4; continue; }
        switch (FIELD[i].kind) {
        case TIME:
            if (text[i] == NULL) {  /* nanoseconds */
                *o++ = '"';
                size_t n = put_time(o, num[i]);
                if (n == 0) return refer(args, nargs, "a start time gmtime cannot take");
                o += n;
                *o++ = '"';
                break;
            }
            __attribute__((fallthrough));  /* a start time already written out */
        case STR:
            *o++ = '"';
            o += put_escaped(o, (const unsigned char *)text[i], len[i], (int)num[i]);
            *o++ = '"';
            break;
        case INT:
            if (num[i] < 0) { *o++ = '-'; o += put_u64(o, 0ULL - (unsigned long long)num[i]); }
            else o += put_u64(o, (unsigned long long)num[i]);
            break;
        case DUR:
            o += put_ms(o, num[i]);
            break;
        }
    }
    *o++ = '}';
    *o++ = '\n';
    PyObject *line = PyBytes_FromStringAndSize(buf, o - buf);
    if (cap > KEEP) {  /* a huge record's room is given back, not held for the process's life */
        PyMem_Free(buf);
        buf = NULL;
        cap = 0;
    }
    return line;
}

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
    return m;
}
