"""`tulle check`'s mesh findings: which conditions, proxies and workloads are findings, with
which severity and hint, and which are not (history, never-connected workloads)."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.check.finding import order
from tulle.controlplane.check.mesh import proxy_findings, resource_findings, workload_findings


def route(conditions: list[dict[str, str]]) -> dict[str, Any]:
    return {"kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "shop"},
            "status": {"parents": [{"parentRef": {"kind": "Service", "name": "api"},
                                    "conditions": conditions}]}}


def test_a_refused_resource_is_an_error_and_a_partial_one_a_warning() -> None:
    refused = route([{"type": "Accepted", "status": "False", "reason": "Invalid"}])
    partial = route([{"type": "Accepted", "status": "True", "reason": "Accepted"},
                     {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                      "message": "backendRef shop/x:80 does not exist"}])
    fine = route([{"type": "Accepted", "status": "True", "reason": "Accepted"}])
    found = resource_findings([refused, partial, fine])
    assert [(f.severity, f.code) for f in found] == [("error", "NotAccepted"),
                                                     ("warning", "NotInForce")]
    assert found[1].object == "HTTPRoute shop/r"
    assert "BackendNotFound" in found[1].message and "shop/x:80" in found[1].message
    assert found[1].hint.startswith("`tulle describe httproute r -n shop`")


def test_a_cluster_scoped_object_is_named_without_a_namespace() -> None:
    mesh = {"kind": "Mesh", "metadata": {"name": "default"},
            "status": {"conditions": [{"type": "DefaultsApplied", "status": "False",
                                       "reason": "NotEnforced"}]}}
    [f] = resource_findings([mesh])
    assert f.object == "Mesh default" and "tulle describe mesh default`" in f.hint


def row(name: str, **kw: Any) -> dict[str, Any]:
    return {"namespace": "shop", "name": name, "connected": True, **kw}


def test_proxies_a_current_nack_is_an_error_an_old_one_is_history() -> None:
    nack = {"version": "v2", "reason": "listeners[0].port: in use", "paths": ["listeners[0]"]}
    found = proxy_findings([
        row("a", desiredVersion="v2", ackedVersion="v1", lastNack=nack),
        row("b", desiredVersion="v3", ackedVersion="v3", lastNack=nack),  # ACKed since
        row("c", desiredVersion="v3", ackedVersion="v3"),
    ])
    assert [(f.severity, f.code, f.object) for f in found] == [
        ("error", "ProxyNack", "proxy shop/a")]
    assert "listeners[0].port: in use" in found[0].message and "runs v1" in found[0].message


def test_stragglers_are_named_in_one_finding() -> None:
    found = proxy_findings([row(f"p{i}", desiredVersion="v2", ackedVersion="v1")
                            for i in range(12)] + [row("ok", desiredVersion="v2",
                                                       ackedVersion="v2")])
    [f] = found
    assert (f.severity, f.code, f.object) == ("warning", "ProxyNotInSync", "12 proxies")
    assert "shop/p0 (acked v1, desired v2)" in f.message and "and 2 more" in f.message


def test_older_proxies_whose_config_uses_what_they_lack_are_one_finding_per_feature_set(
        ) -> None:
    """ADR 0122: a withheld feature is a finding only where the config uses it."""
    trust = ["authz-trust-domains"]
    found = proxy_findings([
        row("a", desiredVersion="v1", ackedVersion="v1", withheldInUse=trust),
        row("b", desiredVersion="v1", ackedVersion="v1", withheldInUse=trust),
        row("c", desiredVersion="v1", ackedVersion="v1", withheldInUse=["session-persistence"]),
        row("d", desiredVersion="v1", ackedVersion="v1", withheldInUse=[]),  # lacks, unused
        {"namespace": "shop", "name": "gone", "connected": False, "withheldInUse": trust},
    ])
    assert [(f.severity, f.code, f.object) for f in found] == [
        ("warning", "FeatureWithheld", "2 proxies"),
        ("warning", "FeatureWithheld", "proxy shop/c")]
    assert found[0].message.startswith("shop/a, shop/b: their build lacks authz-trust-domains")
    assert "not in force" in found[1].message
    assert found[1].hint.endswith("`tulle describe workload c -n shop` lists what is withheld, "
                                  "by path")


def test_a_disconnected_proxy_is_not_out_of_sync_and_a_config_error_is_an_error() -> None:
    found = proxy_findings([
        {"namespace": "shop", "name": "gone", "connected": False, "desiredVersion": "v2"},
        {"namespace": "shop", "name": "bad", "connected": False, "configError": "boom"},
    ])
    assert [(f.severity, f.code) for f in found] == [("error", "ConfigError")]


def test_only_workloads_whose_proxy_went_away_are_findings() -> None:
    def wl(name: str, proxy: Any) -> dict[str, Any]:
        return {"kind": "Workload", "metadata": {"name": name, "namespace": "shop"},
                "status": {"proxy": proxy} if proxy else {}}

    found = workload_findings([
        wl("gone", {"state": "Disconnected", "since": "2026-12-03T10:00:00Z",
                    "reason": "stream closed"}),
        wl("up", {"state": "Connected"}),
        wl("never", None),
    ])
    [f] = found
    assert (f.code, f.object) == ("ProxyGone", "Workload shop/gone")
    assert "2026-12-03T10:00:00Z" in f.message and "tulle delete workload gone -n shop" in f.hint


def test_a_proxy_that_does_not_serve_yet_is_not_called_gone() -> None:
    from tulle.cli.proxy_state import STARTING_PREFIX as CLI_PREFIX
    from tulle.controlplane.check.mesh import STARTING_PREFIX
    from tulle.controlplane.readiness import STARTING, first_config_rejected

    assert STARTING_PREFIX == CLI_PREFIX and STARTING.startswith(STARTING_PREFIX)

    [f] = workload_findings([{"kind": "Workload", "metadata": {"name": "new", "namespace": "shop"},
                              "status": {"proxy": {"state": "Disconnected",
                                                   "reason": first_config_rejected("v3")}}}])
    assert f.code == "ProxyNotServing" and "rejected its first config (version v3)" in f.message


def test_errors_come_first() -> None:
    found = order(proxy_findings([row("a", desiredVersion="v2", ackedVersion="v1")])
                  + resource_findings([route([{"type": "Accepted", "status": "False"}])]))
    assert [f.severity for f in found] == ["error", "warning"]
