"""`listeners/sockets.py`: which bind failures of an additional address are skipped (its
family is off in the namespace) and which refuse the snapshot, and address identity."""

from __future__ import annotations

import errno

import pytest

from tulle.dataplane.listeners.sockets import family_unavailable, same_address


@pytest.mark.parametrize(("address", "err", "skipped"), [
    ("::1", errno.EADDRNOTAVAIL, True),       # IPv6 off on lo
    ("::", errno.EAFNOSUPPORT, True),         # the kernel has no IPv6 at all
    ("0.0.0.0", errno.EAFNOSUPPORT, True),
    ("127.0.0.1", errno.EADDRNOTAVAIL, True),
    ("fd00::3", errno.EADDRNOTAVAIL, False),  # a specific address not configured: a mistake
    ("10.0.0.3", errno.EADDRNOTAVAIL, False),
    ("::1", errno.EADDRINUSE, False),         # taken: never skipped
    ("::", errno.EACCES, False),
])
def test_only_a_family_that_is_off_is_skipped(address: str, err: int, skipped: bool) -> None:
    assert family_unavailable(address, OSError(err, "x")) is skipped


def test_addresses_compare_by_value() -> None:
    assert same_address("::1", "0:0:0:0:0:0:0:1")
    assert same_address("127.0.0.1", "127.0.0.1")
    assert not same_address("::1", "127.0.0.1")
    assert not same_address("::", "::1")
    assert not same_address("localhost", "127.0.0.1")
