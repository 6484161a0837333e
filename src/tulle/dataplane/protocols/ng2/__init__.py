"""The C half of the libnghttp2 HTTP/2 engine: `shim.c`, built by `build.py` (ADR 0051)."""
