"""The destination's fault injection in a trace, as live traffic showed it: an abort of every
matching request is the answer the client gets (418 here, flag FI), a share is said as a share,
a request without the fault's header goes on, and a delay of every request at least as long as the
caller's per-try timeout is the caller's 504."""

from __future__ import annotations

from typing import Any

from tests.support.explain import GW, compiled, fault, service, trace, workload

from tulle.cli.explain.render import render

ROUTE = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "api", "namespace": "shop"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                  "rules": [
                      {"name": "slow",
                       "matches": [{"path": {"type": "PathPrefix", "value": "/slow"}}],
                       "timeouts": {"request": "800ms", "backendRequest": "300ms"},
                       "backendRefs": [{"name": "api", "port": 80}]},
                      {"name": "default", "backendRefs": [{"name": "api", "port": 80}]}]}}


API = {"group": "", "kind": "Service", "name": "api"}
SLOW = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "api",
        "sectionName": "slow"}


def run(path: str, *policies: dict[str, Any], given: tuple[str, ...] = ()) -> dict[str, Any]:
    snaps = compiled(workload("web-0", 17000, app="web"), workload("api-0", 17100, app="api"),
                     service("api", app="api"), ROUTE, *policies)
    return trace(snaps, path, headers=given, state="acked")


ABORT = fault("abort", API, abort={"httpStatus": 418, "percent": 100},
              match={"headers": [{"name": "x-fault", "value": "yes"}]})


def test_an_abort_of_every_matching_request_is_what_the_client_gets() -> None:
    doc = run("/x", ABORT, given=("x-fault=yes",))
    ep = doc["hops"][0]["endpoints"][0]
    assert (ep["result"], ep["status"]) == ("aborted", 418)
    assert ep["fault"]["applies"] and ep["fault"]["policy"] == "shop/abort"
    assert doc["outcome"]["status"] == 418
    assert "answers 418 (flag FI) to 100% of the requests" in render(doc)


def test_without_the_faults_header_the_request_goes_on() -> None:
    doc = run("/x", ABORT, given=("x-fault=no",))
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["result"] == "forwarded" and not ep["fault"]["applies"]
    assert doc["outcome"]["status"] is None


def test_a_share_is_said_as_a_share_and_the_outcome_is_what_most_requests_get() -> None:
    doc = run("/x", fault("half", API, abort={"httpStatus": 503, "percent": 50}))
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["result"] == "forwarded"
    assert "answers 503 (flag FI) to 50% of the requests" in ep["fault"]["why"]


def test_a_delay_longer_than_the_callers_per_try_timeout_is_a_504() -> None:
    doc = run("/slow", fault("slow", SLOW, delay={"fixedDelay": "1200ms", "percent": 100}))
    ep = doc["hops"][0]["endpoints"][0]
    assert (ep["result"], ep["status"]) == ("timed_out", 504)
    assert "the caller's per-try timeout (300 ms)" in ep["why"]
    assert doc["outcome"]["status"] == 504
    # a shorter delay only slows the request down
    doc = run("/slow", fault("slow", SLOW, delay={"fixedDelay": "100ms", "percent": 100}))
    ep = doc["hops"][0]["endpoints"][0]
    assert ep["result"] == "forwarded" and "delays 100% by 100 ms" in ep["fault"]["why"]
    # the fault targets the rule: another rule's requests do not meet it
    doc = run("/other", fault("slow", SLOW, delay={"fixedDelay": "1200ms", "percent": 100}))
    assert "fault" not in doc["hops"][0]["endpoints"][0]
