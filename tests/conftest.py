"""Shared fixtures.  Async tests run on uvloop (the proxy's loop in production); tests marked
`both_loops` also run on the stdlib loop, for code that must not depend on uvloop's quirks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop

from tests.support.origin import running_origin


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("both_loops") is not None:
        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def origin() -> AsyncIterator[int]:
    """Port of a real HTTP/1.1 origin (aiohttp) on loopback."""
    async with running_origin() as port:
        yield port
