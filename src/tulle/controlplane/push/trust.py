"""What the stream tells proxies about the mesh CA during a rotation (ADR 0035).

Why its own module: `server.py` moves snapshots; this holds the few rules of the CA side of
the stream, so the session only calls them.  A proxy that announced `ca-rotation` is sent a
`TrustUpdate` (the bundle in force, and `renew` while it serves a certificate from a CA that no
longer signs) after its hello and whenever the stage changes; its `TrustAck` and every
certificate signed for it are recorded in its status, which is what `rotation.progress` and
`tulle check` read.
"""

from __future__ import annotations

from collections.abc import Iterable

from tulle.controlplane.ca.admission import Admitted
from tulle.controlplane.ca.rotation import FEATURE, IDLE, CAState, ProxyView
from tulle.controlplane.push.cache import ProxyStatus
from tulle.controlplane.push.reported import shown
from tulle.proxyconfig.stream import Certificate, Hello, TrustUpdate


def takes_updates(features: Iterable[str]) -> bool:
    return FEATURE in features


def record_admitted(statuses: Iterable[ProxyStatus], who: Admitted) -> None:
    """Each fronted workload's status gets its own certificate's issuer and validity (a node
    holds one certificate per workload, ADR 0032)."""
    by_key = {(a.namespace, a.workload): a for a in who.all()}
    for st in statuses:
        a = by_key.get((st.namespace, st.name), who)
        st.cert_issuer = a.cert_issuer
        st.cert_not_before, st.cert_not_after = a.cert_not_before, a.cert_not_after


def record_signed(statuses: Iterable[ProxyStatus], cert: Certificate, state: CAState) -> None:
    """A renewal: the certificate is the signing CA's and carries the bundle in force."""
    for st in statuses:
        st.cert_issuer, st.trust_bundle = state.signing_id(), state.bundle_id()
        st.cert_not_before, st.cert_not_after = cert.not_before, cert.not_after


def after_hello(state: CAState, statuses: list[ProxyStatus], who: Admitted | None,
                hello: Hello) -> TrustUpdate | None:
    """Record what the admitted proxy holds; the update it needs, if any.  A certificate
    issued now carries the bundle in force; one presented comes with the id of the bundle the
    proxy kept (it may predate a stage taken while it was away)."""
    if who is None:
        return None
    record_admitted(statuses, who)
    held = state.bundle_id() if who.issued is not None else shown(hello.trust_bundle)
    for st in statuses:
        st.trust_updates, st.trust_bundle = takes_updates(hello.features), held
    update = update_for(state, *statuses)
    if not statuses[0].trust_updates or (held == update.id and not update.renew):
        return None
    return update


def update_for(state: CAState, *statuses: ProxyStatus) -> TrustUpdate:
    """The update for one proxy (the statuses of the workloads it fronts): the bundle, and
    whether it must renew now (any of its certificates is from a CA that no longer signs)."""
    renew = state.stage != IDLE and state.next is None and any(
        st.cert_issuer != state.signing_id() for st in statuses)
    return TrustUpdate(id=state.bundle_id(), trust_bundle=state.bundle(), renew=renew)


def view(st: ProxyStatus) -> ProxyView:
    return ProxyView(f"{st.namespace}/{st.name}", st.trust_updates, st.trust_bundle,
                     st.cert_issuer)
