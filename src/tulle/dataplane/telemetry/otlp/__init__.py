"""OTLP over HTTP/protobuf without protobuf: a hand-rolled wire encoder and a batching poster.

Why by hand: the proxy must not import protobuf or grpcio (DESIGN.md section 7: ~10 MB RSS,
and their import time).  OTLP's messages are few and only *sent* by the proxy, so encoding
them takes a page of code: `wire.py` (protobuf's wire format), `common.py` (Resource,
KeyValue, AnyValue, InstrumentationScope), a module per signal (`logs.py`; traces elsewhere),
and `exporter.py`, the batching HTTP poster shared by every signal (ADR 0054).
"""
