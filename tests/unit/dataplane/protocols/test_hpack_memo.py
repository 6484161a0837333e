"""The remembering HPACK coders give byte for byte what plain hpack gives, block after block,
while the dynamic table fills, churns and is resized; and they do remember what they may."""

from __future__ import annotations

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from tulle.dataplane.protocols.hpack_memo import MemoDecoder, MemoEncoder, table_free

# Two header blocks as nginx 1.22 sends a gRPC response: the first starts with a table size
# update to 0 and indexes `server` etc. incrementally (into a table of size 0); the second is
# the trailers, literals without indexing.
NGINX_HEAD = bytes.fromhex(
    "20887689aa6355e580ae212e1f6196dd6d5f4a09f5349fba82009c5022b8cb7704f298b46f5f8b1d75d0620d"
    "263d4c4d65645c0237316c96dd6d5f4a09f5349fba82009c5022b8cb7704f298b46f008919085ad2b583aa62"
    "a3848fd24a8f")
NGINX_TRAILERS = bytes.fromhex("00889acac8b21234da8f0130008af2b465a893ac7b0d31aa84aa6355e7")


def blocks(*lists: list[tuple[bytes, bytes]]) -> list[bytes]:
    enc = Encoder()
    return [enc.encode(h) for h in lists]


def test_table_free_tells_blocks_that_use_the_table() -> None:
    static_only, indexing, dynamic_ref = blocks(
        [(b":status", b"200")],                     # fully indexed, static
        [(b"x-a", b"1")],                           # literal with incremental indexing
        [(b"x-a", b"1")])                           # now a reference to the dynamic table
    assert table_free(static_only)
    assert not table_free(indexing)
    assert table_free(indexing, zero_size=True)
    assert not table_free(dynamic_ref)
    assert not table_free(NGINX_HEAD, zero_size=True)  # it carries a size update
    assert table_free(NGINX_HEAD[1:], zero_size=True)
    assert not table_free(NGINX_HEAD[1:])
    assert table_free(NGINX_TRAILERS)
    assert not table_free(NGINX_TRAILERS[:-3])  # truncated


def test_decoder_remembers_nginx_blocks_and_matches_hpack() -> None:
    memo, plain = MemoDecoder(65_536), Decoder()
    second_head = b"\x88" + NGINX_HEAD[2:]  # the same head without the size update
    for block in (NGINX_HEAD, NGINX_TRAILERS, second_head, NGINX_TRAILERS, second_head):
        assert memo.decode(block, raw=True) == plain.decode(block, raw=True)
    assert memo._memo.keys() == {NGINX_TRAILERS, second_head}
    assert (b"grpc-status", b"0") in list(memo.decode(NGINX_TRAILERS, raw=True))


def test_block_remembered_at_table_size_zero_indexes_again_when_the_table_grows() -> None:
    memo, plain = MemoDecoder(65_536), Decoder()
    enc = Encoder()
    enc.header_table_size = 0
    sequence = [enc.encode([(b"x-a", b"1")]), enc.encode([(b"x-a", b"1")])]
    assert sequence[0][:1] == b"\x20" and sequence[1][:1] == b"\x40"
    enc.header_table_size = 4096
    grow = enc.encode([(b":status", b"200")])  # carries the size update back to 4096
    again = sequence[1]                         # indexes x-a: 1 this time, for real
    ref = enc.encode([(b"x-a", b"1")])          # the encoder now refers to that entry
    enc.encode([(b"x-a", b"1")])
    for block in [*sequence, grow, again, ref]:
        assert memo.decode(block, raw=True) == plain.decode(block, raw=True)
    # The remembered `again` was decoded for real: its entry is in the table, as in hpack's.
    assert memo.header_table.dynamic_entries == plain.header_table.dynamic_entries
    assert len(plain.header_table.dynamic_entries) == 2


def test_decoder_does_not_bypass_the_header_list_limit() -> None:
    memo = MemoDecoder(65_536)
    memo.decode(NGINX_TRAILERS, raw=True)
    memo.max_header_list_size = 40
    try:
        memo.decode(NGINX_TRAILERS, raw=True)
    except Exception as exc:  # hpack's OversizedHeaderListError
        assert "larger than 40" in str(exc)
    else:
        raise AssertionError("a remembered block went past a lowered limit")


def test_encoder_output_is_hpacks_byte_for_byte() -> None:
    memo, plain = MemoEncoder(), Encoder()
    decoder = Decoder()
    lists: list[list[tuple[bytes, bytes]]] = []
    for i in range(40):
        lists.append([(b":status", b"200"), (b"content-type", b"application/grpc"),
                      (b"server", b"nginx"), (b"date", b"d%d" % (i // 7)),
                      (b"content-length", b"%d" % (i % 3)),
                      NeverIndexedHeaderTuple(b"authorization", b"secret"),
                      NeverIndexedHeaderTuple(b"x-request-id", b"id-%d" % i),
                      (b"x-big-%d" % (i % 5), b"v" * (300 * (i % 4)))])
    for i, headers in enumerate(lists):
        if i == 13:
            memo.header_table_size = plain.header_table_size = 256  # evicts
        if i == 27:
            memo.header_table_size = plain.header_table_size = 4096
        out = memo.encode(headers)
        assert out == plain.encode(headers), i
        assert decoder.decode(out, raw=True) == [(bytes(n), bytes(v)) for n, v in headers]
    assert memo._memo  # it did remember something
    assert all(n not in (b"authorization", b"x-request-id") for n, _ in memo._memo)
