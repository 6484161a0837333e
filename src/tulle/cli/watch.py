"""`tulle get -w`'s follower: list, then watch from the list's revision, and list again when
the watch ends (ADR 0104).

It polled the list once a second, which printed changes inside a second once and never an
object created and deleted between two polls.  The API's watch (`?watch=true`) sends every
change in revision order; on a 410 (the revision was compacted, or this watcher fell behind)
or a dropped connection the follower lists again, reports what changed since by comparing
resourceVersions with what it showed, and watches from the new list's revision.

One thread per kind, each putting `Change`s on a queue the command's main thread prints, so
the output stays whole lines and Ctrl-C (delivered to the main thread) ends the command.
Stdlib only, imported when `-w` is given: `tulle get` stays light.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from tulle.cli.client import APIError, stream
from tulle.cli.listing import list_all

READ_TIMEOUT = 30.0
"""Seconds without a line (the API beats every 10 s at most) before the watch counts as
dropped and the follower lists again."""
RETRY = 1.0
"""Seconds before listing again after an error."""

Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Change:
    """What the main thread prints: an object as it is now, a deletion, or an error line."""

    what: Literal["object", "deleted", "error"]
    object: dict[str, Any] | None = None
    key: Key | None = None
    message: str = ""


def key_of(obj: dict[str, Any]) -> Key:
    md = obj.get("metadata") or {}
    return str(obj.get("kind")), str(md.get("namespace") or ""), str(md.get("name"))


def rv_of(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _shown_already(shown: str | None, rv: str) -> bool:
    """An event for a version no newer than the one shown.  A paged list is watched from its
    first page's revision (`cli/listing.py`), so changes that a later page already showed
    come again; the API's resourceVersions are the store's revision numbers."""
    return shown is not None and shown.isdigit() and rv.isdigit() and int(rv) <= int(shown)


class Follower:
    """Follows one kind (`type_`, any name the API resolves) into `out`."""

    def __init__(self, srv: str, type_: str, ns: str | None, selector: str | None,
                 only: str | None, seen: dict[Key, str], revision: str | None,
                 out: queue.Queue[Change]) -> None:
        self.srv, self.type_, self.ns, self.selector, self.only = srv, type_, ns, selector, only
        self.seen = seen
        """What was shown, by key: its resourceVersion (this follower's own)."""
        self.revision = revision
        """Where the next watch starts; None: list first."""
        self.out = out

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"watch-{self.type_}", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        while True:
            try:
                if self.revision is None:
                    self.relist()
                self.watch()
            except APIError as exc:
                self.out.put(Change("error", message=f"error: {exc} (still watching)"))
                self.revision = None
                time.sleep(RETRY)
            except Exception as exc:  # (an answer it did not expect: say so, keep going)
                self.out.put(Change("error", message=f"error: {type(exc).__name__}: {exc} "
                                                     "(still watching)"))
                self.revision = None
                time.sleep(RETRY)

    def _wanted(self, obj: dict[str, Any]) -> bool:
        return self.only is None or (obj.get("metadata") or {}).get("name") == self.only

    def relist(self) -> None:
        """List, report what differs from what was shown, and watch from the list's revision."""
        items, revision = list_all(self.srv, self.type_, self.ns, self.selector)
        current = {key_of(o): o for o in items if self._wanted(o)}
        for k, obj in current.items():
            if self.seen.get(k) != rv_of(obj):
                self.seen[k] = rv_of(obj)
                self.out.put(Change("object", object=obj))
        for k in [k for k in self.seen if k not in current]:
            del self.seen[k]
            self.out.put(Change("deleted", key=k))
        self.revision = revision

    def watch(self) -> None:
        """Print each event until the watch ends; then (410, an error, the end) list again."""
        query = {"namespace": self.ns, "labelSelector": self.selector, "watch": "true",
                 "resourceVersion": self.revision, "allowWatchBookmarks": "true"}
        for event in stream(self.srv, f"/api/v1/resources/{self.type_}", query=query,
                            timeout=READ_TIMEOUT):
            if event is None:
                continue
            type_, obj = event.get("type"), event.get("object") or {}
            if type_ == "ERROR":
                if obj.get("code") != 410:  # (410: list again, nothing to tell)
                    self.out.put(Change("error", message=f"error: {obj.get('message')} "
                                                         "(still watching)"))
                    time.sleep(RETRY)
                break
            self.revision = rv_of(obj) or self.revision
            if type_ == "BOOKMARK" or not self._wanted(obj):
                continue
            k = key_of(obj)
            if type_ == "DELETED":
                if self.seen.pop(k, None) is not None:
                    self.out.put(Change("deleted", key=k))
            elif not _shown_already(self.seen.get(k), rv_of(obj)):
                self.seen[k] = rv_of(obj)
                self.out.put(Change("object", object=obj))
        self.revision = None


__all__ = ["Change", "Follower", "key_of", "rv_of"]
