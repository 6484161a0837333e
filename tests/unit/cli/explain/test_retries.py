"""The caller's retry policy in a trace, read through the proxy's own `RetryRuntime`: the rule's
policy is printed, and an answer every endpoint gives alike (a fault's abort, a delay past the
per-try timeout) is said to stand after the retries when the policy retries it -- and not when
it does not (another status, a POST)."""

from __future__ import annotations

from typing import Any

from tests.support.explain import GW, POLICY, compiled, fault, service, trace, workload

from tulle.cli.explain.render import render

API = {"group": "", "kind": "Service", "name": "api"}
ROUTE = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                  "rules": [
                      {"name": "slow",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                       "timeouts": {"request": "2s", "backendRequest": "300ms"},
                       "backendRefs": [{"name": "api", "port": 80}]},
                      {"name": "default", "retry": {"codes": [503], "attempts": 3},
                       "backendRefs": [{"name": "api", "port": 80}]}]}}
GATEWAY_ERRORS = {"apiVersion": POLICY, "kind": "RetryPolicy",
                  "metadata": {"name": "gateway-errors", "namespace": "shop"},
                  "spec": {"targetRef": {"group": GW.split("/")[0], "kind": "HTTPRoute",
                                         "name": "api", "sectionName": "slow"},
                           "attempts": 2, "retryOn": ["gateway-error"]}}


def run(path: str, *policies: dict[str, Any], method: str = "GET") -> dict[str, Any]:
    snaps = compiled(workload("web-0", 17000, app="web"), workload("api-0", 17100, app="api"),
                     service("api", app="api"), ROUTE, GATEWAY_ERRORS, *policies)
    return trace(snaps, path, method=method)


def test_the_rules_policy_is_printed_as_the_proxy_runs_it() -> None:
    doc = run("/x")
    rt = doc["outbound"]["retry"]
    assert rt["attempts"] == 3 and 503 in rt["statusCodes"] and rt["statusesRetriedForThisMethod"]
    assert "retries: up to 3 retries" in render(doc)
    assert run("/x", method="POST")["outbound"]["retry"]["statusesRetriedForThisMethod"] is False


def test_an_abort_the_policy_retries_stands_after_the_retries() -> None:
    doc = run("/x", fault("down", API, abort={"httpStatus": 503, "percent": 100}))
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["result"] == "aborted" and "retries a 503" in ep["retried"]
    assert "after 3 retries (flag URX)" in doc["outcome"]["summary"]
    # a status the policy does not list, or a POST, is not retried: nothing is said
    doc = run("/x", fault("teapot", API, abort={"httpStatus": 418, "percent": 100}))
    assert "retried" not in doc["hops"][0]["endpoints"][0]
    doc = run("/x", fault("down", API, abort={"httpStatus": 503, "percent": 100}),
              method="POST")
    assert "retried" not in doc["hops"][0]["endpoints"][0]


def test_a_try_past_its_per_try_timeout_is_retried_by_a_gateway_error_policy() -> None:
    slow = fault("slow", {"group": GW.split("/")[0], "kind": "HTTPRoute", "name": "api",
                          "sectionName": "slow"}, delay={"fixedDelay": "1s", "percent": 100})
    doc = run("/slow", slow)
    ep = doc["hops"][0]["endpoints"][0]
    assert (ep["result"], ep["status"]) == ("timed_out", 504)
    assert "fails with UT" in ep["retried"] and "after 2 retries" in ep["retried"]
