"""The caller's retry policy in a trace, read through the proxy's own `RetryRuntime`: the rule's
policy is printed, and an answer every endpoint gives alike (a fault's abort, a delay past the
per-try timeout, a refused handshake) is said to stand after the retries when the policy
retries it -- and not when it does not (another status, a POST's status or timeout, the
caller's own request timeout); a listed gRPC status is retried for any method; endpoints that
answer differently leave the retry to another endpoint; per-try timeouts that outlast the
request timeout end with it."""

from __future__ import annotations

from typing import Any

from tests.support.explain import (
    GW,
    POLICY,
    Snapshots,
    compiled,
    expecting,
    fault,
    service,
    trace,
    workload,
)

from tulle.cli.explain.render import render

API = {"group": "", "kind": "Service", "name": "api"}
SLOW = {"group": GW.split("/")[0], "kind": "HTTPRoute", "name": "api", "sectionName": "slow"}
GRPC = ("content-type=application/grpc",)


def route(slow_timeouts: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": GW, "kind": "HTTPRoute",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                     "rules": [
                         {"name": "slow",
                          "matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                          "timeouts": slow_timeouts,
                          "backendRefs": [{"name": "api", "port": 80}]},
                         {"name": "default", "retry": {"codes": [503], "attempts": 3},
                          "backendRefs": [{"name": "api", "port": 80}]}]}}


ROUTE = route({"request": "2s", "backendRequest": "300ms"})


def retry_policy(target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": POLICY, "kind": "RetryPolicy",
            "metadata": {"name": f"retries-{target.get('sectionName', 'api')}",
                         "namespace": "shop"},
            "spec": {"targetRef": target, **spec}}


GATEWAY_ERRORS = retry_policy(SLOW, attempts=2, retryOn=["gateway-error"])


def mesh(*policies: dict[str, Any], routes: dict[str, Any] = ROUTE,
         pods: tuple[str, ...] = ("api-0",)) -> Snapshots:
    return compiled(workload("web-0", 17000, app="web"),
                    *(workload(p, 17100 + 10 * i, app="api") for i, p in enumerate(pods)),
                    service("api", app="api"), routes, *policies)


def run(path: str, *policies: dict[str, Any], method: str = "GET",
        headers: tuple[str, ...] = (), routes: dict[str, Any] = ROUTE) -> dict[str, Any]:
    return trace(mesh(GATEWAY_ERRORS, *policies, routes=routes), path, method=method,
                 headers=headers)


def retried(doc: dict[str, Any]) -> str | None:
    value: str | None = doc["hops"][0]["endpoints"][0].get("retried")
    return value


def test_the_rules_policy_is_printed_as_the_proxy_runs_it() -> None:
    doc = run("/x")
    rt = doc["outbound"]["retry"]
    assert rt["attempts"] == 3 and 503 in rt["statusCodes"] and rt["statusesRetriedForThisMethod"]
    assert "retries: up to 3 retries" in render(doc)
    assert run("/x", method="POST")["outbound"]["retry"]["statusesRetriedForThisMethod"] is False


def test_an_abort_the_policy_retries_stands_after_the_retries() -> None:
    doc = run("/x", fault("down", API, abort={"httpStatus": 503, "percent": 100}))
    assert "retries a 503" in (retried(doc) or "")
    assert "after 3 retries (flag URX)" in doc["outcome"]["summary"]
    # a status the policy does not list, or a POST's status, is not retried: nothing is said
    assert retried(run("/x", fault("teapot", API, abort={"httpStatus": 418, "percent": 100}))) \
        is None
    assert retried(run("/x", fault("down", API, abort={"httpStatus": 503, "percent": 100}),
                       method="POST")) is None


def test_a_listed_grpc_status_is_retried_for_any_method() -> None:
    """A gRPC call's abort is a trailers-only 200 with grpc-status 14: retried, although every
    gRPC call is a POST, when the policy lists UNAVAILABLE; not when it lists only 503."""
    grpc_policy = retry_policy(API, attempts=2, grpcStatuses=["Unavailable"])
    snaps = mesh(grpc_policy, fault("down", API, abort={"httpStatus": 503, "percent": 100}),
                 routes=route({"request": "2s"}) | {"spec": {
                     "parentRefs": [{"group": "", "kind": "Service", "name": "api",
                                     "port": 80}],
                     "rules": [{"name": "default", "backendRefs": [{"name": "api",
                                                                    "port": 80}]}]}})
    doc = trace(snaps, "/pkg.Svc/Call", method="POST", headers=GRPC)
    ep = doc["hops"][0]["endpoints"][0]
    assert (ep["status"], ep["grpcStatus"]) == (200, 14)
    assert "retries a grpc-14" in (retried(doc) or "")
    assert "gRPC statuses: 14" in render(doc)
    # the HTTP route's `codes: [503]` does not see the 200: not retried
    doc = run("/pkg.Svc/Call", fault("down", API, abort={"httpStatus": 503, "percent": 100}),
              method="POST", headers=GRPC)
    assert retried(doc) is None


def test_a_per_try_timeout_is_retried_for_a_get_and_not_for_a_post() -> None:
    slow = fault("slow", SLOW, delay={"fixedDelay": "1s", "percent": 100})
    doc = run("/slow", slow)
    ep = doc["hops"][0]["endpoints"][0]
    assert (ep["result"], ep["status"], ep["timeout"]) == ("timed_out", 504, "per-try")
    assert "fails with UT" in (retried(doc) or "") and "after 2 retries" in (retried(doc) or "")
    assert retried(run("/slow", slow, method="POST")) is None  # UT: the upstream may have acted


def test_the_request_timeout_ends_tries_that_do_not_fit_in_it() -> None:
    """Per-try 600 ms, request 1 s, 2 retries, a 2 s delay: the second try is cut by the
    request timeout, a plain 504 UT with no URX."""
    doc = run("/slow", fault("slow", SLOW, delay={"fixedDelay": "2s", "percent": 100}),
              routes=route({"request": "1s", "backendRequest": "600ms"}))
    assert "ends the request within 2 tries" in (retried(doc) or "")
    assert "URX" not in doc["outcome"]["summary"].replace("no URX", "")


def test_the_callers_own_request_timeout_is_not_retried() -> None:
    doc = run("/slow", fault("slow", SLOW, delay={"fixedDelay": "1s", "percent": 100}),
              routes=route({"request": "500ms"}))
    ep = doc["hops"][0]["endpoints"][0]
    assert (ep["result"], ep["timeout"]) == ("timed_out", "request")
    assert retried(doc) is None


def test_a_refused_handshake_is_a_connect_failure_retried_for_any_method() -> None:
    snaps = expecting(mesh(GATEWAY_ERRORS), "spiffe://cluster.local/ns/shop/sa/other")
    doc = trace(snaps, "/slow", method="POST")
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["result"] == "refused_by_client"
    assert "fails with UF" in (retried(doc) or "")


def test_endpoints_that_answer_differently_leave_the_retry_to_another() -> None:
    """api-1's proxy still runs the snapshot without the fault (a rollout): a retry of api-0's
    503 goes to api-1, so the trace does not say the 503 stands."""
    down = fault("down", API, abort={"httpStatus": 503, "percent": 100})
    snaps = mesh(GATEWAY_ERRORS, down, pods=("api-0", "api-1"))
    snaps[("shop", "api-1")] = mesh(GATEWAY_ERRORS, pods=("api-0", "api-1"))[("shop", "api-1")]
    doc = trace(snaps, "/x")
    eps = doc["hops"][0]["endpoints"]
    assert {ep["result"] for ep in eps} == {"aborted", "forwarded"}
    (aborted,) = [ep for ep in eps if ep["result"] == "aborted"]
    assert "a retry goes to another endpoint" in aborted["retried"]
    assert "URX" not in aborted["retried"]
