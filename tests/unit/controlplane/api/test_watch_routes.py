"""The watch's two pieces of bookkeeping (watch_routes.py): Kubernetes' label-selector rule
(leaving the selection is DELETED, entering it ADDED) and the slots per token and in all."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.api.watch_routes import Watches, WatchLimits, WatchSlots
from tulle.controlplane.store.labels import compile_selector
from tulle.controlplane.store.protocol import EventType, WatchEvent


def event(type_: EventType, name: str, revision: int, **labels: str) -> WatchEvent:
    obj: dict[str, Any] = {"kind": "Service", "metadata": {
        "name": name, "namespace": "a", "labels": labels, "resourceVersion": str(revision)}}
    return WatchEvent(type_, obj, revision)


def test_a_selection_is_entered_as_added_and_left_as_deleted() -> None:
    matches = compile_selector("tier=web")
    matched: set[tuple[str, str]] = set()
    shown = [Watches._shown(e, matches, matched) for e in (
        event("ADDED", "x", 1, tier="db"),        # not selected
        event("MODIFIED", "x", 2, tier="web"),    # enters: ADDED
        event("MODIFIED", "x", 3, tier="web"),    # stays: MODIFIED
        event("MODIFIED", "x", 4, tier="db"),     # leaves: DELETED
        event("MODIFIED", "x", 5, tier="db"),     # still out: nothing
        event("DELETED", "x", 6, tier="db"),      # gone while out: nothing
        event("ADDED", "y", 7, tier="web"),
        event("DELETED", "y", 8, tier="web"),
    )]
    assert shown == [None, "ADDED", "MODIFIED", "DELETED", None, None, "ADDED", "DELETED"]
    assert matched == set()


def test_without_a_selector_every_event_is_shown_as_it_is() -> None:
    matched: set[tuple[str, str]] = set()
    assert [Watches._shown(event(t, "x", 1), None, matched)
            for t in ("ADDED", "MODIFIED", "DELETED")] == ["ADDED", "MODIFIED", "DELETED"]


def test_slots_per_token_and_in_all() -> None:
    slots = WatchSlots(WatchLimits(per_token=2, total=3))
    assert slots.take("token:a") is None and slots.take("token:a") is None
    assert "at most 2" in (slots.take("token:a") or "")
    assert slots.take("token:b") is None
    assert "on this control plane" in (slots.take("token:c") or "")
    slots.give("token:a")
    assert slots.take("token:c") is None
    for who in ("token:a", "token:b", "token:c"):
        slots.give(who)
    assert slots.total == 0 and not slots.by_subject
