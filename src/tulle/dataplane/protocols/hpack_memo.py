"""HPACK coders that remember what they computed while the dynamic table stays the same.

Why: hpack decodes every literal in pure Python, Huffman code byte by byte.  Many peers send
some header blocks without using the dynamic table at all (nginx, for one, sends every response
and trailer block as static-table references and literals "without indexing"), so the same
bytes arrive again and again and decode to the same fields every time.  A block that neither
reads nor changes the dynamic table (RFC 7541 6.1, 6.2.2, 6.2.3 with a static or literal name,
no size update) decodes the same whatever the table holds: those are remembered, per
connection, and handed out again without decoding.  So are blocks with incremental indexing
(6.2.1) while the peer has set the table's size to 0, as nginx does first thing: the new entry
is evicted at once, so the block changes nothing either; such an entry is used only while the
size is still 0.

Everything else (indexed references to the dynamic table, incremental indexing, size updates)
is decoded by hpack as before.  The memo is small and per decoder, so a peer can fill it with
at most `MEMO_ENTRIES` blocks of at most `MEMO_BLOCK_BYTES`.  h2 validates the decoded fields
after this step either way, remembered or not.

Encoding is the mirror image: a proxy sends the same fields over and over (`:method POST`,
`content-type: application/grpc`, the peer's `server`), and once they are in the table each one
encodes to the same index for as long as the table does not change.  `MemoEncoder` remembers
the encoding of each field until the table changes (an entry added or evicted, a size update);
sensitive (never-indexed) fields are never remembered.
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import Decoder, Encoder, HeaderTuple

STATIC_TABLE_LENGTH = 61
MEMO_ENTRIES = 64
MEMO_BLOCK_BYTES = 1024


def _int(block: bytes, i: int, mask: int) -> tuple[int, int]:
    """An HPACK integer (RFC 7541 5.1) whose prefix is `mask` at `block[i]`: (value, next)."""
    value = block[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        b = block[i]
        i += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def table_free(block: bytes, zero_size: bool = False) -> bool:
    """True when the header block neither reads nor changes the dynamic table, given that the
    table's maximum size is 0 (`zero_size`: indexing adds nothing) or may not be."""
    i, n = 0, len(block)
    try:
        while i < n:
            b = block[i]
            if b & 0x80:  # indexed field (6.1)
                index, i = _int(block, i, 0x7F)
                if index > STATIC_TABLE_LENGTH:
                    return False
                continue
            if b & 0x40:  # incremental indexing (6.2.1)
                if not zero_size:
                    return False
                index, i = _int(block, i, 0x3F)
            elif b & 0x20:  # size update (6.3)
                return False
            else:  # without indexing / never indexed (6.2.2, 6.2.3)
                index, i = _int(block, i, 0x0F)
            if index > STATIC_TABLE_LENGTH:
                return False
            if index == 0:  # literal name
                length, i = _int(block, i, 0x7F)
                i += length
            length, i = _int(block, i, 0x7F)
            i += length
    except IndexError:
        return False
    return i == n


class MemoDecoder(Decoder):
    """`hpack.Decoder`, remembering table-free blocks decoded with `raw=True` (as h2 asks)."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__()
        self.max_header_list_size = max_header_list_size
        self._memo: dict[bytes, tuple[list[HeaderTuple], int, bool]] = {}
        """block -> (fields, their size as the header list limit counts it, zero_size)"""

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        zero = self.header_table.maxsize == 0
        hit = self._memo.get(data) if raw else None
        if (hit is not None and (zero or not hit[2]) and hit[1] <= self.max_header_list_size
                and self.header_table_size <= self.max_allowed_table_size):
            return list(hit[0])
        headers = super().decode(data, raw)
        # No size update in a remembered block, so `zero` still holds after decoding it.
        if raw and len(data) <= MEMO_BLOCK_BYTES and table_free(data, zero):
            memo = self._memo
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            fields = list(headers)
            memo[data] = (fields, sum(len(n) + len(v) + 32 for n, v in fields), zero)
            return list(fields)
        return headers


class MemoEncoder(Encoder):
    """`hpack.Encoder`, remembering each field's encoding while the dynamic table is unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[tuple[bytes, bytes], bytes] = {}
        self._size = 0
        self._newest: object = None
        """What the table held when the memo was filled: entry count and newest entry."""

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        if sensitive:
            return super().add(to_add, sensitive, huffman)  # changes no table, never remembered
        entries = self.header_table.dynamic_entries
        memo = self._memo
        if len(entries) != self._size or (entries and entries[0] is not self._newest):
            memo.clear()  # the table changed (evictions on a size update included)
            self._size = len(entries)
            self._newest = entries[0] if entries else None
        hit = memo.get(to_add)
        if hit is not None:
            return hit
        encoded = super().add(to_add, sensitive, huffman)
        if len(entries) == self._size and (not entries or entries[0] is self._newest):
            if len(memo) >= MEMO_ENTRIES * 4:
                memo.clear()
            memo[to_add] = encoded
        return encoded
