"""What `tulle check` says about certificates: findings with a severity, never a guess.

Why here: the control plane signs every certificate, so it knows each root's and each proxy's
expiry (`ProxyStatus.cert_*`, recorded when it signs or admits), and whether a rotation is
half done.  linkerd/linkerd2#4808 is a mesh that learnt its trust anchor expired from the
outage; these are the warnings that come first.  Pure functions of the state and a clock, so
every threshold is a unit test.

    RootExpired / RootExpiresSoon    a trusted root or the signing CA (error / warning within
                                     `root_warn`, default 30 days); the hint is `tulle ca rotate`
                                     for the store's CA, new files for the operator's
    CertExpired / CertPastRenewal    a connected proxy's certificate expired (error) / past 2/3
                                     of its lifetime (warning: renewal at 1/2 has not happened)
    RotationInProgress               a CA rotation is between stages (warning), naming the
                                     proxies that hold it up
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from tulle.controlplane.ca.rotation import IDLE, CAState, Progress, fingerprint, subject
from tulle.controlplane.check.finding import SEVERITIES, Finding, order

DEFAULT_ROOT_WARN = dt.timedelta(days=30)
CERT_WARN_SHARE = 2 / 3
"""A certificate past this share of its lifetime should have been renewed (at 1/2 ± 10 %)."""


@dataclass(frozen=True, slots=True)
class ProxyCert:
    name: str
    not_before: int
    not_after: int
    connected: bool = True
    """False: a proxy off its stream, which cannot renew; only its expiry is a finding."""


def _span(d: dt.timedelta) -> str:
    """A time left as it is read: days, hours, or minutes and seconds (a CA 94 s from its
    end once read "0.0 days")."""
    s = d.total_seconds()
    if s >= 86400:
        return f"{s / 86400:.1f} days"
    if s >= 3600:
        return f"{s / 3600:.1f} hours"
    return f"{int(s // 60)} min {int(s % 60)} s"


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


ROTATE_HINT = "`tulle ca rotate` (staged: no proxy loses its trust on the way)"
"""How a CA the control plane keeps in its store is replaced."""
REPLACE_FILES_HINT = ("replace the --ca-cert / --ca-key files with a new intermediate under the "
                      "same root and restart the control plane: proxies keep their trust and "
                      "renew at half-life (a new root instead needs a new bootstrap token for "
                      "every proxy; `tulle ca rotate` does not rotate an operator's CA)")
"""How the operator's file CA is replaced: `tulle ca rotate` refuses it ("replace the files")."""
CERT_EXPIRED_HINT = ("issue the workload a new bootstrap token (`tulle token issue`) and "
                     "restart its proxy with it")
CERT_PAST_RENEWAL_HINT = ("the proxy's log and the control plane's (`renewal refused`): a proxy "
                          "renews over its stream at half its certificate's lifetime")


def _ca_cert(cert: x509.Certificate, what: str, now: dt.datetime,
             warn: dt.timedelta, hint: str) -> list[Finding]:
    end = cert.not_valid_after_utc
    obj = f"{what} {subject(cert)} ({fingerprint(cert)[:16]})"
    if end <= now:
        return [Finding("error", "RootExpired", obj, f"expired at {_when(end)}: no proxy can "
                        f"verify a certificate it signed; replace it now", hint)]
    if end - now <= warn:
        return [Finding("warning", "RootExpiresSoon", obj,
                        f"expires at {_when(end)} (in {_span(end - now)}); replace it before",
                        hint)]
    return []


def ca_findings(state: CAState, now: dt.datetime,
                root_warn: dt.timedelta = DEFAULT_ROOT_WARN, *,
                from_files: bool = False) -> list[Finding]:
    """`from_files`: the CA is the operator's (`--ca-cert/--ca-key`), which is replaced by
    replacing the files, not by `tulle ca rotate`: the hint says which."""
    hint = REPLACE_FILES_HINT if from_files else ROTATE_HINT
    out: list[Finding] = []
    seen: set[str] = set()
    for root in state.roots:
        seen.add(fingerprint(root))
        out += _ca_cert(root, "root", now, root_warn, hint)
    if fingerprint(state.signing.cert) not in seen:
        out += _ca_cert(state.signing.cert, "signing CA", now, root_warn, hint)
    return out


def proxy_findings(certs: Iterable[ProxyCert], now: dt.datetime) -> list[Finding]:
    out: list[Finding] = []
    t = now.timestamp()
    for c in certs:
        if not c.not_after:
            continue
        end = dt.datetime.fromtimestamp(c.not_after, dt.UTC)
        if c.not_after <= t:
            off = "" if c.connected else " while it was off its stream (it cannot renew it)"
            out.append(Finding("error", "CertExpired", f"proxy {c.name}",
                               f"its workload certificate expired at {_when(end)}{off}: peers "
                               f"refuse it", CERT_EXPIRED_HINT))
            continue
        if not c.connected:
            continue
        life = max(1, c.not_after - c.not_before)
        if t - c.not_before >= CERT_WARN_SHARE * life:
            out.append(Finding("warning", "CertPastRenewal", f"proxy {c.name}",
                               f"its workload certificate is past 2/3 of its lifetime "
                               f"(expires {_when(end)}) and was not renewed",
                               CERT_PAST_RENEWAL_HINT))
    return out


def rotation_findings(state: CAState, done: Progress, now: dt.datetime) -> list[Finding]:
    if state.stage == IDLE:
        return []
    since = _when(dt.datetime.fromtimestamp(state.started_at, dt.UTC))
    waiting = (f"; waiting for {len(done.pending)} prox{'y' if len(done.pending) == 1 else 'ies'}"
               f": {', '.join(list(done.pending)[:5])}" if done.pending
               else "; every connected proxy has moved: run `tulle ca rotate` to go on")
    return [Finding("warning", "RotationInProgress", "mesh CA",
                    f"a CA rotation started at {since} is at stage {state.stage}{waiting}")]


__all__ = ["CERT_WARN_SHARE", "DEFAULT_ROOT_WARN", "SEVERITIES", "Finding", "ProxyCert",
           "ca_findings", "order", "proxy_findings", "rotation_findings"]
