"""One query's fate, decided without I/O: an answer to send now, or a forward upstream.

Results (the `result` label of `tulle_proxy_dns_queries_total`):

* `mesh`: a mesh name, answered here (A / AAAA records, or NODATA for another type);
* `nxdomain`: a name under the mesh domain that no Service has;
* `formerr`: a query that could not be read (FORMERR, NOTIMP for another opcode), or a name
  answered here asked with an EDNS version past 0 (BADVERS, RFC 6891 6.1.3);
* `dropped`: nothing could be answered (no header, or a response rather than a query);
* `forward`: everything else, for `forward.py` (the listener counts `forwarded` or
  `servfail` when the upstream answered or did not): a name of another class, one no mesh
  rule covers, or one whose labels hold a dot (`Query.label_dot`: its dotted form spells
  another name, so it is not the mesh's; the upstream answers it as it would without us).
"""

from __future__ import annotations

from dataclasses import dataclass

from tulle.dataplane.dns.table import NameTable
from tulle.dataplane.protocols import dns as wire

MESH = "mesh"
NXDOMAIN = "nxdomain"
FORMERR = "formerr"
DROPPED = "dropped"
FORWARDED = "forwarded"
SERVFAIL = "servfail"
RESULTS = (MESH, NXDOMAIN, FORWARDED, FORMERR, SERVFAIL, DROPPED)


@dataclass(frozen=True, slots=True)
class Decision:
    result: str
    reply: bytes | None = None
    """The answer to send (None: drop, or forward)."""
    query: wire.Query | None = None
    """Set when the query is to be forwarded (to build its SERVFAIL if no upstream answers)."""


def decide(data: bytes, table: NameTable, udp: bool) -> Decision:
    q = wire.parse_query(data)
    if isinstance(q, wire.Malformed):
        if q.rcode is None:
            return Decision(DROPPED)
        return Decision(FORMERR, wire.error(q))
    if q.qclass in (wire.CLASS_IN, wire.ANY) and not q.label_dot:
        rec = table.lookup(q.name)
        if rec is not None:
            if q.edns_version:
                return Decision(FORMERR, wire.badvers(q))
            if q.qtype == wire.A:
                reply = wire.answer(q, wire.NOERROR, rec.a, rec.a_count)
            elif q.qtype == wire.AAAA:
                reply = wire.answer(q, wire.NOERROR, rec.aaaa, rec.aaaa_count)
            elif q.qtype == wire.ANY:
                reply = wire.answer(q, wire.NOERROR, rec.a + rec.aaaa,
                                    rec.a_count + rec.aaaa_count)
            else:
                reply = wire.answer(q, wire.NOERROR)
            if udp and len(reply) > (q.edns or wire.MAX_UDP_PLAIN):
                reply = wire.truncated(q)
            return Decision(MESH, reply)
        if table.owns(q.name):
            if q.edns_version:
                return Decision(FORMERR, wire.badvers(q))
            return Decision(NXDOMAIN, wire.answer(q, wire.NXDOMAIN))
    # Forwarded as it came, an EDNS version past 0 included: for these names the proxy is a
    # forwarder, transparent to EDNS (RFC 5625's transparency principle), and the upstream,
    # the responder, answers BADVERS or the version it implements (RFC 6891 6.1.3).
    return Decision(FORWARDED, None, q)
