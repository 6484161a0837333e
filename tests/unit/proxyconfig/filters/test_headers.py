"""Header modifier configs: every bad value refused with its path (config and hostile input)."""

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
P = "route_tables[0].virtual_hosts[0].rules[0].filters"


def errors(filters: list[Any]) -> list[str]:
    doc = copy.deepcopy(BASE)
    doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]["filters"] = filters
    try:
        validate(doc)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_a_good_pair_is_taken() -> None:
    assert errors([
        {"type": "RequestHeaderModifier", "set": [{"name": "X-A", "value": "1"},
                                                  {"name": "x-empty", "value": ""},
                                                  {"name": "x-tab", "value": "a\tb é"}],
         "add": [{"name": "x-b", "value": "two words"}], "remove": ["x-c"]},
        {"type": "ResponseHeaderModifier", "remove": ["server"]}]) == []


def test_unknown_and_missing_type_name_the_entry() -> None:
    kinds = ("'RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestRedirect', 'URLRewrite', "
             "'RequestMirror', 'Authorization', 'FaultInjection', 'RateLimit', "
             "'SessionPersistence'")
    assert errors([{"set": []}, {"type": "Teleport"}]) == [
        f"{P}[0].type: required field is missing (one of {kinds})",
        f"{P}[1].type: must be one of {kinds}, got 'Teleport'"]


@pytest.mark.parametrize("name", ["bad name", "x:y", ":path", "", "é"])
def test_names_must_be_tokens(name: str) -> None:
    got = errors([{"type": "RequestHeaderModifier", "set": [{"name": name, "value": "v"}]}])
    assert got and all(e.startswith(f"{P}[0].set[0].name: must ") for e in got)


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\x00b", " a", "a\t",
                                   "a\x01b", "a\x7f", "\r\n"])
def test_values_cannot_inject_lines(value: str) -> None:
    got = errors([{"type": "ResponseHeaderModifier", "add": [{"name": "x", "value": value}]}])
    assert len(got) == 1 and got[0].startswith(f"{P}[0].add[0].value: must match")


@pytest.mark.parametrize("name", ["Host", "content-length", "Transfer-Encoding", "connection",
                                  "te", "upgrade", "keep-alive", "proxy-connection"])
def test_framing_and_routing_fields_are_refused_in_every_list(name: str) -> None:
    got = errors([{"type": "RequestHeaderModifier", "remove": [name]},
                  {"type": "ResponseHeaderModifier", "set": [{"name": name, "value": "1"}]}])
    assert got == [f"{P}[0].remove[0]: {name!r} is framed or routed by the proxy and may not "
                   "be modified",
                   f"{P}[1].set[0].name: {name!r} is framed or routed by the proxy and may not "
                   "be modified"]


def test_at_most_16_entries_per_list() -> None:
    many = [{"name": f"x-{i}", "value": "v"} for i in range(17)]
    assert errors([{"type": "RequestHeaderModifier", "add": many}]) == [
        f"{P}[0].add: must have at most 16 items"]
    assert errors([{"type": "RequestHeaderModifier", "add": many[:16]}]) == []


def test_a_name_twice_is_refused_case_insensitively() -> None:
    assert errors([{"type": "RequestHeaderModifier", "set": [{"name": "X-A", "value": "1"}],
                    "remove": ["x-a"]}]) == [f"{P}[0].remove[0]: 'x-a' already appears at "
                                             f"{P}[0].set[0].name"]


def test_unknown_fields_inside_an_entry_are_errors() -> None:
    assert errors([{"type": "ResponseHeaderModifier", "append": []}]) == [
        f"{P}[0].append: unknown field"]
