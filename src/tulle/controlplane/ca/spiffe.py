"""SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

One parser and one formatter, so the CA, admission and (later) authorization agree on what an
ID says.  Only the workload form is accepted: an ID with any other path is not a workload.

Every ID accepted here is also a SPIFFE ID by the rule the data plane reads peers with
(`tulle.proxyconfig.spiffe_id.is_svid_id`, ADR 0097): `parse` applies that rule first, and a
workload ID is a narrower shape of it (DNS-like trust domain, lowercase names), so the CA never
signs an ID a proxy would take as no identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tulle.proxyconfig.spiffe_id import is_svid_id

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_SEGMENT = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
"""Both used with `fullmatch`: `match` with `$` also took a name ending in a newline."""
DEFAULT_TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _DOMAIN.fullmatch(self.trust_domain) or len(self.trust_domain) > 255:
            raise ValueError(f"trust domain {self.trust_domain!r} is not a DNS-like name")
        for what, v in (("namespace", self.namespace),
                        ("service account", self.service_account)):
            if not _SEGMENT.fullmatch(v) or len(v) > 253:
                raise ValueError(f"{what} {v!r} is not a valid name")
        if not is_svid_id(self.uri):  # the checks above are narrower; the shared rule holds
            raise ValueError(f"{self.uri[:80]!r} is not a SPIFFE ID")

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """The workload ID in `uri`, or ValueError saying what is wrong with it."""
        if not uri.startswith("spiffe://"):
            raise ValueError(f"{uri[:80]!r} is not a spiffe:// URI")
        if not is_svid_id(uri):
            raise ValueError(f"{uri[:80]!r} is not a SPIFFE ID (lowercase trust domain; path "
                             "segments of letters, digits, '.', '-', '_', none empty, '.' or "
                             "'..'; no port, userinfo, percent-encoding, query or fragment)")
        domain, _, path = uri[len("spiffe://"):].partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise ValueError(f"{uri[:80]!r} is not a workload ID (spiffe://TD/ns/NS/sa/SA)")
        return cls(domain, parts[1], parts[3])
