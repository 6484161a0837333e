"""RequestRedirect and URLRewrite configs: good ones taken, bad values refused with paths."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tulle.proxyconfig import validate
from tulle.proxyconfig.validate import ConfigError

BASE: dict[str, Any] = {
    "listeners": [{"name": "l", "port": 1, "route_table": "rt"}],
    "clusters": [{"name": "c"}],
    "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": "v", "rules": [{"backends": [{"cluster": "c"}]}]}]}],
}
P = "route_tables[0].virtual_hosts[0].rules[0]"


def errors(filters: list[Any], matches: list[Any] | None = None) -> list[str]:
    doc = copy.deepcopy(BASE)
    rule = doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]
    rule["filters"] = filters
    if matches is not None:
        rule["matches"] = matches
    try:
        validate(doc)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_good_redirect_and_rewrite_are_taken() -> None:
    assert errors([
        {"type": "RequestRedirect", "scheme": "https", "hostname": "example.com", "port": 8443,
         "path": {"type": "ReplacePrefixMatch", "value": "/v2"}, "status_code": 308},
        {"type": "URLRewrite", "hostname": "backend.local",
         "path": {"type": "ReplaceFullPath", "value": "/x/%20y"}}],
        [{"path": {"type": "PathPrefix", "value": "/v1"}}]) == []


@pytest.mark.parametrize(("entry", "error"), [
    ({"status_code": 304}, "[0].status_code: "),
    ({"scheme": "ftp"}, "[0].scheme: "),
    ({"port": 0}, "[0].port: "),
    ({"hostname": "Example.com"}, "[0].hostname: "),
    ({"hostname": "a.com:80"}, "[0].hostname: "),
    ({"path": {"type": "ReplaceFullPath", "value": "x"}}, "[0].path.value: "),
    ({"path": {"type": "ReplaceFullPath", "value": "/a\r\nx: y"}}, "[0].path.value: "),
    ({"path": {"type": "ReplaceFullPath", "value": "/a?b"}}, "[0].path.value: "),
    ({"path": {"type": "Other", "value": "/"}}, "[0].path.type: "),
])
def test_bad_redirect_values_are_refused_with_their_path(entry: dict[str, Any],
                                                         error: str) -> None:
    got = errors([{"type": "RequestRedirect", **entry}])
    assert len(got) == 1 and got[0].startswith(f"{P}.filters{error}"), got


def test_replace_prefix_match_needs_prefix_matches_only() -> None:
    matches = [{"path": {"type": "PathPrefix", "value": "/a"}},
               {"path": {"type": "Exact", "value": "/b"}}]
    for kind in ("RequestRedirect", "URLRewrite"):
        assert errors([{"type": kind, "path": {"type": "ReplacePrefixMatch", "value": "/"}}],
                      matches) == [
            f"{P}.filters[0].path.type: ReplacePrefixMatch needs every match of the rule to be "
            "a PathPrefix match"]
        assert errors([{"type": kind, "path": {"type": "ReplaceFullPath", "value": "/"}}],
                      matches) == []


def test_a_rewrite_that_changes_nothing_is_refused() -> None:
    assert errors([{"type": "URLRewrite"}]) == [f"{P}.filters[0]: sets neither hostname nor path"]
