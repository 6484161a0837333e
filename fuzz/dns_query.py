"""Fuzz target: the mesh DNS codec and resolver decision on arbitrary datagrams.

    .venv/bin/python -m fuzz.dns_query -runs=100000

`resolver.decide` must never raise.  Whatever it answers must be a message dnspython reads,
with the query's ID; a query the codec accepts must be one dnspython accepts too, with the
same question name (case-insensitively), type and labels holding a dot (differential: our
parser may refuse more, never accept what a mature one refuses).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import dns.exception
    import dns.message

    from tulle.dataplane.dns import resolver
    from tulle.dataplane.dns.table import build
    from tulle.dataplane.protocols import dns as wire
    from tulle.proxyconfig.model import DNS, DNSHost

TABLE = build(DNS(hosts=[DNSHost(service="a", namespace="b", addresses=["10.0.0.1", "fd00::1"])]),
              "b")


def test_one_input(data: bytes) -> None:
    d = resolver.decide(data, TABLE, udp=True)
    q = wire.parse_query(data)
    if isinstance(q, wire.Query):
        try:
            theirs = dns.message.from_wire(data)
        except dns.exception.DNSException as exc:
            raise AssertionError(f"accepted what dnspython refuses: {exc!r}") from exc
        (rrset,) = theirs.question
        assert b".".join(rrset.name.labels[:-1]).lower() == q.name, (rrset.name, q.name)
        assert q.label_dot == any(b"." in x for x in rrset.name.labels), rrset.name
        assert rrset.rdtype == q.qtype
    if d.reply is not None:
        r = dns.message.from_wire(d.reply)
        assert r.id == int.from_bytes(data[:2], "big")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
