"""The events `H2Codec.feed` and `H2Codec.flush` hand to the drivers.

Why a module of their own: they are the codec's vocabulary, read by both drivers (downstream
listener, upstream pool) and by tests, and plain slotted classes need nothing of h2, so they
live apart from the codec that produces them.  Each carries the stream id; heads arrive already
translated into exchange values (`h2translate.py`).
"""

from __future__ import annotations

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead


class RequestReceived:
    __slots__ = ("end_stream", "head", "stream_id")

    def __init__(self, stream_id: int, head: RequestHead, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.head = head
        self.end_stream = end_stream
        """True: no DATA and no `EndReceived` will follow."""


class ResponseReceived:
    __slots__ = ("end_stream", "head", "stream_id")

    def __init__(self, stream_id: int, head: ResponseHead, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.head = head
        self.end_stream = end_stream


class InformationalReceived:
    __slots__ = ("head", "stream_id")

    def __init__(self, stream_id: int, head: ResponseHead) -> None:
        self.stream_id = stream_id
        self.head = head


class DataReceived:
    __slots__ = ("data", "flow_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes, flow_length: int) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_length = flow_length
        """What to pass to `ack` once the data is consumed (includes padding)."""


class EndReceived:
    __slots__ = ("stream_id", "trailers")

    def __init__(self, stream_id: int, trailers: Headers | None) -> None:
        self.stream_id = stream_id
        self.trailers = trailers


class ResetReceived:
    __slots__ = ("error_code", "stream_id")

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code


class StreamRejected:
    """A request this codec will not pass on; the driver answers `status` on the stream."""

    __slots__ = ("detail", "end_stream", "kind", "status", "stream_id")

    def __init__(self, stream_id: int, status: int, kind: str, detail: str,
                 end_stream: bool) -> None:
        self.stream_id = stream_id
        self.status = status
        self.kind = kind
        self.detail = detail
        self.end_stream = end_stream


class GoAwayReceived:
    __slots__ = ("error_code", "last_stream_id")

    def __init__(self, last_stream_id: int, error_code: int) -> None:
        self.last_stream_id = last_stream_id
        self.error_code = error_code


class InformationalFlood:
    """A stream's upstream sent more 1xx heads than `MAX_INFORMATIONAL`: the codec reset it
    (PROTOCOL_ERROR) and drops its further heads; the driver fails the request (502, UPE)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class SendDrained:
    """A stream whose outbound queue went above the high-water mark is empty again."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


Event = (RequestReceived | ResponseReceived | InformationalReceived | DataReceived | EndReceived
         | ResetReceived | StreamRejected | GoAwayReceived | SendDrained | InformationalFlood)
