"""Fuzz target: session-persistence tokens and the `Cookie` field they come in.

    .venv/bin/python -m fuzz.session_token -runs=200000

Neither `cookie_value` nor `decode` may raise on any bytes.  A token `decode` accepts must be
the canonical encoding of what it decoded (no two spellings of one token), unexpired.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tulle.dataplane.filters.session_token import cookie_value, decode, encode

NOW = 1_800_000_000.0


def test_one_input(data: bytes) -> None:
    value = cookie_value(data, b"sid")
    for candidate in (data, value or b""):
        tok = decode(candidate, NOW)
        if tok is not None:
            assert encode(tok.endpoint, tok.idle_expiry, tok.absolute_expiry) == \
                candidate.strip(b" \t"), candidate
            assert tok.idle_expiry == 0 or tok.idle_expiry > NOW
            assert tok.absolute_expiry == 0 or tok.absolute_expiry > NOW


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
