"""The compiled header edit (`filters/header_edit.py`): what the request stream applies to a
head straight, with no chain run, on every request of a route with header filters."""

from __future__ import annotations

import inspect

from tulle import native
from tulle.dataplane.filters import factory_for
from tulle.dataplane.filters.header_edit import HeaderEdit
from tulle.dataplane.filters.headers import HeadersFactory
from tulle.proxyconfig.filters.headers import (
    HTTPHeader,
    RequestHeaderModifier,
    ResponseHeaderModifier,
)


def test_remove_and_set_drop_every_value_then_set_and_add_append_in_order() -> None:
    edit = HeaderEdit(RequestHeaderModifier(
        set=[HTTPHeader(name="X-Env", value="prod")], add=[HTTPHeader(name="X-Tag", value="b")],
        remove=["X-Secret", "x-gone"]))
    fields = [(b"x-secret", b"1"), (b"x-env", b"dev"), (b"accept", b"*/*"), (b"x-secret", b"2"),
              (b"x-tag", b"a"), (b"x-env", b"dev2")]
    edit.apply(fields)
    assert fields == [(b"accept", b"*/*"), (b"x-tag", b"a"), (b"x-env", b"prod"),
                      (b"x-tag", b"b")]


def test_an_add_only_edit_drops_nothing_and_an_empty_list_is_fine() -> None:
    edit = HeaderEdit(ResponseHeaderModifier(add=[HTTPHeader(name="X-Served-By", value="t")]))
    assert edit.drop == frozenset()
    fields: list[tuple[bytes, bytes]] = []
    edit.apply(fields)
    edit.apply(fields)
    assert fields == [(b"x-served-by", b"t"), (b"x-served-by", b"t")]


def test_a_flood_of_one_removed_name_is_emptied_in_one_call() -> None:
    edit = HeaderEdit(RequestHeaderModifier(remove=["x-debug"]))
    fields = [(b"x-debug", b"%d" % i) for i in range(5000)] + [(b"host-ish", b"kept")]
    edit.apply(fields)
    assert fields == [(b"host-ish", b"kept")]


def test_the_factories_hand_the_stream_the_edit_itself() -> None:
    req = factory_for(RequestHeaderModifier(remove=["a"]))
    resp = factory_for(ResponseHeaderModifier(remove=["b"]))
    assert isinstance(req, HeadersFactory) and isinstance(resp, HeadersFactory)
    assert req.response_edit is None and resp.request_edit is None
    assert req.request_edit is not None and resp.response_edit is not None
    assert isinstance(req.request_edit.__self__, HeaderEdit)  # type: ignore[attr-defined]
    fields = [(b"a", b"1"), (b"b", b"2")]
    req.request_edit(fields)
    resp.response_edit(fields)
    assert fields == []


def test_the_edit_is_the_compiled_one_when_the_hot_path_is() -> None:
    compiled = native.mode()[0] == "compiled"
    assert inspect.isfunction(HeaderEdit.apply) is not compiled
