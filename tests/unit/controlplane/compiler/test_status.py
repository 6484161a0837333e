"""Route conditions are rendered from the model after every plugin: what each rule lost, and
why, whichever stage found it."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler import MeshInputs, compile_mesh

WORKLOAD = {"kind": "Workload", "metadata": {"name": "web-0", "namespace": "ns",
                                            "labels": {"app": "web"}},
            "spec": {"address": "127.0.0.1", "ports": [{"name": "http", "port": 18080}]}}
SVC = {"kind": "Service", "metadata": {"name": "web", "namespace": "ns"},
       "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}


def conditions(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    route = {"kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "ns"},
             "spec": {"parentRefs": [{"kind": "Service", "name": "web", "port": 80}],
                      "rules": rules}}
    res = compile_mesh(MeshInputs.from_resources([SVC, route]))
    return {c["type"]: c for c in res.conditions[("HTTPRoute", "ns", "r")]}


def test_a_rule_left_out_for_its_filter_still_reports_its_missing_backend() -> None:
    conds = conditions([{"filters": [{"type": "ExtensionRef", "extensionRef": {
                             "group": "example.com", "kind": "Lua", "name": "x"}}],
                         "backendRefs": [{"name": "gone", "port": 80}]}])
    assert conds["ResolvedRefs"]["status"] == "False"
    assert conds["ResolvedRefs"]["message"] == "backendRef ns/gone:80 does not exist"
    assert conds["PartiallyInvalid"]["message"] == (
        "left out (not supported yet): filter ExtensionRef")


def test_an_unreadable_timeout_is_an_invalid_setting_not_a_missing_backend() -> None:
    conds = conditions([{"timeouts": {"request": "soon"},
                         "backendRefs": [{"name": "web", "port": 80}]}])
    assert conds["ResolvedRefs"]["status"] == "True"
    assert conds["PartiallyInvalid"]["message"].startswith(
        "left out (invalid): rules[0].timeouts.request: invalid duration 'soon'")


def test_a_rule_without_a_usable_match_reports_its_refused_filter_settings_too() -> None:
    conds = conditions([{"matches": [{"path": {"type": "RegularExpression", "value": "/(a+)+"}}],
                         "filters": [{"type": "RequestHeaderModifier",
                                      "requestHeaderModifier": {"remove": ["host"]}}],
                         "backendRefs": [{"name": "web", "port": 80}]}])
    msg = conds["PartiallyInvalid"]["message"]
    assert ("left out (invalid): rules[0].matches[0].path.value: regular expression refused: "
            in msg)
    assert "; rules[0].filters[0].remove[0]: 'host'" in msg


def test_a_rule_whose_backends_all_weigh_zero_answers_500_and_the_mesh_still_compiles() -> None:
    route = {"kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "ns"},
             "spec": {"parentRefs": [{"kind": "Service", "name": "web", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 0}]}]}}
    res = compile_mesh(MeshInputs.from_resources([SVC, route, WORKLOAD]))
    (rule,) = res.snapshots[("ns", "web-0")].route_tables[0].virtual_hosts[0].rules
    assert [b.cluster for b in rule.backends] == ["blackhole|invalid-backend"]


def test_a_regex_whose_match_time_grows_with_the_square_of_the_subject_is_left_out_with_its_path(
        ) -> None:
    """ADR 0101: the control plane holds a route regex to the proxy's rule, so `apply` warns
    (the same conditions) instead of sending a snapshot the proxy would NACK."""
    conds = conditions([{"matches": [{"path": {"type": "RegularExpression",
                                               "value": "/.*a[^y]{0,65535}y"}}],
                         "backendRefs": [{"name": "web", "port": 80}]},
                        {"matches": [{"headers": [{"type": "RegularExpression", "name": "x-a",
                                                   "value": "a*a{0,65535}"}]}],
                         "backendRefs": [{"name": "web", "port": 80}]}])
    msg = conds["PartiallyInvalid"]["message"]
    assert msg.startswith("left out (invalid): rules[0].matches[0].path.value: regular "
                          "expression refused: a repetition that may backtrack"), msg
    assert "; rules[1].matches[0].headers[0].value: regular expression refused" in msg, msg
