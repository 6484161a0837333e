"""What the `dns` section's types cannot say: addresses, upstreams, unique hosts, a free port;
and the names a host answers to.

Kept apart from `validate.py` (which calls `errors`) so the resolver's rules sit in one place;
`upstream_address` is also what the proxy uses to read `DNS.upstreams`, `names_of` and
`empty_names` what its name table and `tulle proxy-config` derive names with.
"""

from __future__ import annotations

from tulle.errors import FieldError
from tulle.proxyconfig.address import additional_address_errors, hostport, overlaps, packed
from tulle.proxyconfig.model import DNS, ProxyConfig

DNS_PORT = 53


def upstream_address(text: str) -> tuple[str, int]:
    """`ip`, `ip:port` or `[v6]:port` as (ip, port); raises ValueError with the reason."""
    host, port = text, DNS_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':port' after ']'")
            port = _port(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p)
    import ipaddress  # not at module level: only a `dns` section needs it (ADR 0068)

    ipaddress.ip_address(host)  # ValueError names the problem
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port must be 1..65535, got {text!r}")
    return int(text)


def names_of(service: str, namespace: str, domain: str, mesh_domain: str,
             local_namespace: str) -> list[str]:
    """Every name a `DNSHost` answers to, for a pod in `local_namespace` (the contract's rule,
    shared by the proxy's table and `tulle proxy-config`)."""
    out = [f"{service}.{namespace}.svc.{domain}", f"{service}.{namespace}.{mesh_domain}",
           f"{service}.{namespace}"]
    if namespace == local_namespace:
        out.append(service)
    return out


def empty_non_terminals(names: list[bytes], zones: tuple[bytes, ...]) -> set[bytes]:
    """The parents of `names` that are one of `zones` (apexes) or under one, `names`
    themselves excluded.  Per name, a walk up its labels: O(labels) each, at build time."""
    suffixes = tuple(b"." + z for z in zones)
    out: set[bytes] = set()
    for n in names:
        dot = n.find(b".")
        while dot >= 0:
            parent = n[dot + 1:]
            if parent in zones or parent.endswith(suffixes):
                out.add(parent)
            dot = n.find(b".", dot + 1)
    out.difference_update(names)
    return out


def empty_names(names: list[bytes], domain: str, mesh_domain: str) -> set[bytes]:
    """The names that exist with no records (NODATA for every type, RFC 8020) for a table
    holding `names`: the mesh domain's apex, and the empty non-terminals of the zones the
    resolver speaks for (the mesh domain, `svc.<domain>`; `dataplane/dns/table.py` says why).
    One rule for the proxy's table and `tulle proxy-config WORKLOAD dns`."""
    mesh = mesh_domain.encode()
    out = empty_non_terminals(names, (mesh, f"svc.{domain}".encode()))
    if mesh not in names:
        out.add(mesh)  # the apex of a zone exists, Services or none
    return out


def errors(cfg: ProxyConfig) -> list[FieldError]:
    d: DNS | None = cfg.dns
    if d is None:
        return []
    out: list[FieldError] = []
    import ipaddress

    try:
        ipaddress.ip_address(d.address)
    except ValueError:
        out.append(FieldError("dns.address", f"must be an IP address, got {d.address!r}"))
    out += additional_address_errors(d.address, d.additional_addresses, "dns")
    for i, u in enumerate(d.upstreams):
        try:
            upstream_address(u)
        except ValueError as exc:
            out.append(FieldError(f"dns.upstreams[{i}]", f"not an ip[:port] ({exc})"))
    seen: set[tuple[str, str]] = set()
    for i, h in enumerate(d.hosts):
        if (h.service, h.namespace) in seen:
            out.append(FieldError(f"dns.hosts[{i}]",
                                  f"duplicate host {h.service}.{h.namespace}"))
        seen.add((h.service, h.namespace))
        for j, a in enumerate(h.addresses):
            try:
                ipaddress.ip_address(a)
            except ValueError:
                out.append(FieldError(f"dns.hosts[{i}].addresses[{j}]",
                                      f"must be an IP address, got {a!r}"))
    sources: set[str] = set()
    for i, c in enumerate(d.clients):
        try:
            addr = str(ipaddress.ip_address(c.address))
        except ValueError:
            out.append(FieldError(f"dns.clients[{i}].address",
                                  f"must be an IP address, got {c.address!r}"))
            continue
        if addr in sources:
            out.append(FieldError(f"dns.clients[{i}].address", f"duplicate client {addr}"))
        sources.add(addr)
    if d.port:
        mine = [(a, packed(a)) for a in (d.address, *d.additional_addresses)]
        for i, lc in enumerate(cfg.listeners):
            if lc.port != d.port:
                continue
            theirs = [k for k in map(packed, (lc.address, *lc.additional_addresses)) if k]
            for a, key in mine:
                if key is not None and any(overlaps(key, k) for k in theirs):
                    out.append(FieldError("dns.port", f"{hostport(a, d.port)} is also listener "
                                          f"listeners[{i}] ({lc.name})"))
                    break
    return out
