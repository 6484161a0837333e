/* The C half of Tulle's libnghttp2 engine (see ng2/build.py and ../nghttp2.py).
 *
 * Why C here: nghttp2 reports everything through callbacks (one per header field, per frame,
 * per DATA chunk).  Calling Python for each would cost more than the parsing saves, so these
 * callbacks stay in C and append to two flat buffers that Python reads once per `feed`:
 *
 *   events: uint32 quintuples (type, stream id, a, offset, length);
 *   arena:  bytes the events point into: a header block as "name\0value\0..." (names and
 *           values never hold NUL: nghttp2 validates both, and on_header refuses one anyway),
 *           or a DATA chunk.
 *
 * Outbound DATA also stays here: one byte queue per stream (`tl_out`), read by nghttp2's data
 * source callback within the peer's windows; Python only appends.  Bounded by the producer:
 * the codec tells the driver to pause above its high-water mark.
 */
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
  TL_HEADERS = 1, /* a = END_STREAM flag | category << 1 (0 request, 1 response, 2 other) */
  TL_DATA = 2,
  TL_END = 3,     /* END_STREAM on a DATA frame */
  TL_RESET = 4,   /* RST_STREAM received; a = error code */
  TL_CLOSE = 5,   /* stream closed with an error nghttp2 or we raised; a = error code */
  TL_GOAWAY = 6,  /* a = last stream id, offset = error code */
  TL_DRAINED = 7, /* an outbound queue that went above high water is empty again */
  TL_INVALID = 8, /* a frame nghttp2 refused; a = frame type | headers category << 8,
                     offset = -lib_error_code */
};

#define TL_KEEP 262144 /* bytes of buffer a connection keeps between reads */

/* The arena one `tl_recv` fills is bounded: once it holds more than TL_KEEP bytes of finished
 * blocks and DATA, decoding pauses (NGHTTP2_ERR_PAUSE, `paused` set) and the codec collects the
 * events before it feeds the rest.  Without it HPACK let a read grow the arena without bound: a
 * header block of ~40 bytes that names a 4 KB table entry 31 times decodes to ~128 KB, so one
 * 256 KiB read of 1xx heads from an upstream filled 800 MB (and the codec's copy as much again),
 * and a client's HEADERS + RST_STREAM pairs 130 MB per 61 KB (ADR 0110).  It also keeps every
 * arena offset within the uint32 the events carry, whatever one read holds. */

typedef struct tl_out {
  struct tl_out *next, *prev;
  int32_t sid;
  uint8_t *buf;
  size_t head, tail, cap;
  int end, over, deferred, done;
  int cancelled; /* tl_reset cancelled our request before its HEADERS left (see there) */
  nghttp2_nv *trailers;
  size_t ntrailers;
  uint8_t *tbuf;
} tl_out;

typedef struct tl_sess {
  nghttp2_session *s;
  uint32_t *ev;
  size_t nev, cev; /* in uint32 units */
  uint8_t *arena;
  size_t alen, acap;
  uint8_t *obuf; /* what mem_send produced */
  size_t olen, ocap;
  size_t block_size, block_limit; /* the header block being decoded, and its hard limit */
  size_t block_start; /* where that block starts in the arena */
  int in_block;       /* a header block is being decoded (it may span several reads) */
  int paused;         /* tl_recv stopped early: the arena is full (see TL_KEEP) */
  int too_large;
  int write_blocked;
  size_t high_water;
  size_t active;       /* tl_out not yet done */
  size_t outbound;     /* streams we opened that are not closed */
  int32_t rst_sid;     /* the stream a received RST_STREAM is closing */
  uint32_t term_code;  /* error code of a GOAWAY we sent with an error, + 1 */
  uint32_t data_frames; /* DATA frames sent since Python last looked (the abuse guard's) */
  int lib_error;       /* last connection-level error nghttp2 reported */
  char errmsg[160];
  tl_out outs;         /* sentinel of every tl_out allocated */
} tl_sess;

static int grow(void **p, size_t *cap, size_t need, size_t unit) {
  if (need <= *cap) return 0;
  size_t n = *cap ? *cap : 256;
  while (n < need) n *= 2;
  void *q = realloc(*p, n * unit);
  if (!q) return -1;
  *p = q;
  *cap = n;
  return 0;
}

static int push(tl_sess *t, uint32_t type, int32_t sid, uint32_t a, uint32_t off, uint32_t len) {
  if (grow((void **)&t->ev, &t->cev, t->nev + 5, sizeof(uint32_t))) return -1;
  uint32_t *e = t->ev + t->nev;
  e[0] = type; e[1] = (uint32_t)sid; e[2] = a; e[3] = off; e[4] = len;
  t->nev += 5;
  return 0;
}

static int put(tl_sess *t, const uint8_t *p, size_t n) {
  if (grow((void **)&t->arena, &t->acap, t->alen + n, 1)) return -1;
  memcpy(t->arena + t->alen, p, n);
  t->alen += n;
  return 0;
}

/* -- inbound --------------------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  tl_sess *t = ud;
  (void)s; (void)f;
  t->block_size = 0;
  return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
  tl_sess *t = ud;
  (void)s; (void)f; (void)flags;
  t->block_size += namelen + valuelen + 32;
  if (t->block_size > t->block_limit) {
    t->too_large = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE; /* a connection error: GOAWAY */
  }
  if (memchr(name, 0, namelen) || memchr(value, 0, valuelen))
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* never reached: nghttp2 refuses NUL */
  if (grow((void **)&t->arena, &t->acap, t->alen + namelen + valuelen + 2, 1))
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  uint8_t *p = t->arena + t->alen;
  memcpy(p, name, namelen);
  p[namelen] = 0;
  memcpy(p + namelen + 1, value, valuelen);
  p[namelen + 1 + valuelen] = 0;
  t->alen += namelen + valuelen + 2;
  if (t->block_start > TL_KEEP) { /* hand the finished blocks over first (TL_KEEP) */
    t->paused = 1;
    return NGHTTP2_ERR_PAUSE;
  }
  return 0;
}

static int on_invalid_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                             size_t namelen, const uint8_t *value, size_t valuelen,
                             uint8_t flags, void *ud) {
  (void)s; (void)f; (void)name; (void)namelen; (void)value; (void)valuelen; (void)flags;
  (void)ud;
  /* nghttp2 would drop a field whose name it finds invalid and pass the rest on; a field we
   * cannot forward unchanged makes the request malformed instead (RFC 9113 8.2.1). */
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud) {
  tl_sess *t = ud;
  (void)s; (void)flags;
  uint32_t off = (uint32_t)t->alen;
  if (put(t, data, len) || push(t, TL_DATA, sid, 0, off, (uint32_t)len))
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (t->alen > TL_KEEP) { /* see TL_KEEP */
    t->paused = 1;
    return NGHTTP2_ERR_PAUSE;
  }
  return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  tl_sess *t = ud;
  (void)s;
  int32_t sid = f->hd.stream_id;
  switch (f->hd.type) {
  case NGHTTP2_HEADERS: {
    uint32_t cat = f->headers.cat == NGHTTP2_HCAT_REQUEST ? 0
                   : f->headers.cat == NGHTTP2_HCAT_RESPONSE ? 1 : 2;
    uint32_t end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) ? 1 : 0;
    t->in_block = 0;
    if (push(t, TL_HEADERS, sid, end | (cat << 1), (uint32_t)t->block_start,
             (uint32_t)(t->alen - t->block_start)))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    break;
  }
  case NGHTTP2_DATA:
    if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) && push(t, TL_END, sid, 0, 0, 0))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    break;
  case NGHTTP2_RST_STREAM:
    t->rst_sid = sid;
    if (push(t, TL_RESET, sid, f->rst_stream.error_code, 0, 0))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    break;
  case NGHTTP2_GOAWAY:
    if (push(t, TL_GOAWAY, 0, (uint32_t)f->goaway.last_stream_id, f->goaway.error_code, 0))
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    break;
  default:
    break;
  }
  return 0;
}

/* A header block is written into the arena as it is decoded and its event pushed when the
 * block completes (on_frame_recv); one block at a time is decoded per connection (RFC 9113
 * 6.10), so one start position suffices, and `tl_clear` keeps an unfinished block. */
static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *ud) {
  tl_sess *t = ud;
  (void)s;
  if (hd->type == NGHTTP2_HEADERS || hd->type == NGHTTP2_PUSH_PROMISE) {
    t->block_start = t->alen;
    t->in_block = 1;
  } else if (hd->type != NGHTTP2_CONTINUATION) {
    t->in_block = 0; /* a block nghttp2 dropped (a refused stream) ended without an event */
  }
  return 0;
}

static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int lib_error,
                            void *ud) {
  tl_sess *t = ud;
  (void)s;
  uint32_t cat = f->hd.type == NGHTTP2_HEADERS ? (uint32_t)f->headers.cat : 0;
  if (push(t, TL_INVALID, f->hd.stream_id, f->hd.type | (cat << 8), (uint32_t)(-lib_error), 0))
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static void out_free(tl_out *o) {
  o->prev->next = o->next;
  o->next->prev = o->prev;
  free(o->buf);
  free(o->trailers);
  free(o->tbuf);
  free(o);
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud) {
  tl_sess *t = ud;
  tl_out *o = nghttp2_session_get_stream_user_data(s, sid);
  int cancelled = o && o->cancelled; /* counted and reported by tl_reset already */
  if ((sid & 1) == (nghttp2_session_check_server_session(s) ? 0 : 1) && t->outbound &&
      !cancelled)
    t->outbound--;
  if (o) {
    if (!o->done) {
      o->done = 1;
      t->active--;
      if (o->over && push(t, TL_DRAINED, sid, 0, 0, 0)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    out_free(o);
    nghttp2_session_set_stream_user_data(s, sid, NULL);
  }
  if (code != NGHTTP2_NO_ERROR && sid != t->rst_sid && !cancelled &&
      push(t, TL_CLOSE, sid, code, 0, 0))
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  tl_sess *t = ud;
  (void)s;
  if (f->hd.type == NGHTTP2_DATA) t->data_frames++;
  if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR &&
      !t->term_code)
    t->term_code = f->goaway.error_code + 1;
  return 0;
}

static int on_error(nghttp2_session *s, int lib_error, const char *msg, size_t len,
                    void *ud) {
  tl_sess *t = ud;
  (void)s;
  if (!t->lib_error) {
    t->lib_error = lib_error;
    if (len >= sizeof(t->errmsg)) len = sizeof(t->errmsg) - 1;
    memcpy(t->errmsg, msg, len);
    t->errmsg[len] = 0;
  }
  return 0;
}

/* -- outbound -------------------------------------------------------------------------- */

static ssize_t read_data(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *dflags, nghttp2_data_source *src, void *ud) {
  tl_sess *t = ud;
  tl_out *o = src->ptr;
  size_t avail = o->tail - o->head;
  if (t->write_blocked || (!avail && !o->end)) {
    o->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  size_t n = avail < length ? avail : length;
  if (n) /* an empty queue may have no buffer at all: memcpy from NULL is undefined even for
          * 0 bytes (UBSan, ADR 0110) */
    memcpy(buf, o->buf + o->head, n);
  o->head += n;
  if (o->head == o->tail) {
    o->head = o->tail = 0;
    if (o->cap > TL_KEEP / 4) { /* a burst's room is given back when it has drained, not
                                 * held for the stream's life (a long gRPC stream's) */
      free(o->buf);
      o->buf = NULL;
      o->cap = 0;
    }
    if (o->end) {
      *dflags |= NGHTTP2_DATA_FLAG_EOF;
      if (o->ntrailers) {
        *dflags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (nghttp2_submit_trailer(s, sid, o->trailers, o->ntrailers))
          return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      }
      o->done = 1;
      t->active--;
    }
    if (o->over) {
      o->over = 0;
      if (push(t, TL_DRAINED, sid, 0, 0, 0)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  }
  return (ssize_t)n;
}

/* The queue of `sid`, created (and its data source submitted) on first use; NULL when the
 * stream is gone. */
static void out_link(tl_sess *t, tl_out *o) {
  o->next = t->outs.next;
  o->prev = &t->outs;
  t->outs.next->prev = o;
  t->outs.next = o;
  if (!o->done) t->active++;
}

static tl_out *out_for(tl_sess *t, int32_t sid) {
  if (!nghttp2_session_find_stream(t->s, sid)) {
    /* A stream we opened whose HEADERS nghttp2 has not sent yet (it creates the stream
     * then): its queue was made with the request (tl_submit_headers). */
    for (tl_out *o = t->outs.next; o != &t->outs; o = o->next)
      if (o->sid == sid) return o->done ? NULL : o;
    return NULL;
  }
  tl_out *o = nghttp2_session_get_stream_user_data(t->s, sid);
  if (o) return o->done ? NULL : o;
  o = calloc(1, sizeof(*o));
  if (!o) return NULL;
  o->sid = sid;
  nghttp2_data_provider prd;
  prd.source.ptr = o;
  prd.read_callback = read_data;
  if (nghttp2_submit_data(t->s, NGHTTP2_FLAG_END_STREAM, sid, &prd)) {
    free(o);
    return NULL;
  }
  nghttp2_session_set_stream_user_data(t->s, sid, o);
  out_link(t, o);
  return o;
}

static void wake(tl_sess *t, tl_out *o) {
  if (o->deferred && !t->write_blocked) {
    o->deferred = 0;
    nghttp2_session_resume_data(t->s, o->sid);
  }
}

/* Append `len` bytes to the stream's queue.  Returns the bytes now queued, or -1 when the
 * stream is gone (the data is dropped, as a reset stream's is). */
long tl_send_data(tl_sess *t, int32_t sid, const uint8_t *data, size_t len) {
  tl_out *o = out_for(t, sid);
  if (!o || o->end) return -1;
  if (len) {
    if (o->head && o->tail + len > o->cap) { /* compact before growing */
      memmove(o->buf, o->buf + o->head, o->tail - o->head);
      o->tail -= o->head;
      o->head = 0;
    }
    if (grow((void **)&o->buf, &o->cap, o->tail + len, 1)) return -1;
    memcpy(o->buf + o->tail, data, len);
    o->tail += len;
  }
  wake(t, o);
  return (long)(o->tail - o->head);
}

/* Mark the queue of `sid` above the high-water mark: a TL_DRAINED follows when it empties.
 * Returns 1 when it was not marked yet. */
int tl_mark_over(tl_sess *t, int32_t sid) {
  tl_out *o = nghttp2_session_get_stream_user_data(t->s, sid);
  if (!o || o->done || o->over) return 0;
  o->over = 1;
  return 1;
}

size_t tl_pending(tl_sess *t, int32_t sid) {
  tl_out *o = nghttp2_session_get_stream_user_data(t->s, sid);
  return o && !o->done ? o->tail - o->head : 0;
}

static int nv_split(const uint8_t *blob, size_t len, size_t n, nghttp2_nv *nv);

/* End the stream after its queue, with trailers when `n` > 0 (`blob` as tl_submit_headers
 * takes it).  -1: the stream is gone or ended; -2: the trailers are not n fields. */
int tl_send_end(tl_sess *t, int32_t sid, const uint8_t *blob, size_t len, size_t n) {
  tl_out *o = out_for(t, sid);
  if (!o || o->end) return -1;
  if (n) {
    uint8_t *tbuf = malloc(len ? len : 1);
    nghttp2_nv *nv = calloc(n, sizeof(nghttp2_nv));
    if (!tbuf || !nv) { free(tbuf); free(nv); return -1; }
    memcpy(tbuf, blob, len);
    if (nv_split(tbuf, len, n, nv)) { free(tbuf); free(nv); return -2; }
    o->tbuf = tbuf;
    o->trailers = nv;
    o->ntrailers = n;
  }
  o->end = 1;
  wake(t, o);
  return 0;
}

/* Fields that differ on every request or must stay secret: never into the HPACK table. */
static int no_index(const uint8_t *name, size_t len, size_t vlen) {
#define IS(lit) (len == sizeof(lit) - 1 && !memcmp(name, lit, len))
  return IS("authorization") || IS("proxy-authorization") || IS("x-request-id") ||
         IS("traceparent") || IS("b3") || IS("x-b3-traceid") || IS("x-b3-spanid") ||
         IS("x-b3-parentspanid") || (IS("cookie") && vlen < 20);
#undef IS
}

/* `blob` is "name0\0value0\0name1\0...\0value(n-1)": exactly 2n - 1 NULs, so no name or
 * value holds one (HTTP/2 forbids NUL in both; a head that has one is refused, never split
 * into other fields).  Returns -1 when the blob is not n fields. */
static int nv_split(const uint8_t *blob, size_t len, size_t n, nghttp2_nv *nv) {
  const uint8_t *p = blob, *end = blob + len;
  if (!n) return len ? -1 : 0;
  for (size_t i = 0; i < 2 * n; i++) {
    const uint8_t *z = i + 1 < 2 * n ? memchr(p, 0, (size_t)(end - p)) : end;
    if (!z) return -1;
    if (i & 1) {
      nghttp2_nv *f = &nv[i / 2];
      f->value = (uint8_t *)p;
      f->valuelen = (size_t)(z - p);
      f->flags = no_index(f->name, f->namelen, f->valuelen) ? NGHTTP2_NV_FLAG_NO_INDEX
                                                              : NGHTTP2_NV_FLAG_NONE;
    } else {
      nv[i / 2].name = (uint8_t *)p;
      nv[i / 2].namelen = (size_t)(z - p);
    }
    if (z == end) break;
    p = z + 1;
  }
  if (memchr(nv[n - 1].value, 0, nv[n - 1].valuelen)) return -1;
  return 0;
}

/* HEADERS on `sid` (-1: open a new stream, client side).  Returns the stream id or an
 * nghttp2 error (< 0). */
int32_t tl_submit_headers(tl_sess *t, int32_t sid, int end, const uint8_t *blob, size_t len,
                          size_t n) {
  if (sid != -1 && !nghttp2_session_find_stream(t->s, sid)) return NGHTTP2_ERR_STREAM_CLOSED;
  nghttp2_nv stack[48];
  nghttp2_nv *nv = n <= 48 ? stack : calloc(n, sizeof(nghttp2_nv));
  if (!nv) return NGHTTP2_ERR_NOMEM;
  if (!n || nv_split(blob, len, n, nv)) {
    if (nv != stack) free(nv);
    return NGHTTP2_ERR_INVALID_ARGUMENT;
  }
  int32_t rv;
  if (sid == -1 && !end) { /* a request with a body: its queue goes with it */
    tl_out *o = calloc(1, sizeof(*o));
    if (!o) { if (nv != stack) free(nv); return NGHTTP2_ERR_NOMEM; }
    nghttp2_data_provider prd;
    prd.source.ptr = o;
    prd.read_callback = read_data;
    rv = nghttp2_submit_request(t->s, NULL, nv, n, &prd, o);
    if (rv > 0) {
      o->sid = rv;
      out_link(t, o);
    } else {
      free(o);
    }
  } else {
    rv = nghttp2_submit_headers(t->s, end ? NGHTTP2_FLAG_END_STREAM : 0, sid, NULL, nv, n,
                                NULL);
  }
  if (nv != stack) free(nv);
  if (rv > 0 && sid == -1) t->outbound++;
  return rv;
}

/* The count of ours drops now for a request cancelled unsent; the close nghttp2 makes of it
 * at the next mem_send neither counts it again nor reports it (`cancelled`). */
static void cancel_unsent(tl_sess *t, tl_out *o, int32_t sid, uint32_t code) {
  nghttp2_submit_rst_stream(t->s, NGHTTP2_FLAG_NONE, sid, code);
  o->cancelled = 1;
  if (!o->done) { /* (a bodiless request's mark is made done: it never counted) */
    o->done = 1;
    t->active--;
  }
  if (t->outbound) t->outbound--;
  free(o->buf);
  o->buf = NULL;
  o->head = o->tail = o->cap = 0;
}

/* RST_STREAM on `sid`.  Returns 1 when the stream exists (its close will be reported).
 *
 * A request of ours whose HEADERS are still queued is cancelled unsent (the pool writes once
 * per loop turn: a request the router cancels in the turn that opened it).  RST_STREAM on a
 * request in nghttp2's `ob_syn` queue marks its HEADERS cancelled; at the next mem_send
 * nghttp2 opens the stream, finds the mark before the block is HPACK-encoded, and closes it.
 * No byte reaches the peer, neither HEADERS nor RST_STREAM.  (A before_frame_send callback
 * returning NGHTTP2_ERR_CANCEL would come too late: the block is encoded by then, and the next
 * request's indexed fields name table entries the peer never got: COMPRESSION_ERROR, ADR 0132.)
 *
 * That close must neither count the stream a second time (it made `outbound` one short for
 * every cancelled request, ADR 0110) nor report a reset the codec asked for itself: the
 * stream's user data, a `tl_out`, is marked `cancelled`.  A request with a body has its queue
 * for that.  A bodiless one (a GET, a DELETE) gets an empty one here: nghttp2 attaches user
 * data to a request still queued (since nghttp2 PR #1211, 2018; checked on 1.52), and refuses
 * for a stream already closed, which is left alone (an RST_STREAM would go out for it). */
int tl_reset(tl_sess *t, int32_t sid, uint32_t code) {
  if (nghttp2_session_find_stream(t->s, sid)) {
    nghttp2_submit_rst_stream(t->s, NGHTTP2_FLAG_NONE, sid, code);
    return 1;
  }
  for (tl_out *o = t->outs.next; o != &t->outs; o = o->next) {
    if (o->sid == sid) {
      if (!o->done) cancel_unsent(t, o, sid, code); /* (done: cancelled already) */
      return 0;
    }
  }
  if (nghttp2_session_check_server_session(t->s) || !(sid & 1)) return 0;
  tl_out *o = calloc(1, sizeof(*o));
  if (!o) return 0; /* out of memory: the request goes out, and its answer is dropped */
  o->sid = sid;
  o->done = 1; /* nothing to send: not `active` */
  if (nghttp2_session_set_stream_user_data(t->s, sid, o)) { /* not queued: closed already */
    free(o);
    return 0;
  }
  out_link(t, o);
  cancel_unsent(t, o, sid, code);
  return 0;
}

/* Everything nghttp2 has to send, into t->obuf.  Returns its length or an error (< 0). */
long tl_mem_send(tl_sess *t) {
  t->olen = 0;
  if (t->ocap > TL_KEEP) { /* a large flight went out last time: give the peak back */
    free(t->obuf);
    t->obuf = NULL;
    t->ocap = 0;
  }
  for (;;) {
    const uint8_t *p;
    ssize_t n = nghttp2_session_mem_send(t->s, &p);
    if (n < 0) return n;
    if (n == 0) return (long)t->olen;
    if (grow((void **)&t->obuf, &t->ocap, t->olen + (size_t)n, 1)) return NGHTTP2_ERR_NOMEM;
    memcpy(t->obuf + t->olen, p, (size_t)n);
    t->olen += (size_t)n;
  }
}

/* Feed `len` bytes.  Returns the bytes used or an nghttp2 error (< 0).  With `paused` set, fewer
 * may have been used (or all, with the frame they end not yet reported): collect the events,
 * `tl_clear`, and call again with the rest, even when nothing is left. */
long tl_recv(tl_sess *t, const uint8_t *data, size_t len) {
  t->paused = 0;
  t->rst_sid = 0;
  ssize_t rv = nghttp2_session_mem_recv(t->s, data, len);
  t->rst_sid = 0;
  return (long)rv;
}

/* The events were read: forget them, and the arena but for a header block still arriving. */
void tl_clear(tl_sess *t) {
  t->nev = 0;
  if (t->in_block && t->block_start) {
    memmove(t->arena, t->arena + t->block_start, t->alen - t->block_start);
    t->alen -= t->block_start;
    t->block_start = 0;
  } else if (!t->in_block) {
    t->alen = 0;
  }
  /* A read can fill the arena to TL_KEEP plus one header block of twice the limit (and a
   * DATA chunk) before it pauses: give such a peak back instead of keeping it for the
   * connection's life. */
  if (t->acap > TL_KEEP && t->alen <= TL_KEEP / 2) {
    uint8_t *a = realloc(t->arena, TL_KEEP);
    if (a) { t->arena = a; t->acap = TL_KEEP; }
  }
  if (t->cev > TL_KEEP / 4) {
    free(t->ev);
    t->ev = NULL;
    t->cev = 0;
  }
}

void tl_set_write_blocked(tl_sess *t, int blocked) {
  t->write_blocked = blocked;
  if (blocked) return;
  for (tl_out *o = t->outs.next; o != &t->outs; o = o->next)
    if (!o->done) wake(t, o);
}

/* -- the session ----------------------------------------------------------------------- */

tl_sess *tl_new(int server, uint32_t max_streams, uint32_t stream_window,
                uint32_t conn_window, uint32_t header_limit) {
  /* A window is at most 2^31 - 1 (RFC 9113 6.9.1): a larger one, cast to int32 below or
   * sent as SETTINGS_INITIAL_WINDOW_SIZE, made nghttp2 refuse the session, and every HTTP/2
   * connection failed with buffer_high_water_bytes >= 32 MiB (64 x it, ADR 0110). */
  if (stream_window > INT32_MAX) stream_window = INT32_MAX;
  if (conn_window > INT32_MAX) conn_window = INT32_MAX;
  tl_sess *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->outs.next = t->outs.prev = &t->outs;
  t->block_limit = header_limit;
  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb)) { free(t); return NULL; }
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_invalid_header_callback(cb, on_invalid_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_callbacks_set_error_callback2(cb, on_error);
  nghttp2_option *opt;
  if (nghttp2_option_new(&opt)) { nghttp2_session_callbacks_del(cb); free(t); return NULL; }
  nghttp2_option_set_no_auto_window_update(opt, 1); /* the driver acknowledges (rule 3) */
  nghttp2_option_set_no_closed_streams(opt, 1);     /* closed streams are forgotten */
  nghttp2_option_set_max_reserved_remote_streams(opt, 0);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
  int rv = server ? nghttp2_session_server_new2(&t->s, cb, t, opt)
                  : nghttp2_session_client_new2(&t->s, cb, t, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  if (rv) { free(t); return NULL; }
  nghttp2_settings_entry iv[4];
  size_t n = 0;
  iv[n].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE; iv[n++].value = header_limit;
  iv[n].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE; iv[n++].value = stream_window;
  if (server) {
    iv[n].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS; iv[n++].value = max_streams;
  } else {
    iv[n].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH; iv[n++].value = 0;
  }
  if (nghttp2_submit_settings(t->s, NGHTTP2_FLAG_NONE, iv, n) ||
      (conn_window > 65535 &&
       nghttp2_session_set_local_window_size(t->s, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_window))) {
    nghttp2_session_del(t->s);
    free(t);
    return NULL;
  }
  return t;
}

void tl_del(tl_sess *t) {
  if (!t) return;
  nghttp2_session_del(t->s);
  while (t->outs.next != &t->outs) out_free(t->outs.next);
  free(t->ev);
  free(t->arena);
  free(t->obuf);
  free(t);
}
