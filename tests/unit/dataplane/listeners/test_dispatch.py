"""Forwarding headers and request ids, set in one place for every protocol."""

from __future__ import annotations

import uuid

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.listeners.dispatch import add_forwarding_headers, request_id


def head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", b"svc", b"http", list(headers))


def test_request_ids_are_valid_distinct_v4_uuids() -> None:
    ids = {request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in list(ids)[:50]:
        u = uuid.UUID(rid.decode())
        assert u.version == 4 and u.variant == uuid.RFC_4122


def test_headers_added_when_absent() -> None:
    h = head((b"accept", b"*/*"))
    add_forwarding_headers(h, b"10.0.0.1", True)
    d = dict(h.headers)
    assert d[b"x-forwarded-for"] == b"10.0.0.1"
    assert d[b"x-forwarded-proto"] == b"http"
    assert len(d[b"x-request-id"]) == 36


def test_existing_headers_are_kept_and_xff_appended() -> None:
    h = head((b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https"),
             (b"x-request-id", b"abc"))
    add_forwarding_headers(h, b"10.0.0.1", True)
    assert h.headers == [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.1"),
                         (b"x-forwarded-proto", b"https"), (b"x-request-id", b"abc")]


def test_request_id_generation_can_be_turned_off() -> None:
    h = head()
    add_forwarding_headers(h, b"", False)
    assert h.headers == [(b"x-forwarded-proto", b"http")]


def test_a_forked_worker_draws_a_new_prefix() -> None:
    import os

    parent = request_id()[:24]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its prefix and exit without running pytest's teardown
        os.write(w, request_id()[:24])
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64)
    os.close(r)
    os.close(w)
    assert child != parent
