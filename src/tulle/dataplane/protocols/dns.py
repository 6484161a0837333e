"""DNS messages (RFC 1035) for the proxy's mesh resolver: parse a query, build its answer.

Sans-I/O, as every codec here: bytes in, a `Query` (or a `Malformed` saying what to answer)
out; answers are bytes.  The resolver only ever *reads* queries and *writes* answers of its
own; forwarded answers are relayed as the upstream sent them and never parsed beyond their
header and question (`same_question`).

Rules of this module (each one an attack the tests replay):

* Nothing past the message is read: every offset is checked against the length first.
* A name is at most 255 octets and labels at most 63; label types 0x40 / 0x80 (RFC 6891's
  extended labels, never deployed) are refused.
* A compression pointer must point before every offset the name has been read from so far
  (each jump lands strictly earlier than the last), so a pointer loop is impossible and the
  walk is bounded by the message length; at most `MAX_POINTERS` are followed per name anyway.
* A message with QR set (an answer) is never answered: that is how two resolvers reflecting at
  each other would loop.
* Only the question and an OPT record (EDNS(0), RFC 6891) are read from a query; anything else
  in it is FORMERR, as for a query with more or less than one question.  The OPT record's
  VERSION is kept (`Query.edns_version`): past 0, what this resolver answers itself is BADVERS
  (`badvers`, RFC 6891 6.1.3).
* A label may hold any octet, a dot included (RFC 1035 3.1, RFC 2181 11), so the dotted
  `Query.name` of such a question spells other labels than the client's: the query says so
  (`Query.label_dot`) and the resolver never answers it as a mesh name.  Names are compared
  label by label (their wire form) wherever two of them must be the same (`same_question`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEADER: Final = 12
MAX_NAME: Final = 255
MAX_POINTERS: Final = 16
MAX_UDP_PLAIN: Final = 512
"""Largest UDP answer to a client that sent no EDNS(0) OPT record (RFC 1035 section 4.2.1)."""
EDNS_PAYLOAD: Final = 1232
"""The UDP payload size this resolver announces (the DNS flag day 2020 value)."""

A: Final = 1
AAAA: Final = 28
OPT: Final = 41
ANY: Final = 255
CLASS_IN: Final = 1

NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16
"""An extended RCODE (RFC 6891 6.1.3): its upper 8 bits go in the OPT record's TTL, the lower
4 in the header."""
EDNS_VERSION: Final = 0
"""The EDNS version this resolver implements (and announces in every OPT record it sends)."""

_QR: Final = 0x8000
_OPCODE: Final = 0x7800
_AA: Final = 0x0400
_TC: Final = 0x0200
_RD: Final = 0x0100
_RA: Final = 0x0080

_H = struct.Struct("!HHHHHH")
_Q = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")


class MalformedName(ValueError):
    """A name that cannot be read; the message is answered FORMERR."""


@dataclass(frozen=True, slots=True)
class Query:
    """One question, read from a client's query."""

    id: int
    flags: int
    name: bytes
    """Lower-cased, dotted, no trailing dot (`catalog.shop.svc.cluster.local`; root is b"")."""
    wire_name: bytes
    """The name as the client wrote it (case kept, uncompressed labels): echoed in answers."""
    qtype: int
    qclass: int
    edns: int | None
    """The client's UDP payload size from its OPT record; None without EDNS(0)."""
    label_dot: bool
    """A label holds a b"." octet: `name` then reads as more labels than the client sent
    (`catalog.shop` for the one label `catalog\\.shop`), so it names no mesh Service."""
    edns_version: int
    """The VERSION of the client's OPT record (0 without one)."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that is not an answerable query: answer `rcode` (a header could be read) with
    `id` and `flags`, or drop it (`rcode` None)."""

    reason: str
    rcode: int | None = None
    id: int = 0
    flags: int = 0


def read_name(data: bytes, offset: int) -> tuple[bytes, bytes, int]:
    """The name at `offset`: (lower-cased dotted name, uncompressed wire form, offset after
    it in the message).  Raises MalformedName."""
    labels, end = _read_labels(data, offset)
    wire = b"".join(bytes((len(lab),)) + lab for lab in labels) + b"\x00"
    return b".".join(labels).lower(), wire, end


def _read_labels(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """The labels of the name at `offset` (case kept) and the offset after it in the
    message.  Raises MalformedName."""
    labels: list[bytes] = []
    end = -1  # where the name ends in the message (before the first pointer's target)
    total = 0
    pointers = 0
    pos = offset
    floor = offset  # lowest offset read from so far: a pointer must land below it
    size = len(data)
    while True:
        if pos >= size:
            raise MalformedName("name runs past the message")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= size:
                raise MalformedName("truncated compression pointer")
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if target >= floor or target < HEADER:
                raise MalformedName("compression pointer does not point backwards")
            floor = target
            pointers += 1
            if pointers > MAX_POINTERS:
                raise MalformedName("too many compression pointers")
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if kind:
            raise MalformedName(f"unsupported label type 0x{kind:02x}")
        if pos + 1 + n > size:
            raise MalformedName("label runs past the message")
        total += n + 1
        if total + 1 > MAX_NAME:
            raise MalformedName("name longer than 255 octets")
        labels.append(data[pos + 1:pos + 1 + n])
        pos += 1 + n
    return labels, (end if end >= 0 else pos)


def _skip_rr(data: bytes, pos: int) -> tuple[int, int, int, int, bytes]:
    """Read one resource record at `pos`: (type, class-or-size, TTL, end offset, name)."""
    name, _, pos = read_name(data, pos)
    if pos + _RR.size > len(data):
        raise MalformedName("record header runs past the message")
    rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
    pos += _RR.size + rdlen
    if pos > len(data):
        raise MalformedName("record data runs past the message")
    return rtype, rclass, ttl, pos, name


def parse_query(data: bytes) -> Query | Malformed:
    """Read a client's query.  Never raises: a bad message is a `Malformed`."""
    if len(data) < HEADER:
        return Malformed("shorter than a header")
    qid, flags, qd, an, ns, ar = _H.unpack_from(data)
    if flags & _QR:
        return Malformed("a response, not a query")
    keep = flags & (_OPCODE | _RD)
    if flags & _OPCODE:
        return Malformed("opcode is not QUERY", NOTIMP, qid, keep)
    if qd != 1 or an or ns:
        return Malformed("not exactly one question", FORMERR, qid, keep)
    try:
        labels, pos = _read_labels(data, HEADER)
        qend = pos
        if pos + _Q.size > len(data):
            raise MalformedName("question runs past the message")
        qtype, qclass = _Q.unpack_from(data, pos)
        pos += _Q.size
        edns: int | None = None
        version = 0
        for _ in range(ar):
            rtype, rclass, ttl, pos, rname = _skip_rr(data, pos)
            if rtype != OPT or rname or edns is not None:
                raise MalformedName("additional record other than one OPT")
            edns = max(rclass, MAX_UDP_PLAIN)
            version = (ttl >> 16) & 0xFF  # TTL: extended RCODE, VERSION, DO and Z
    except MalformedName as exc:
        return Malformed(str(exc), FORMERR, qid, keep)
    if pos != len(data):
        return Malformed("bytes after the last record", FORMERR, qid, keep)
    name = b".".join(labels)
    # one dot between each two labels: any more were inside a label (one C-level count)
    label_dot = name.count(b".") >= len(labels) > 0
    # The question's name holds no compression pointer (one would have to point below the
    # header), so its bytes in the message are its uncompressed wire form.
    wire = data[HEADER:qend]
    return Query(qid, flags, name.lower(), wire, qtype, qclass, edns, label_dot, version)


def _opt(rcode: int) -> bytes:
    """Our OPT record: root owner, our UDP size, `rcode`'s upper 8 bits, VERSION 0."""
    return b"\x00" + _RR.pack(OPT, EDNS_PAYLOAD, (rcode >> 4) << 24 | EDNS_VERSION << 16, 0)


_OPT: Final = _opt(NOERROR)


def answer(q: Query, rcode: int, records: bytes = b"", count: int = 0, *,
           authoritative: bool = True) -> bytes:
    """The answer to `q`: its question echoed (case kept), `count` answer records already in
    wire form (`records`, their owner a pointer to the question: `rr`), an OPT record when
    the query had one (carrying the upper bits of an extended `rcode`, which needs one).  An
    answer too large for the client's UDP size is the caller's to truncate (`truncated`)."""
    flags = _QR | _RA | (q.flags & _RD) | (_AA if authoritative else 0) | (rcode & 0xF)
    ar = 1 if q.edns is not None else 0
    head = _H.pack(q.id, flags, 1, count, 0, ar)
    tail = (_OPT if rcode <= 0xF else _opt(rcode)) if ar else b""
    return b"".join((head, q.wire_name, _Q.pack(q.qtype, q.qclass), records, tail))


def badvers(q: Query) -> bytes:
    """The answer to a query whose EDNS VERSION this resolver does not implement (RFC 6891
    6.1.3): RCODE BADVERS, no records, our OPT record saying VERSION 0 (the highest we do).
    Only ever for a query with an OPT record, which carries the extended RCODE's upper bits."""
    assert q.edns is not None
    return answer(q, BADVERS, authoritative=False)


def truncated(q: Query) -> bytes:
    """`q`'s answer with TC set and no records: the client retries over TCP."""
    msg = bytearray(answer(q, NOERROR))
    msg[2] |= _TC >> 8
    return bytes(msg)


def error(m: Malformed) -> bytes:
    """The header-only answer to a malformed query (no question echoed: it could not be read)."""
    assert m.rcode is not None
    return _H.pack(m.id, _QR | _RA | m.flags | m.rcode, 0, 0, 0, 0)


def rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
    """One answer record whose owner is the question's name (a pointer to offset 12)."""
    return b"\xc0\x0c" + _RR.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def same_question(query: bytes, reply: bytes) -> bool:
    """`reply` answers `query`: same ID, QR set, and the same question (names compared
    label by label, case-insensitively: their wire forms, whose length octets `lower` leaves
    alone, so the labels `a.b` `c` are not `a` `b.c`).  An upstream datagram that fails this
    is dropped (spoofing)."""
    if len(reply) < HEADER or reply[:2] != query[:2] or not reply[2] & 0x80:
        return False
    try:
        _, qwire, qpos = read_name(query, HEADER)
        _, rwire, rpos = read_name(reply, HEADER)
    except MalformedName:
        return False
    if int.from_bytes(reply[4:6], "big") != 1:
        return False
    return qwire.lower() == rwire.lower() and query[qpos:qpos + 4] == reply[rpos:rpos + 4]


def reply_id(reply: bytes) -> int:
    return int.from_bytes(reply[:2], "big")
