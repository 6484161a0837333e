"""`AuthorizationPolicy` sources that select callers by workload labels, resolved to service
accounts (issue 9 item 5: `from` by workload labels).

Why at compile time: the proxy authorizes by the caller's verified SPIFFE ID, and a SPIFFE ID
names a service account, not labels.  The compiler knows every Workload's labels and service
account, so a `workloadLabels` source becomes the service accounts of the sidecar workloads
that have those labels.

A service account is not a workload: when one the labels select is also used by a sidecar
workload they do not select, the proxy cannot tell the two apart.  The resolution then fails
closed both ways — an ALLOW or AUDIT policy leaves that account out (the selected workload is
refused too), a DENY policy keeps it (the unselected one is refused too) — and the policy's
status says so, naming the account and the workloads (`WorkloadLabelsResolved=False`,
`SharedServiceAccount`).  A selector that matches no workload makes its source match nobody
(`NoWorkloadMatches`); a rule left with no source is dropped, as a rule whose every operation
is for another port is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tulle.controlplane.compiler.ir import Condition, Policy, Proxy


def _selects(proxy: Proxy, labels: Mapping[str, str]) -> bool:
    own = dict(proxy.metadata.labels)
    return all(own.get(k) == v for k, v in labels.items())


def _account(proxy: Proxy) -> str:
    return f"{proxy.namespace}/{proxy.service_account}"


def uses_labels(spec: Mapping[str, Any]) -> bool:
    return any(s.get("workloadLabels") for r in spec.get("rules") or []
               for s in r.get("from") or [])


def resolve(p: Policy, proxies: Sequence[Proxy]) -> tuple[Policy, list[Condition]]:
    """`p` with every `workloadLabels` source replaced by `serviceAccounts`, and the
    condition saying how the labels resolved; `p` itself when it uses no labels."""
    if not uses_labels(p.spec):
        return p, []
    meshed = [x for x in proxies if x.sidecar]
    deny = (p.spec.get("action") or "ALLOW") == "DENY"
    shared: dict[str, set[str]] = {}
    empty: list[str] = []
    rules: list[dict[str, Any]] = []
    for r in p.spec.get("rules") or []:
        sources = r.get("from")
        if sources is None:
            rules.append(dict(r))
            continue
        kept = []
        for s in sources:
            labels = s.get("workloadLabels")
            if not labels:
                kept.append(s)
                continue
            picked = {_account(x) for x in meshed if _selects(x, labels)}
            for x in meshed:
                if _account(x) in picked and not _selects(x, labels):
                    shared.setdefault(_account(x), set()).add(f"{x.namespace}/{x.name}")
            accounts = picked if deny else picked - shared.keys()
            if s.get("serviceAccounts") is not None:
                accounts &= set(s["serviceAccounts"])
            if not accounts:
                empty.append(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
                continue  # this source can match no caller
            out = {k: v for k, v in s.items() if k != "workloadLabels"}
            out["serviceAccounts"] = sorted(accounts)
            kept.append(out)
        if kept:
            rules.append({**r, "from": kept})
    resolved = Policy(p.kind, p.namespace, p.name, p.generation, p.target_kind, p.target_name,
                      p.target_found, {**p.spec, "rules": rules})
    return resolved, [_condition(p, shared, empty, deny)]


def _condition(p: Policy, shared: Mapping[str, set[str]], empty: Sequence[str],
               deny: bool) -> Condition:
    none = (f"no sidecar workload has the labels {'; '.join(empty)}: those sources match no "
            f"caller") if empty else ""
    if shared:
        which = "; ".join(f"{sa} (also {', '.join(sorted(w))})" for sa, w in sorted(shared.items()))
        effect = ("kept: the workloads that share it are denied too" if deny else
                  "left out: the selected workloads that use it are not allowed either")
        return Condition("WorkloadLabelsResolved", False, "SharedServiceAccount",
                         f"a caller is known by its service account, and these are shared with "
                         f"workloads the labels do not select: {which}; {effect}"
                         + (f"; {none}" if none else ""), p.generation)
    if empty:
        return Condition("WorkloadLabelsResolved", False, "NoWorkloadMatches", none,
                         p.generation)
    return Condition("WorkloadLabelsResolved", True, "Resolved",
                     "workload labels resolved to the service accounts of the workloads they "
                     "select", p.generation)
