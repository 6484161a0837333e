"""Build the libnghttp2 engine's C half (cffi API mode) into `tulle.dataplane.protocols.ng2._ng2`.

Why a build step of our own: cffi's API mode compiles `shim.c` against libnghttp2's headers
(Debian `libnghttp2-dev`, installed by `scripts/install-system-deps.sh test`), so the callbacks
nghttp2 makes per header field and per frame stay in C (see shim.c).  `make deps` runs this
after installing the package; the result is a build output, never committed.

    python -m tulle.dataplane.protocols.ng2.build

`TULLE_NG2_SANITIZE=1` builds an instrumented copy instead (AddressSanitizer and
UndefinedBehaviorSanitizer, `-O1 -g`, every UB finding fatal) for an audit run: Python must then
start with the ASan runtime preloaded (ADR 0110 has the commands).  Rebuild without it before a
normal run: an uninstrumented Python cannot load the instrumented module.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Final

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct tl_sess {
    nghttp2_session *s;
    uint32_t *ev;
    size_t nev;
    uint8_t *arena;
    size_t alen;
    uint8_t *obuf;
    size_t olen;
    int too_large;
    int paused;
    size_t active;
    size_t outbound;
    uint32_t term_code;
    uint32_t data_frames;
    int lib_error;
    char errmsg[160];
    ...;
} tl_sess;

tl_sess *tl_new(int server, uint32_t max_streams, uint32_t stream_window,
                uint32_t conn_window, uint32_t header_limit);
void tl_del(tl_sess *t);
long tl_recv(tl_sess *t, const uint8_t *data, size_t len);
void tl_clear(tl_sess *t);
long tl_mem_send(tl_sess *t);
int32_t tl_submit_headers(tl_sess *t, int32_t sid, int end, const uint8_t *blob, size_t len,
                          size_t n);
long tl_send_data(tl_sess *t, int32_t sid, const uint8_t *data, size_t len);
int tl_send_end(tl_sess *t, int32_t sid, const uint8_t *blob, size_t len, size_t n);
int tl_mark_over(tl_sess *t, int32_t sid);
size_t tl_pending(tl_sess *t, int32_t sid);
int tl_reset(tl_sess *t, int32_t sid, uint32_t code);
void tl_set_write_blocked(tl_sess *t, int blocked);

int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *session);
int32_t nghttp2_session_get_next_stream_id(nghttp2_session *session);
uint32_t nghttp2_session_get_remote_settings(nghttp2_session *session, int id);
int nghttp2_submit_goaway(nghttp2_session *session, uint8_t flags, int32_t last_stream_id,
                          uint32_t error_code, const uint8_t *opaque_data, size_t opaque_data_len);
int nghttp2_submit_shutdown_notice(nghttp2_session *session);
int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code);
int nghttp2_submit_ping(nghttp2_session *session, uint8_t flags, const uint8_t *opaque_data);
void *nghttp2_session_find_stream(nghttp2_session *session, int32_t stream_id);
const char *nghttp2_strerror(int lib_error_code);
"""


SANITIZE_COMPILE: Final = ["-O1", "-g", "-fno-omit-frame-pointer",
                            "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
"""Compile options of the sanitizer build (TULLE_NG2_SANITIZE=1; ADR 0110).  Compiled only, not
linked against a runtime: the one preloaded into Python serves it, gcc's (libasan, libubsan)
for the tests or atheris's (`asan_with_fuzzer.so`, which keeps libFuzzer's coverage) for a
fuzz campaign; two ASan runtimes in one process refuse to start."""


def ffibuilder(sanitize: bool = False) -> FFI:
    ffi = FFI()
    ffi.cdef(CDEF)
    compile_args = ["-Wall", "-Wno-unused-function"]
    compile_args += SANITIZE_COMPILE if sanitize else ["-O2"]
    ffi.set_source("tulle.dataplane.protocols.ng2._ng2",
                   (HERE / "shim.c").read_text(),
                   libraries=["nghttp2"],
                   extra_compile_args=compile_args)
    return ffi


def main() -> int:
    """Compile in place (next to this file), from the `src` directory above the package."""
    src = HERE.parents[3]
    sanitize = os.environ.get("TULLE_NG2_SANITIZE", "") not in ("", "0")
    ffibuilder(sanitize).compile(tmpdir=str(src), verbose=False)
    for leftover in ("_ng2.c", "_ng2.o"):  # only the shared object is needed
        (HERE / leftover).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
