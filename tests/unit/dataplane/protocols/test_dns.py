"""The DNS codec on hand-written wire bytes, and its answers read back by dnspython."""

from __future__ import annotations

import struct

import dns.message
import dns.rdatatype
import pytest

from tulle.dataplane.protocols import dns as wire


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def qname(*labels: bytes) -> bytes:
    return b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"


def question(name: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


def test_a_hand_written_query_is_read_lower_cased_with_its_wire_name_kept() -> None:
    data = header() + question(qname(b"CataLog", b"Shop"))
    q = wire.parse_query(data)
    assert isinstance(q, wire.Query)
    assert (q.id, q.name, q.qtype, q.qclass, q.edns) == (0x1234, b"catalog.shop", 1, 1, None)
    assert q.wire_name == qname(b"CataLog", b"Shop")


def test_a_query_from_dnspython_with_edns_is_read() -> None:
    m = dns.message.make_query("web.default.svc.cluster.local", "AAAA", use_edns=0, payload=4096)
    q = wire.parse_query(m.to_wire())
    assert isinstance(q, wire.Query)
    assert (q.name, q.qtype, q.edns) == (b"web.default.svc.cluster.local", 28, 4096)


def test_the_answer_reads_back_in_dnspython_with_id_question_case_and_records() -> None:
    m = dns.message.make_query("CATALOG.shop", "A")
    q = wire.parse_query(m.to_wire())
    assert isinstance(q, wire.Query)
    recs = wire.rr(wire.A, 5, bytes([10, 96, 0, 7])) + wire.rr(wire.A, 5, bytes([10, 96, 0, 8]))
    r = dns.message.from_wire(wire.answer(q, wire.NOERROR, recs, 2))
    assert r.id == m.id and m.is_response(r)
    assert r.question[0].name.to_text() == "CATALOG.shop."
    (rrset,) = r.answer
    assert rrset.ttl == 5 and sorted(x.address for x in rrset) == ["10.96.0.7", "10.96.0.8"]
    assert r.flags & dns.flags.AA and r.flags & dns.flags.RD and r.flags & dns.flags.QR


def test_edns_queries_get_an_opt_record_back() -> None:
    m = dns.message.make_query("a.b", "A", use_edns=0)
    q = wire.parse_query(m.to_wire())
    assert isinstance(q, wire.Query)
    r = dns.message.from_wire(wire.answer(q, wire.NOERROR))
    assert r.edns == 0 and r.payload == wire.EDNS_PAYLOAD


@pytest.mark.parametrize(("data", "rcode", "reason"), [
    (b"", None, "shorter than a header"),
    (b"\x12\x34\x01", None, "shorter than a header"),
    (header(flags=0x8100) + question(qname(b"a")), None, "a response"),
    (header(flags=0x2900) + question(qname(b"a")), wire.NOTIMP, "opcode"),
    (header(qd=0), wire.FORMERR, "exactly one question"),
    (header(qd=2) + question(qname(b"a")) * 2, wire.FORMERR, "exactly one question"),
    (header(an=1) + question(qname(b"a")), wire.FORMERR, "exactly one question"),
    (header(), wire.FORMERR, "past the message"),  # a header announcing a missing question
    (header() + b"\x05ab", wire.FORMERR, "label runs past"),
    (header() + b"\x40abc\x00" + b"\x00\x01\x00\x01", wire.FORMERR, "label type 0x40"),
    (header() + b"\x80abc\x00" + b"\x00\x01\x00\x01", wire.FORMERR, "label type 0x80"),
    (header() + qname(b"a"), wire.FORMERR, "question runs past"),
    (header() + question(qname(b"a")) + b"x", wire.FORMERR, "bytes after"),
    (header() + question(b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63
                         + b"\x3f" + b"d" * 63 + b"\x00"), wire.FORMERR, "longer than 255"),
    (header(ar=1) + question(qname(b"a")) + question(qname(b"x")) + b"\0\0\0\0\0\0",
     wire.FORMERR, "other than one OPT"),
    (header(ar=1) + question(qname(b"a")) + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x05",
     wire.FORMERR, "record data runs past"),
])
def test_malformed_queries_get_formerr_or_are_dropped(data: bytes, rcode: int | None,
                                                      reason: str) -> None:
    m = wire.parse_query(data)
    assert isinstance(m, wire.Malformed)
    assert m.rcode == rcode and reason in m.reason
    if rcode is not None:
        r = dns.message.from_wire(wire.error(m))
        assert r.id == 0x1234 and r.rcode() == rcode and not r.question


def test_a_pointer_to_itself_or_forwards_is_refused_and_the_walk_is_bounded() -> None:
    selfloop = header() + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    forward = header() + b"\xc0\x20" + b"\x00\x01\x00\x01" + b"\x00" * 20
    for data in (selfloop, forward):
        m = wire.parse_query(data)
        assert isinstance(m, wire.Malformed) and "backwards" in m.reason
    # Mutually pointing names in a longer message: A at 12 points to B at 14, B back to A.
    loop = header() + b"\xc0\x0e\xc0\x0c" + b"\x00\x01\x00\x01"
    m = wire.parse_query(loop)
    assert isinstance(m, wire.Malformed)
    # A chain of backward pointers is followed, at most MAX_POINTERS of them.
    body = b"\x01a\x00"
    chain = bytearray(header() + body)
    prev = 12
    for _ in range(wire.MAX_POINTERS + 1):
        here = len(chain)
        chain += bytes((0xC0 | prev >> 8, prev & 0xFF))
        prev = here
    with pytest.raises(wire.MalformedName, match="too many"):
        wire.read_name(bytes(chain), prev)
    assert wire.read_name(bytes(chain), 12 + len(body) + 2)[0] == b"a"


def test_a_pointer_back_into_its_own_name_is_a_loop_and_refused() -> None:
    # `b` at 12, then a pointer at 14 to 12: lands before the pointer, yet walks `b` forever.
    data = header() + b"\x01b\xc0\x0c" + b"\x00\x01\x00\x01"
    m = wire.parse_query(data)
    assert isinstance(m, wire.Malformed) and "backwards" in m.reason


def test_a_legal_pointer_to_an_earlier_name_is_followed() -> None:
    data = header() + b"\x01a\x00" + b"\x01b\xc0\x0c"
    name, raw, end = wire.read_name(data, 15)
    assert (name, raw, end) == (b"b.a", b"\x01b\x01a\x00", len(data))


def test_same_question_accepts_the_real_answer_and_refuses_others() -> None:
    m = dns.message.make_query("example.org", "A")
    r = dns.message.make_response(m)
    query, reply = m.to_wire(), r.to_wire()
    assert wire.same_question(query, reply)
    assert not wire.same_question(query, query)  # QR unset
    assert not wire.same_question(query, bytes([reply[0] ^ 1]) + reply[1:])  # other ID
    other = dns.message.make_response(dns.message.make_query("example.com", "A"))
    other.id = m.id
    assert not wire.same_question(query, other.to_wire())
    upper = dns.message.make_response(dns.message.make_query("EXAMPLE.org", "A"))
    upper.id = m.id
    assert wire.same_question(query, upper.to_wire())
    assert not wire.same_question(query, b"\x00")


def test_truncated_sets_tc_and_carries_no_records() -> None:
    q = wire.parse_query(dns.message.make_query("a.b", "A").to_wire())
    assert isinstance(q, wire.Query)
    r = dns.message.from_wire(wire.truncated(q))
    assert r.flags & dns.flags.TC and not r.answer


@pytest.mark.parametrize(("labels", "dotted"), [
    ((b"catalog", b"shop"), False),
    ((), False),  # the root
    ((b"a",), False),
    ((b"catalog.shop",), True),
    ((b"catalog", b"shop.mesh"), True),
    ((b"a.",), True),
    ((b".",), True),
    ((b"x" * 63, b"a.b", b"y" * 10), True),
])
def test_a_label_holding_a_dot_is_marked(labels: tuple[bytes, ...], dotted: bool) -> None:
    """RFC 1035 3.1 / RFC 2181 11: any octet may sit in a label, b"." included; the dotted
    `name` then spells other labels, which the query must say."""
    q = wire.parse_query(header() + question(qname(*labels)))
    assert isinstance(q, wire.Query)
    assert q.label_dot is dotted
    assert q.name == b".".join(labels).lower() and q.wire_name == qname(*labels)


def test_same_question_compares_labels_not_their_dotted_spelling() -> None:
    query = header() + question(qname(b"a.b", b"c"))
    reply = header(flags=0x8180) + question(qname(b"a", b"b.c"))
    assert not wire.same_question(query, reply)
    assert wire.same_question(query, header(flags=0x8180) + question(qname(b"A.B", b"C")))


def test_the_edns_version_is_read_and_badvers_carries_its_upper_bits_in_the_opt_record() -> None:
    for version in (0, 1, 255):
        m = dns.message.make_query("a.b", "A", use_edns=version)
        q = wire.parse_query(m.to_wire())
        assert isinstance(q, wire.Query) and q.edns_version == version
    q = wire.parse_query(dns.message.make_query("a.b", "A").to_wire())
    assert isinstance(q, wire.Query) and q.edns_version == 0 and q.edns is None
    m = dns.message.make_query("A.b", "AAAA", use_edns=1, want_dnssec=True)
    q = wire.parse_query(m.to_wire())
    assert isinstance(q, wire.Query) and q.edns_version == 1
    raw = wire.badvers(q)
    assert raw[3] & 0x0F == 0  # the lower 4 bits of 16, in the header
    r = dns.message.from_wire(raw)
    assert r.id == m.id and m.is_response(r) and r.question[0].name.to_text() == "A.b."
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0 and r.payload == wire.EDNS_PAYLOAD
    assert not r.answer and not r.flags & dns.flags.AA
    # an ordinary answer's OPT record carries no extended RCODE
    r = dns.message.from_wire(wire.answer(q, wire.NXDOMAIN))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.edns == 0
