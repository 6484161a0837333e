"""Keeps one replica's CA in step with the store, and moves a rotation from stage to stage.

Why: the CA record (`persist.py`) is the one truth every replica reads; a rotation stage is a
write to it with its resourceVersion (two operators, or two replicas, cannot both advance:
the second gets a conflict), and every replica follows the record with a watch, so a stage
taken through one replica's API reaches the proxies of all of them.  On each new state the
keeper hands it to the stream's admission (who signs, whose certificates are admitted, which
bundle goes out) and has the stream tell its proxies (`PushServer.trust_changed`); `on_change`
hooks get it too (the stream's own TLS server certificate, when it has one, must follow the
new root: ADR 0035).

Each replica knows only the proxies connected to it, so while a rotation is in progress it
publishes what they hold (one `InternalCARotationProgress` record per replica, written when it
changes and at least every `HEARTBEAT` seconds), and a stage is checked against its own live
view plus every other replica's record younger than `STALE` (a dead replica's proxies
reconnect elsewhere; its record then stops counting).

A CA from the operator's files (`--ca-cert`, `--ca-key`) is not in the store and is not
rotated here: the operator replaces the files (refused with that reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable

from tulle.controlplane.ca.authority import CAError, CertificateAuthority
from tulle.controlplane.ca.persist import CA_KIND, CA_NAME, INTERNAL_GROUP
from tulle.controlplane.ca.rotation import (
    IDLE,
    CAState,
    Progress,
    ProxyView,
    RotationError,
    from_spec,
    progress,
    to_spec,
)
from tulle.controlplane.store.errors import (
    AlreadyExistsError,
    ConflictError,
    ExpiredError,
    NotFoundError,
)
from tulle.controlplane.store.protocol import Obj, ResourceStore

log = logging.getLogger("tulle.controlplane.ca")

StateHook = Callable[[CAState], None]
PROGRESS_KIND = "InternalCARotationProgress"
PUBLISH_INTERVAL = 0.25
"""How often a replica looks whether its proxies' progress changed (mid-rotation only)."""
HEARTBEAT = 5.0
STALE = 20.0
"""A replica's progress record older than this is ignored (wall-clock seconds)."""


class CAKeeper:
    def __init__(self, store: ResourceStore, *, from_files: bool = False,
                 instance: str = "cp") -> None:
        self.store = store
        self.from_files = from_files
        self.instance = instance
        self.local: Callable[[], list[ProxyView]] = list
        """The proxies connected to this replica (set by the control plane)."""
        self._published: tuple[list[ProxyView], float] | None = None
        self._progress_rv = ""
        self.state: CAState | None = None
        self.revision = 0
        """The resourceVersion of the record `state` came from."""
        self.on_change: list[StateHook] = []
        self._task: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None

    async def load(self, ca: CertificateAuthority) -> CAState:
        """The state in force at start: the stored record's, or `ca` alone (files)."""
        if self.from_files:
            self.state = CAState.single(ca)
            return self.state
        obj = await self.store.get(CA_KIND, None, CA_NAME)
        self._take(obj)
        assert self.state is not None
        return self.state

    def _take(self, obj: Obj) -> bool:
        """Adopt the record `obj` if it is newer; True when the state changed."""
        rv = int((obj.get("metadata") or {}).get("resourceVersion") or 0)
        if rv <= self.revision and self.state is not None:
            return False
        try:
            state = from_spec(obj.get("spec") or {})
        except (CAError, ValueError) as exc:
            log.error("the stored CA record cannot be used, keeping the CA in force: %s", exc)
            return False
        old = self.state
        self.state, self.revision = state, rv
        if old is not None and old.stage != state.stage:
            log.info("CA rotation: stage %s -> %s", old.stage or "idle", state.stage or "idle")
        for hook in self.on_change:
            hook(state)
        return True

    # -- following the store -------------------------------------------------------------------

    def start(self) -> None:
        if not self.from_files and self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._follow())
            self._publisher = loop.create_task(self._publish_loop())

    async def stop(self) -> None:
        for task in (self._task, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _follow(self) -> None:
        """Adopt every new version of the record: list, then watch from the revision the
        list reflects (list again when the watch expires or fails).

        Not from the record's own resourceVersion: a CA record is written once and then
        rarely, so in a mesh with more writes since than the change log keeps (10,000; every
        status write counts), a watch from its version expired at once, and the keeper
        re-read it every second with a warning each time, for ever (ADR 0102)."""
        since: int | None = None
        while True:
            try:
                if since is None:
                    items, since = await self.store.list(CA_KIND)
                    for obj in items:
                        if (obj.get("metadata") or {}).get("name") == CA_NAME:
                            self._take(obj)
                async for ev in self.store.watch(CA_KIND, None, since):
                    since = ev.revision
                    if ev.type != "DELETED":
                        self._take(ev.object)
                return  # the store closed
            except asyncio.CancelledError:
                raise
            except ExpiredError:
                log.info("CA record watch fell behind the change log; re-listing")
                since = None
            except Exception as exc:
                log.warning("CA record watch failed (%s); re-reading", exc)
                since = None
                await asyncio.sleep(1.0)

    # -- progress across replicas ---------------------------------------------------------------

    async def views(self) -> list[ProxyView]:
        """This replica's connected proxies, then those other replicas published recently."""
        own = self.local()
        if self.from_files:
            return own
        seen = {v.name for v in own}
        out = list(own)
        items, _ = await self.store.list(PROGRESS_KIND)
        now = time.time()  # noqa: TID251 - compared with other replicas' wall clocks
        for obj in items:
            spec = obj.get("spec") or {}
            if (obj.get("metadata") or {}).get("name") == self.instance or \
                    now - float(spec.get("updatedAt") or 0) > STALE:
                continue
            for p in spec.get("proxies") or []:
                if isinstance(p, dict) and p.get("name") not in seen:
                    seen.add(str(p.get("name")))
                    out.append(ProxyView(str(p.get("name")), bool(p.get("takesUpdates")),
                                         str(p.get("bundle") or ""),
                                         str(p.get("issuer") or "")))
        return out

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            try:
                await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not publish this replica's CA rotation progress: %s", exc)

    async def publish(self) -> None:
        """Write this replica's progress record if it changed (or is due), mid-rotation; drop
        it once the rotation is over."""
        state = self.state
        if state is None:
            return
        now = time.time()  # noqa: TID251 - read by other replicas
        if state.stage == IDLE:
            if self._published is not None:  # the rotation just ended: tidy up
                self._published = None
                self._progress_rv = ""
                items, _ = await self.store.list(PROGRESS_KIND)
                for rec in items:
                    name = str((rec.get("metadata") or {}).get("name"))
                    updated = float((rec.get("spec") or {}).get("updatedAt") or 0)
                    if name == self.instance or now - updated > STALE:  # ours, or a dead one's
                        with contextlib.suppress(NotFoundError, ConflictError):
                            await self.store.delete(PROGRESS_KIND, None, name)
            return
        views = sorted(self.local(), key=lambda v: v.name)
        if self._published is not None and self._published[0] == views and \
                now - self._published[1] < HEARTBEAT:
            return
        spec = {"updatedAt": now, "proxies": [
            {"name": v.name, "takesUpdates": v.takes_updates, "bundle": v.bundle_id,
             "issuer": v.cert_issuer} for v in views]}
        obj: Obj = {"apiVersion": INTERNAL_GROUP, "kind": PROGRESS_KIND,
                    "metadata": {"name": self.instance}, "spec": spec}
        try:
            if self._progress_rv:
                obj["metadata"]["resourceVersion"] = self._progress_rv
                stored = await self.store.update(obj)
            else:
                stored = await self.store.create(obj)
        except (AlreadyExistsError, ConflictError, NotFoundError):
            # A record of a previous run of this instance name: take it over.
            with contextlib.suppress(NotFoundError):
                cur = await self.store.get(PROGRESS_KIND, None, self.instance)
                obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
                stored = await self.store.update(obj)
                self._progress_rv = str(stored["metadata"]["resourceVersion"])
                self._published = (views, now)
            return
        self._progress_rv = str(stored["metadata"]["resourceVersion"])
        self._published = (views, now)

    # -- stages --------------------------------------------------------------------------------

    def progress(self, proxies: Iterable[ProxyView]) -> Progress:
        assert self.state is not None
        return progress(self.state, proxies)

    async def begin(self, new: CertificateAuthority | None) -> CAState:
        """Start a rotation to `new` (made here when None): stage add-root."""
        self._check_stored()
        state = await self._fresh()
        if new is None:
            new = CertificateAuthority.generate(_trust_domain_of(state.signing))
        return await self._write(state.start(new, dt.datetime.now(dt.UTC)))

    async def advance(self, proxies: Iterable[ProxyView], *, force: bool = False) -> CAState:
        """The next stage, once every connected proxy has moved (or `force`)."""
        self._check_stored()
        state = await self._fresh()
        if state.stage == IDLE:
            raise RotationError("no rotation in progress: start one with `tulle ca rotate`")
        done = progress(state, proxies)
        if done.pending and not force:
            names = ", ".join(list(done.pending)[:10])
            more = f" and {len(done.pending) - 10} more" if len(done.pending) > 10 else ""
            raise RotationError(f"stage {state.stage} is waiting for {done.waiting_for}: "
                                f"{names}{more} not moved yet")
        return await self._write(state.advance())

    def _check_stored(self) -> None:
        if self.from_files:
            raise RotationError("this control plane's CA comes from --ca-cert/--ca-key files: "
                                "it is not rotated by `tulle ca rotate` (replace the files)")

    async def _fresh(self) -> CAState:
        """The stored state (another replica may have moved it)."""
        self._take(await self.store.get(CA_KIND, None, CA_NAME))
        assert self.state is not None
        return self.state

    async def _write(self, state: CAState) -> CAState:
        try:
            obj = await self.store.get(CA_KIND, None, CA_NAME)
        except NotFoundError:
            raise RotationError("the CA record is missing from the store") from None
        meta = dict(obj.get("metadata") or {})
        meta["resourceVersion"] = str(self.revision)
        try:
            stored = await self.store.update({**obj, "metadata": meta, "spec": to_spec(state)})
        except ConflictError:
            raise RotationError("the CA changed meanwhile (another operator or replica): "
                                "look at `tulle ca rotate --status` and try again") from None
        self._take(stored)
        return state


def _trust_domain_of(ca: CertificateAuthority) -> str:
    """The trust domain a generated root names (`tulle root TD`), for the new root."""
    from cryptography.x509.oid import NameOID

    cns = ca.root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    return cn.removeprefix("tulle root ") or "cluster.local"
