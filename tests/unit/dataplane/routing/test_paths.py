"""Path normalisation: RFC 3986 examples, the traversal shapes of CVE-2019-9901, each setting,
and properties (idempotent, no dot segments left, never above the root) checked by hypothesis
against a literal transcription of RFC 3986 section 5.2.4."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tulle.dataplane.routing.paths import (
    PathNormalizer,
    PathRejected,
    normalizer_for,
    remove_dot_segments,
)
from tulle.proxyconfig.model import PathNormalization


def norm(target: bytes, **cfg: Any) -> bytes:
    n = PathNormalizer(PathNormalization(**cfg))
    out = n.normalize(target)
    if n.suspect(target) is None:  # the fast path must only skip targets that stay as they are
        assert out is target
    return out


def rejected(target: bytes, **cfg: Any) -> str:
    with pytest.raises(PathRejected) as info:
        PathNormalizer(PathNormalization(**cfg)).normalize(target)
    return info.value.detail


# RFC 3986 section 5.4: relative references against the base "http://a/b/c/d;p?q".  A request
# path is already absolute, so each relative reference appears here as the merged path the
# resolver hands to remove_dot_segments ("/b/c/" + reference, section 5.2.3), next to the path
# of the target URI the RFC gives.  Normal examples (5.4.1) then abnormal ones (5.4.2).
RFC_5_4 = [
    ("g", "/b/c/g"), ("./g", "/b/c/g"), ("g/", "/b/c/g/"), ("/g", "/g"), ("?y", "/b/c/d;p?y"),
    ("g?y", "/b/c/g?y"), (";x", "/b/c/;x"), ("g;x", "/b/c/g;x"), ("g;x?y", "/b/c/g;x?y"),
    (".", "/b/c/"), ("./", "/b/c/"), ("..", "/b/"), ("../", "/b/"), ("../g", "/b/g"),
    ("../..", "/"), ("../../", "/"), ("../../g", "/g"),
    ("../../../g", "/g"), ("../../../../g", "/g"), ("/./g", "/g"), ("/../g", "/g"),
    ("g.", "/b/c/g."), (".g", "/b/c/.g"), ("g..", "/b/c/g.."), ("..g", "/b/c/..g"),
    ("./../g", "/b/g"), ("./g/.", "/b/c/g/"), ("g/./h", "/b/c/g/h"), ("g/../h", "/b/c/h"),
    ("g;x=1/./y", "/b/c/g;x=1/y"), ("g;x=1/../y", "/b/c/y"),
    ("g?y/./x", "/b/c/g?y/./x"), ("g?y/../x", "/b/c/g?y/../x"),  # the query is untouched
]


def merged(ref: str) -> bytes:
    if ref.startswith("/"):
        return ref.encode()
    if ref.startswith("?"):
        return b"/b/c/d;p" + ref.encode()
    return b"/b/c/" + ref.encode()


@pytest.mark.parametrize(("ref", "expected"), RFC_5_4, ids=[r for r, _ in RFC_5_4])
def test_rfc3986_section_5_4_examples(ref: str, expected: str) -> None:
    assert norm(merged(ref)) == expected.encode()


def test_rfc3986_section_5_2_4_walkthrough() -> None:
    assert remove_dot_segments(b"/a/b/c/./../../g") == b"/a/g"
    assert norm(b"/a/b/c/./../../g") == b"/a/g"


ATTACKS = [
    # (raw target, normalised with the defaults)
    (b"/public/../admin", b"/admin"),
    (b"/public/./../admin", b"/admin"),
    (b"/public/%2e%2e/admin", b"/admin"),
    (b"/public/%2E%2e/admin", b"/admin"),
    (b"/public/.%2e/admin", b"/admin"),
    (b"/./admin", b"/admin"),
    (b"/%2e/admin", b"/admin"),
    (b"/public\\..\\admin", b"/admin"),
    (b"/public/..\\admin", b"/admin"),
    (b"/../../../admin", b"/admin"),
    (b"/public/..", b"/"),
    (b"//admin", b"//admin"),  # an empty segment, not a dot segment: not /public either
    # %2F is kept opaque by default: one segment named "..%2Fadmin" under /public (RFC 3986
    # 2.2: an encoded delimiter is data).  `escaped_slashes` rejects or decodes it instead.
    (b"/public/..%2fadmin", b"/public/..%2Fadmin"),
    (b"/public/%2E%2E%2Fadmin", b"/public/..%2Fadmin"),
    (b"/public/..%5cadmin", b"/public/..%5Cadmin"),
    # Path parameters are data, as in Envoy: a segment named "..;" (documented in http1.md).
    (b"/public/..;/admin", b"/public/..;/admin"),
]


@pytest.mark.parametrize(("raw", "expected"), ATTACKS, ids=[a.decode() for a, _ in ATTACKS])
def test_traversal_shapes_with_the_defaults(raw: bytes, expected: bytes) -> None:
    assert norm(raw) == expected


@pytest.mark.parametrize(("raw", "why"), [
    (b"/a%00b", "NUL"), (b"/%00", "NUL"),
    (b"/a%zz", "malformed"), (b"/a%", "malformed"), (b"/a%4", "malformed"), (b"/a%g1", "malformed"),
    (b"/a%%41", "malformed"),
    (b"/a#frag", "fragment"), (b"/a?q#frag", "fragment"),
])
def test_unsafe_paths_are_refused(raw: bytes, why: str) -> None:
    assert why in rejected(raw)


def test_unreserved_escapes_are_decoded_and_other_hex_uppercased() -> None:
    assert norm(b"/%41%7a%30%2D%2e%5F%7E") == b"/Az0-._~"
    assert norm(b"/a%2a%3fb%20c%c3%a9") == b"/a%2A%3Fb%20c%C3%A9"
    assert norm(b"/%252e%252e/admin") == b"/%252e%252e/admin"  # decoded once, never twice


def test_the_query_is_never_touched() -> None:
    assert norm(b"/a/../b?x=/../%2e%zz&y=%2f\\") == b"/b?x=/../%2e%zz&y=%2f\\"
    clean = b"/api/items?next=%2e%2e"
    assert norm(clean) is clean  # the path needed nothing: the same object comes back


def test_common_paths_take_the_fast_path() -> None:
    n = PathNormalizer(PathNormalization())
    for p in (b"/", b"/api/v1/items", b"/api/v1/items?page=2", b"/static/app.js", b"*"):
        assert n.suspect(p) is None
    for p in (b"/a/../b", b"/%41", b"/a\\b", b"/a#b", b"/.well-known/x"):
        assert n.suspect(p) is not None


def test_merge_slashes() -> None:
    assert norm(b"//admin", merge_slashes=True) == b"/admin"
    assert norm(b"/a///b//c/", merge_slashes=True) == b"/a/b/c/"
    assert norm(b"/a//../b", merge_slashes=True) == b"/a/b"  # segments first, then merging
    assert norm(b"/a//b") == b"/a//b"  # off by default
    assert norm(b"/a?x=//", merge_slashes=True) == b"/a?x=//"


def test_escaped_slashes_reject() -> None:
    assert "encoded slash (%2F)" in rejected(b"/public/..%2fadmin", escaped_slashes="reject")
    assert "encoded backslash (%5C)" in rejected(b"/a%5cb", escaped_slashes="reject")
    assert norm(b"/a?x=%2f", escaped_slashes="reject") == b"/a?x=%2f"


def test_escaped_slashes_decode() -> None:
    assert norm(b"/public/..%2fadmin", escaped_slashes="decode") == b"/admin"
    assert norm(b"/public/%2E%2E%2Fadmin", escaped_slashes="decode") == b"/admin"
    assert norm(b"/public/..%5Cadmin", escaped_slashes="decode") == b"/admin"  # then backslash
    assert norm(b"/a%2f%2fb", escaped_slashes="decode", merge_slashes=True) == b"/a/b"


def test_backslash_settings() -> None:
    assert norm(b"/public\\..\\admin", backslash="slash") == b"/admin"
    assert "backslash" in rejected(b"/public\\..\\admin", backslash="reject")
    assert norm(b"/public\\..\\admin", backslash="keep") == b"/public\\..\\admin"
    assert norm(b"/a\\b", backslash="keep") == b"/a\\b"


def test_non_path_targets_pass_unchanged() -> None:
    assert norm(b"*") == b"*"


def test_normalisation_off_means_no_normaliser() -> None:
    assert normalizer_for(PathNormalization(normalize=False)) is None
    a = normalizer_for(PathNormalization())
    assert a is not None and a is normalizer_for(PathNormalization())  # built once per config


# -- properties ---------------------------------------------------------------------------

def rfc_remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, transcribed step by step (the reference for the fast version)."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            out = out[:out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[:out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end == -1 else end
            out += inp[:end]
            inp = inp[end:]
    return out


segment_text = st.text(alphabet="ab.%2eEfF5cC0z\\~", max_size=6)
paths = st.lists(segment_text, max_size=8).map(lambda segs: ("/" + "/".join(segs)).encode())
configs = st.builds(PathNormalization, merge_slashes=st.booleans(),
                    escaped_slashes=st.sampled_from(["keep", "reject", "decode"]),
                    backslash=st.sampled_from(["slash", "reject", "keep"]))
queries = st.sampled_from([b"", b"?", b"?a=/../%2e&b=%zz", b"?x=\\..\\"])


@given(st.lists(st.text(alphabet="ab./", max_size=5), max_size=8))
def test_remove_dot_segments_matches_the_rfc_algorithm(segs: list[str]) -> None:
    path = "/" + "/".join(segs)
    assert remove_dot_segments(path.encode()) == rfc_remove_dot_segments(path).encode()


def _dot_segments(path: bytes) -> list[bytes]:
    return [s for s in path.split(b"/") if s in (b".", b"..")]


@given(paths, queries, configs)
def test_normalisation_is_idempotent_and_never_climbs_above_the_root(
        path: bytes, query: bytes, cfg: PathNormalization) -> None:
    n = PathNormalizer(cfg)
    try:
        once = n.normalize(path + query)
    except PathRejected:
        return
    assert n.normalize(once) == once
    assert once.endswith(query)
    out = once[:len(once) - len(query)]
    assert out.startswith(b"/")  # never above the root
    assert _dot_segments(out) == []
    if cfg.backslash == "slash":
        assert b"\\" not in out
    if cfg.merge_slashes:
        assert b"//" not in out
    for esc in re.findall(rb"%(..)", out):  # escapes left are upper-case, never unreserved
        assert esc == esc.upper() and int(esc, 16) > 0
        assert chr(int(esc, 16)) not in (
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    if n.suspect(path + query) is None:
        assert once == path + query
