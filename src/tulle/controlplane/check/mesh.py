"""Findings about the mesh itself: resources not (wholly) in force, proxies out of step, and
workloads whose proxy has gone.

Pure functions of what the API already serves (resources with their status conditions, the
proxies' rows of `/api/v1/proxies`), so `tulle check` says nothing the operator could not
find with `get` and `describe` — it finds it for them, names the object, and says what to do.
Like `istioctl analyze`, it reads what the control plane decided; like `linkerd check`, it asks
the proxies' side (connected, ACKed the desired version).

    NotAccepted        error    a resource the compiler refused (Accepted=False)
    NotInForce         warning  accepted, but part of it is not in force (ResolvedRefs=False,
                                a rule dropped, a field stored and not enforced)
    ProxyNack          error    a proxy refused its desired snapshot and runs an older one
    ConfigError        error    the compiler could not build a proxy's snapshot
    ProxyNotInSync     warning  a connected proxy has not ACKed its desired snapshot yet
    FeatureWithheld    warning  a connected (older) proxy lacks a feature its config uses:
                                that part was withheld and is not in force there (ADR 0122)
    ProxyGone          warning  a Workload whose proxy disconnected: out of its Services'
                                endpoints until it returns
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tulle.api.conditions import problems
from tulle.controlplane.check.finding import Finding

_KIND_CLI = {"HTTPRoute": "httproute", "GRPCRoute": "grpcroute", "TCPRoute": "tcproute"}


def _ident(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    md = obj.get("metadata") or {}
    kind = str(obj.get("kind") or "?")
    ns = md.get("namespace")
    name = str(md.get("name") or "?")
    return kind, f"{kind} {ns}/{name}" if ns else f"{kind} {name}", \
        f"tulle describe {_KIND_CLI.get(kind, kind.lower())} {name}" + (f" -n {ns}" if ns else "")


def resource_findings(objects: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """One finding per problem condition: `Accepted=False` is an error (nothing of the object
    runs), any other problem a warning (it runs, but not all of it)."""
    out: list[Finding] = []
    for obj in objects:
        bad = problems(obj)
        if not bad:
            continue
        _kind, label, describe = _ident(obj)
        for f in bad:
            if f.type == "Accepted":
                out.append(Finding("error", "NotAccepted", label, f.line(),
                                   f"fix the spec and apply again; `{describe}` shows it"))
            else:
                out.append(Finding("warning", "NotInForce", label, f.line(),
                                   f"`{describe}` shows what is left out and why"))
    return out


def proxy_findings(rows: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Each proxy's last word against its desired snapshot.  A NACK counts only while the
    proxy has not ACKed the desired version since (an older NACK is history, not a finding)."""
    out: list[Finding] = []
    stragglers: list[str] = []
    withheld: dict[tuple[str, ...], list[str]] = {}
    for p in rows:
        key = f"{p.get('namespace')}/{p.get('name')}"
        label = f"proxy {key}"
        desired, acked = p.get("desiredVersion"), p.get("ackedVersion")
        if p.get("configError"):
            out.append(Finding("error", "ConfigError", label,
                               f"no snapshot could be built: {p['configError']}",
                               "the resources it names need fixing; `tulle get` them"))
            continue
        if not p.get("connected"):
            continue
        in_use = tuple(p.get("withheldInUse") or ())
        if in_use:
            withheld.setdefault(in_use, []).append(key)
        nack = p.get("lastNack") or None
        in_sync = desired is not None and acked == desired
        if nack and not in_sync:
            paths = ", ".join((nack.get("paths") or [])[:3])
            out.append(Finding(
                "error", "ProxyNack", label,
                f"refused snapshot {nack.get('version')}: {nack.get('reason')}"
                + (f" (at {paths})" if paths else "")
                + f"; it runs {acked or 'nothing yet'}",
                f"`tulle proxy-config {p.get('name')} -n {p.get('namespace')}` shows what it "
                f"runs; an older proxy may lack a feature (`tulle describe workload`)"))
        elif not in_sync:
            stragglers.append(f"{key} (acked {acked or '-'}, desired {desired or '-'})")
    for features, keys in sorted(withheld.items()):
        out.append(_withheld_finding(features, keys))
    if stragglers:
        shown = ", ".join(stragglers[:10]) + (f" and {len(stragglers) - 10} more"
                                             if len(stragglers) > 10 else "")
        out.append(Finding("warning", "ProxyNotInSync",
                           f"{len(stragglers)} prox{'y' if len(stragglers) == 1 else 'ies'}",
                           f"not running the desired snapshot yet: {shown}",
                           "a push in flight settles in a second; if it persists, check the "
                           "proxy's log and `tulle get proxies`"))
    return out


def _withheld_finding(features: tuple[str, ...], keys: list[str]) -> Finding:
    """Proxies of an older build whose config uses features they lack (ADR 0122): one
    finding per set of features, as for stragglers (an upgrade shows a few lines, not one per
    proxy)."""
    shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
    one = len(keys) == 1
    name, ns = keys[0].split("/", 1)[1], keys[0].split("/", 1)[0]
    return Finding(
        "warning", "FeatureWithheld",
        f"proxy {keys[0]}" if one else f"{len(keys)} proxies",
        f"{'its build lacks' if one else f'{shown}: their build lacks'} "
        f"{', '.join(features)}, which {'its' if one else 'their'} config uses: that part was "
        f"withheld and is not in force there",
        f"upgrade {'the proxy' if one else 'them'}; `tulle describe workload {name} -n {ns}` "
        f"lists what is withheld, by path")


STARTING_PREFIX = "starting: "
"""How `readiness.STARTING` and `readiness.first_config_rejected` begin (a test holds them
equal; not imported: the checks read documents, not the push side)."""


def workload_findings(workloads: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Workloads whose proxy was connected once and is gone now (never-connected workloads are
    registered by hand and may have no proxy yet: not a finding)."""
    out: list[Finding] = []
    for w in workloads:
        proxy = (w.get("status") or {}).get("proxy")
        if not isinstance(proxy, Mapping) or proxy.get("state") != "Disconnected":
            continue
        _kind, label, _ = _ident(w)
        md = w.get("metadata") or {}
        reason = str(proxy.get("reason") or "")
        if reason.startswith(STARTING_PREFIX):  # on its stream, not serving yet (ADR 0116)
            out.append(Finding(
                "warning", "ProxyNotServing", label,
                f"its proxy is connected but serves no config yet, since "
                f"{proxy.get('since') or '?'} ({reason.removeprefix(STARTING_PREFIX)}); it is "
                f"out of its Services' endpoints",
                "see LAST-NACK in `tulle get proxies` and the proxy's log"))
            continue
        out.append(Finding(
            "warning", "ProxyGone", label,
            f"its proxy disconnected at {proxy.get('since') or '?'} "
            f"({proxy.get('reason') or 'no reason'}); it is out of its Services' endpoints",
            f"restart its proxy, or `tulle delete workload {md.get('name')} -n "
            f"{md.get('namespace')}` if it is gone for good"))
    return out


__all__ = ["proxy_findings", "resource_findings", "workload_findings"]
