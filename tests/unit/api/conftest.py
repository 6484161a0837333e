"""Fixtures for the resource API tests."""

from __future__ import annotations

import pytest
from tests.unit.api.support import Errors, errors_of


@pytest.fixture
def errors() -> Errors:
    """`errors(doc)`: the (path, message) pairs `parse` reports for `doc`."""
    return errors_of
