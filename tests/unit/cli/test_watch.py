"""`cli/watch`: a paged list is watched from its first page's revision (ADR 0120), so an event
for a version a later page already showed comes again and is not shown twice, nor an older
version after a newer one."""

from __future__ import annotations

from tulle.cli.watch import _shown_already


def test_an_event_no_newer_than_what_was_shown_is_not_shown_again() -> None:
    assert _shown_already("120", "120") and _shown_already("120", "110")
    assert not _shown_already("120", "121")
    assert not _shown_already(None, "5")  # never shown: shown now
    assert not _shown_already("", "5") and not _shown_already("12", "")  # not numbers: shown
