"""The control loop: store -> compiler -> snapshots for the push stream, and status back.

It lists every resource once, then follows the store's watch from that revision, so no change
is missed and none is applied twice.  Changes are debounced on both edges: the first change
after a quiet period compiles at once (a lone `tulle apply` is not delayed), and changes that
keep arriving within `debounce` seconds are folded into one compilation at the end of the
burst.  Compilation is whole-mesh and pure; only proxies whose snapshot *content* changed get a
new version, so only they are pushed to.  It runs on a worker thread over a copy of the
resources taken on the loop (`compile_worker.py`, ADR 0133); its results are applied back on
the loop, one compilation after another, and a change taken meanwhile is compiled after it.

It also does what a controller does in Kubernetes: allocates Service virtual IPs, writes route
status conditions, and registers workloads that proxies announce.  Every write is
resourceVersion-checked, and a status whose conditions did not change is not rewritten
(`statuswriter`: routes report per parent, as Gateway API does); with two control planes on
one PostgreSQL store, both compile the same inputs to the same bytes, and a status write
that lost a race is simply retried on the next event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from tulle.controlplane import vips
from tulle.controlplane.ca.admission import Admitted
from tulle.controlplane.ca.spiffe import DEFAULT_TRUST_DOMAIN
from tulle.controlplane.compile_worker import CompileWorker
from tulle.controlplane.heap import FrozenHeap
from tulle.controlplane.preview import MeshView, resource_key
from tulle.controlplane.push.server import SnapshotCache
from tulle.controlplane.statuswriter import desired_status
from tulle.controlplane.store.errors import (
    AlreadyExistsError,
    BatchError,
    ConflictError,
    ExpiredError,
    NotFoundError,
)
from tulle.controlplane.store.protocol import BatchOp, Obj, ResourceStore
from tulle.proxyconfig.address import same_address, unmapped
from tulle.proxyconfig.stream import WorkloadInfo

log = logging.getLogger("tulle.controlplane")

MESH_GROUP = "mesh.tulle.dev/v1alpha1"

STATUS_BATCH = 500
"""Status writes (virtual IPs, conditions) per store transaction.  One transaction per object
cost ~3 ms each on SQLite: a bulk apply of 1,000 Services with a route each took 2,000 of them
in a row, and the Services reached the proxies without their virtual IPs for ~10 s (ADR
0109).  Bounded, so that one transaction never holds the store for long."""


def _same_inputs(old: Obj, new: Obj) -> bool:
    """Whether two versions of a resource differ only in what the compiler never reads: the
    resourceVersion and the status conditions, top-level or per route parent (which the
    compiler itself produces), and of a Workload's `status.proxy` everything but whether it
    is out (a proxy's reconnect is a store write, not a compilation; ADR 0040).  The writes of
    conditions then do not cost a whole-mesh compilation each."""

    def strip(obj: Obj) -> Obj:
        md = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
        status = {k: v for k, v in (obj.get("status") or {}).items()
                  if k not in ("conditions", "parents")}
        proxy = status.pop("proxy", None)  # a Workload's proxy: only "out" counts
        if isinstance(proxy, dict) and proxy.get("state") == "Disconnected":
            status["proxyGone"] = True
        return {**obj, "metadata": md, "status": status}

    return strip(old) == strip(new)


COMMIT_WAIT = 10.0
"""Seconds a compilation waits at most for the watch to hand on the rest of a transaction it
is inside (a bulk apply is read in pages of 500 changes, ADR 0121); past it, a warning and the
compilation goes on with what it has."""


LOOP_SLICE = 500
"""Items (snapshots freed, conditions decided) the loop takes between two of its turns while it
applies a compilation's results.  At 5,000 Services, freeing the 5,000 snapshots a change
replaces is ~40 ms of reference counting and deciding 10,000 statuses ~55-90 ms; in one go each
held every proxy's stream that long once the compilation itself had left the loop (ADR 0133).
A slice is a few milliseconds."""


async def _release(*garbage: list[Any]) -> None:
    """Drop the references in `garbage`, `LOOP_SLICE` at a time with a turn of the loop
    between: what dies then is freed a slice at a time."""
    for items in garbage:
        while items:
            del items[-LOOP_SLICE:]
            await asyncio.sleep(0)


class Reconciler:
    def __init__(self, store: ResourceStore, cache: SnapshotCache, *,
                 debounce: float = 0.1, heap: FrozenHeap | None = None) -> None:
        """`heap`: the collector policy around each compilation (`heap.py`, ADR 0130); None
        leaves the collector as the process has it."""
        self.store = store
        self.heap = heap
        self._compiler = CompileWorker(heap)
        """The compilations' worker thread, and the `PartCache` only it touches."""
        self.cache = cache
        self.debounce = debounce
        self.compiles = 0
        self.last_compile_ms = 0.0
        self.errors: dict[tuple[str, str], str] = {}
        self.ready = asyncio.Event()
        self._resources: dict[tuple[str, str, str], Obj] = {}
        self._dirty = asyncio.Event()
        self._compiling = False
        """From a compilation's start to the end of applying its results (it waits on the
        worker meanwhile, with `_dirty` already cleared)."""
        self._whole = asyncio.Event()
        """Set while `_resources` is the store at a revision between transactions (after the
        list, and each time the watch caught up with the head); cleared by every change taken
        after.  A compilation reads `_resources` only while it is set."""
        self._task: asyncio.Task[None] | None = None
        self.on_compiled: list[Callable[[], None]] = []

    def workload_labels(self, namespace: str, name: str) -> dict[str, str]:
        """The labels of Workload `namespace/name` as last seen (empty when unknown): which
        Deployment-like group a proxy belongs to, for `tulle tap deploy/NAME` (ADR 0056)."""
        obj = self._resources.get(("Workload", namespace, name))
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def settled(self) -> bool:
        """No compilation running nor due: the cache holds what the resources seen compile
        to (up to the debounce of a change not yet taken from the watch)."""
        return not self._compiling and not self._dirty.is_set()

    async def stop(self) -> None:
        """Stop following the store; a compilation running on the worker is waited for (its
        results are not applied), so none runs once this returns."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._compiler.close()

    async def _run(self) -> None:
        while True:
            try:
                items, revision = await self.store.list()
                self._resources = {self._key(o): o for o in items}
                self._whole.set()  # one read: the store at `revision`
                await self._compile()
                self.ready.set()
                # The watch and the compile loop run side by side; the first to end ends both,
                # with its error: a watch that expired (410: it fell behind the change log)
                # is listed again (ADR 0121: before, its end went unseen and nothing was
                # compiled again).
                watcher = asyncio.ensure_future(self._follow(revision))
                compiler = asyncio.ensure_future(self._compile_loop())
                try:
                    done, _ = await asyncio.wait({watcher, compiler},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # (raises what ended it)
                finally:
                    for task in (watcher, compiler):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
            except ExpiredError:
                log.info("watch expired; re-listing")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile loop failed; restarting in 1s")
                await asyncio.sleep(1)

    @staticmethod
    def _key(obj: Obj) -> tuple[str, str, str]:
        return resource_key(obj)

    async def _follow(self, revision: int) -> None:
        async for ev in self.store.watch(since_revision=revision,
                                         on_caught_up=lambda _: self._whole.set()):
            self._whole.clear()
            if ev.object.get("apiVersion") == "internal.tulle.dev/v1":
                continue  # the control plane's own records (CA, tokens): no compiler input
            key = self._key(ev.object)
            if ev.type == "DELETED":
                self._resources.pop(key, None)
            else:
                old = self._resources.get(key)
                self._resources[key] = ev.object
                if old is not None and _same_inputs(old, ev.object):
                    continue  # our own status-condition write coming back: nothing to compile
            self._dirty.set()
        raise ExpiredError("watch ended")

    async def _compile_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            await self._dirty.wait()
            quiet_for = loop.time() - last
            if quiet_for < self.debounce:
                # In a burst: let it settle, then compile once for all of it.
                await asyncio.sleep(self.debounce)
            self._dirty.clear()
            await self._compile()
            last = loop.time()

    # -- compilation -------------------------------------------------------------------------

    async def _whole_transactions(self) -> None:
        """Return once `_resources` holds whole transactions only (ADR 0121): the watch hands
        a transaction on in pages of 500 changes, and a compilation between two pages of a
        bulk apply pushed part of it (167 of 1,000 Services, ADR 0109), so a Service could
        reach the proxies without the policy applied with it.  Bounded by `COMMIT_WAIT`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMMIT_WAIT
        # (set, then cleared by a page taken before this task ran again: wait again)
        while not self._whole.is_set():
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._whole.wait(), left)
            except TimeoutError:
                log.warning("compiling with the store's changes read part-way: the watch did "
                            "not catch up with the store within %gs", COMMIT_WAIT)
                return

    async def _compile(self) -> None:
        self._compiling = True
        try:
            await self._compile_once()
        finally:
            self._compiling = False

    async def _compile_once(self) -> None:
        started = time.perf_counter()
        await self._allocate_vips()
        await self._whole_transactions()
        # (no await from here to the copy: the watch cannot take a change in between)
        seen = dict(self._resources)
        # On the worker (ADR 0133): the loop goes on meanwhile, and the watch with it; a
        # change it takes sets `_dirty`, so `_compile_loop` compiles again after this one.
        result = await self._compiler.compile(seen.values())
        # What the swap drops is freed by `_release`, a slice at a time: the snapshots it
        # replaces, and those it keeps the old ones of (same version).
        replaced = [self.cache.get(k) for k in self.cache.proxies()]
        self.cache.update(result.snapshots, keep=frozenset(result.errors))
        compiled = list(result.snapshots.values())
        result.snapshots.clear()
        self.errors = dict(result.errors)
        for key, err in result.errors.items():
            log.warning("workload %s/%s: cannot build its proxy config: %s", key[0], key[1], err)
        self.compiles += 1
        self.last_compile_ms = (time.perf_counter() - started) * 1000
        await self._write_conditions(result.conditions, seen)
        for cb in self.on_compiled:
            cb()
        await _release(replaced, compiled)

    def view(self) -> MeshView:
        """The resources as this reconciler holds them now, apart from it: what apply's checks
        compile on their worker thread while the loop goes on (`preview.py`, ADR 0128).
        Called on the event loop (a dict copy: 0.2 ms at 15,000 resources)."""
        return MeshView(dict(self._resources))

    async def _write_conditions(self, conditions: dict[tuple[str, str, str],
                                                        list[dict[str, Any]]],
                                seen: dict[tuple[str, str, str], Obj]) -> None:
        """Write the conditions compiled from `seen` onto each object as it is now, unless it
        changed since in what the compiler reads (ADR 0133: the watch goes on during a
        compilation): that version's conditions are its own compilation's, which `_dirty`
        calls for.  Its status (a proxy's presence, conditions written back) may have moved."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        changed: list[Obj] = []
        for i, key in enumerate(list(conditions)):
            if i % LOOP_SLICE == LOOP_SLICE - 1:
                await asyncio.sleep(0)  # (each object is read as it is at its own turn)
            conds = conditions.pop(key)  # (freed as it goes, not all at the end)
            obj, compiled = self._resources.get(key), seen.get(key)
            if obj is None or compiled is None:
                continue
            if obj is not compiled and not _same_inputs(compiled, obj):
                continue
            status = desired_status(obj, conds, now)
            if status == (obj.get("status") or {}):
                continue
            changed.append({**obj, "status": status})
        await self._write_statuses(changed)

    async def _allocate_vips(self) -> None:
        """Write the virtual IPs `vips.statuses` says each Service should hold (decided on the
        worker over the Services seen now, ADR 0133; a Service changed meanwhile refuses its
        write, and its change calls for another compilation, which decides again)."""
        services = [o for k, o in self._resources.items() if k[0] == "Service"]
        wanted = await self._compiler.call(vips.statuses, services)
        await self._write_statuses([{**obj, "status": status} for obj, status in wanted])

    async def _write_statuses(self, objs: list[Obj]) -> None:
        """Store the statuses of `objs`, `STATUS_BATCH` to a transaction, each checked against
        the resourceVersion it carries.  One the store refuses (another replica or an edit
        moved it on, or it was deleted) is left out and the rest written again: its newer
        version arrives by watch and is compiled, and its status decided, again."""
        for i in range(0, len(objs), STATUS_BATCH):
            chunk = objs[i:i + STATUS_BATCH]
            while chunk:
                try:
                    written = await self.store.batch([BatchOp("update_status", o)
                                                      for o in chunk])
                except BatchError as exc:
                    if not isinstance(exc.error, ConflictError | NotFoundError):
                        raise exc.error from exc
                    del chunk[exc.index]
                    continue
                for obj in written:
                    self._resources[self._key(obj)] = obj
                break

    # -- registration ------------------------------------------------------------------------

    async def register(self, w: WorkloadInfo, peer_ip: str,
                       admitted: Admitted | None = None) -> None:
        """A proxy announced its workload.

        Admitted (ADR 0028): the Workload's address (and additional addresses, ADR 0088),
        service account and labels are never changed by a hello.  An existing Workload keeps
        them (a hello that says otherwise is refused with the field, so nothing is ignored
        silently); a missing one is made with the service account and labels of the token that
        admitted the proxy and the addresses it announced (or its peer address).  The proxy's
        own facts (ports, zone, outbound port) are refreshed.  Without admission (unit tests
        of the stream) the old rule applies: create, or refresh every announced field."""
        announced: dict[str, Any] = {"address": w.address or unmapped(peer_ip),
                                     "serviceAccount": w.service_account}
        if w.additional_addresses:
            announced["additionalAddresses"] = list(w.additional_addresses)
        if admitted is not None:
            announced["serviceAccount"] = admitted.identity.service_account
        if w.ports:
            announced["ports"] = w.ports
        if w.zone:
            announced["zone"] = w.zone
        if w.outbound_port:
            announced["outboundPort"] = w.outbound_port
        if w.dns_port:
            announced["dnsPort"] = w.dns_port
        if w.admin_port is not None:
            announced["adminPort"] = w.admin_port
        from tulle.api.registry import parse  # what proxies send is validated like user input

        for _ in range(5):
            try:
                current: Obj | None = await self.store.get("Workload", w.namespace, w.name)
            except NotFoundError:
                current = None
            md = dict((current or {}).get("metadata") or {"name": w.name,
                                                           "namespace": w.namespace})
            labels = {**(md.get("labels") or {}), **w.labels}
            if admitted is not None:
                _check_owned_fields(w, admitted, current)
                labels = dict(md.get("labels") or {}) if current else dict(admitted.labels)
                if current is not None:
                    old = current.get("spec") or {}
                    announced = {**announced, "address": old.get("address"),
                                 "serviceAccount": old.get("serviceAccount", "default")}
                    announced.pop("additionalAddresses", None)  # the stored value stays
            spec = {**((current or {}).get("spec") or {}), **announced}
            obj = workload_object(md, labels, spec, current)
            try:
                parse(obj)
            except ValueError as exc:
                raise ValueError(f"workload {w.namespace}/{w.name} is invalid: {exc}") from exc
            if current is not None and current.get("spec") == spec and (
                    current.get("metadata") or {}).get("labels", {}) == labels:
                return
            try:
                if current is None:
                    await self.store.create(obj)
                else:
                    await self.store.update(obj)
                return
            except (AlreadyExistsError, ConflictError):
                continue

    def trust_domain_aliases(self) -> tuple[str, ...]:
        """`Mesh.spec.trustDomainAliases` (ADR 0087): trust domains still this mesh's."""
        for (kind, _, _), obj in sorted(self._resources.items()):
            if kind == "Mesh":
                aliases = (obj.get("spec") or {}).get("trustDomainAliases") or ()
                return tuple(a for a in aliases if isinstance(a, str) and a)
        return ()

    def trust_domain(self) -> str:
        """`Mesh.spec.trustDomain` of the mesh (default `cluster.local`)."""
        for (kind, _, _), obj in sorted(self._resources.items()):
            if kind == "Mesh":
                td = (obj.get("spec") or {}).get("trustDomain")
                if isinstance(td, str) and td:
                    return td
        return DEFAULT_TRUST_DOMAIN


def workload_object(metadata: Obj, labels: dict[str, str], spec: dict[str, Any],
                    current: Obj | None = None) -> Obj:
    """The Workload a proxy's hello registers (`current`, if stored, with these metadata,
    labels and spec), validated like user input before it is stored.  Also what issuing a
    bootstrap token checks up front (api/bootstrap_tokens.py): the Workload its first hello
    would make, so that a token the stream could only refuse is never issued."""
    return {**(current or {}), "apiVersion": MESH_GROUP, "kind": "Workload",
            "metadata": {**metadata, "labels": labels}, "spec": spec}


def _same_ips(a: list[Any], b: list[Any]) -> bool:
    """Two address lists name the same addresses in order, by value (`FD00::AB` is
    `fd00:0::ab`)."""
    return len(a) == len(b) and all(same_address(str(x), str(y)) for x, y in zip(a, b, strict=True))


def _check_owned_fields(w: WorkloadInfo, admitted: Admitted, current: Obj | None) -> None:
    """A hello may not change what the operator (or the token) decided: refuse, naming the
    field, when it announces a different address, service account or labels."""
    where = f"workload {w.namespace}/{w.name}"
    if w.service_account not in ("", "default", admitted.identity.service_account):
        raise ValueError(f"{where}: serviceAccount {w.service_account!r} is not the admitted "
                         f"identity's ({admitted.identity.service_account!r})")
    if current is None:
        if w.labels and w.labels != admitted.labels:
            raise ValueError(f"{where}: metadata.labels: a hello cannot set labels; issue the "
                             f"token with them (tulle token issue --label)")
        return
    spec = current.get("spec") or {}
    if w.address and not _same_ips([w.address], [spec.get("address")]):
        raise ValueError(f"{where}: spec.address: a hello cannot change it (stored "
                         f"{spec.get('address')!r}); change it with tulle apply")
    if w.additional_addresses and not _same_ips(w.additional_addresses,
                                                spec.get("additionalAddresses") or []):
        raise ValueError(f"{where}: spec.additionalAddresses: a hello cannot change them "
                         f"(stored {spec.get('additionalAddresses') or []!r}); change them with "
                         "tulle apply")
    stored = (current.get("metadata") or {}).get("labels") or {}
    if w.labels and any(stored.get(k) != v for k, v in w.labels.items()):
        raise ValueError(f"{where}: metadata.labels: a hello cannot change them; change them "
                         f"with tulle apply")
