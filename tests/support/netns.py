"""The network-namespace testbed as a pytest fixture.

    from tests.support.netns import testbed  # noqa: F401  (makes the fixture available)

    @pytest.mark.netns
    def test_x(testbed: Testbed) -> None: ...

Tests are skipped, with the reason, where namespaces cannot be built (not root, no iproute2),
and when a tool they name is missing (`require_tools("iptables", "curl")`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tulle.net.netns import Testbed, missing_requirements


def require_tools(*tools: str) -> None:
    why = missing_requirements()
    if why is not None:
        pytest.skip(why)
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    require_tools()
    tb = Testbed()
    try:
        yield tb
    finally:
        tb.close()
