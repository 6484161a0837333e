"""Apply's version-skew warnings: a config feature an apply puts in use at a connected proxy
whose (older) build lacks it, which that proxy will therefore not run.

Why: a proxy announces its features, and the control plane leaves out of its snapshots what
it lacks (`features.withheld_from`) or, for the few features whose absence must not be
papered over (`network-authorization`), sends them and lets the proxy refuse the snapshot.
ADR 0122 made both visible afterwards (`withheldInUse`, `tulle check`'s FeatureWithheld); the
apply that caused it said nothing, so an operator applying a sticky route or a trust-domain
check learnt only later, if they looked, that some sidecar runs without it (ADR 0125).

How, after the documents were compiled for apply's other warnings (`warnings.py`):

1. the proxies that matter are the connected ones lacking a feature that is withheld from
   them or that they would refuse (`older_proxies`); with none, nothing more is done, so a
   mesh without version skew pays nothing;
2. their snapshots are rendered from the current state with the applied documents, as a
   compilation renders them but for those proxies only (`MeshView.snapshots`); a
   node's workloads are merged as its session merges them (`push/node.py`).  When none of
   them uses anything its proxy lacks, that is all (one render);
3. else they are rendered again with the documents that change anything left out, and per
   proxy whose snapshot changes, each feature it lacks that its config uses with the apply
   and did not use without it is what *this* apply adds there.  A feature already in use
   (a sticky route applied last week) is not this apply's to warn about, even when the
   apply adds to it (a second sticky route, a new Service's virtual host for
   `addressed-service`): that proxy already shows it as withheld and in use (`get
   proxies`, `tulle check`), and a warning on every Service applied during an upgrade
   would teach operators to ignore the line;
4. which documents: the changing ones, told apart by leaving groups of them out (first by
   kind, then in halves) and splitting the group that takes a use away (`MAX_TESTS` renders
   and `SPLIT_SECONDS` at most; past either, each document of an undecided group is named);
5. one warning per document and feature, naming at most `MAX_NAMED` proxies and counting the
   rest, saying what that proxy does instead (the item left out, or the snapshot refused).

What a stored object puts in use at older proxies (`describe`, ADR 0131) is the same
question asked of the state as it is: those proxies' snapshots rendered with the object and
with it deleted (`stored_skew`); a feature whose uses there fall without it is one the
object puts in use, whether it was applied before or after the proxy connected.  A Service
whose attached route uses one is told as well: without it no rule of the route is sent, and
what those proxies leave out is that Service's traffic's behaviour.

A proxy's hello carries no build version: its features are all that is known of its build,
so the warning names the workload and the feature it lacks (`tulle get proxies` lists them).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from tulle.controlplane.push.cache import ProxyKey, ProxyStatus
from tulle.controlplane.push.node import NodeError, NodeSnapshots, workload_name
from tulle.controlplane.store.protocol import Obj
from tulle.proxyconfig.features import Feature
from tulle.proxyconfig.features_in_use import uses_of
from tulle.proxyconfig.model import ProxyConfig

Render = Callable[[list[Obj], Collection[ProxyKey]], Mapping[ProxyKey, ProxyConfig]]
"""The snapshots the given proxies would get with these objects applied over the current state
(`MeshView.snapshots`)."""

SkewCheck = Callable[[Mapping[int, Obj], Collection[int]], dict[int, list[str]]]
"""Apply's call: (the documents by index, those that change anything) -> warnings by index."""

Snapshots = Callable[[Collection[ProxyKey]], Mapping[ProxyKey, ProxyConfig]]
"""The snapshots the given proxies get from one fixed state (`MeshView.snapshots([], keys)`)."""

MAX_NAMED = 5
"""Proxies named in one warning; the rest are counted."""
MAX_TESTS = 24
"""Renders spent telling which of the changing documents adds a use (one per kind among
them, then two per halving: one culprit among 1,000 documents of its kind takes 20); past
it, every document of a group not yet told apart gets the warning."""
SPLIT_SECONDS = 5.0
"""Seconds spent telling them apart, whichever of the two bounds comes first (ADR 0128): a
render costs about one compilation of the mesh, ~0.9 s at 5,000 Services, so `MAX_TESTS`
alone let one apply of 1,000 routes take 18-20 s there (8.6 s with this bound).  Past it, as
past `MAX_TESTS`, every document of a group not yet told apart gets the warning, saying so:
which documents carry the line may then depend on the machine's speed; whether the apply is
warned (and so refused with `strict`) never does."""


@dataclass(frozen=True, slots=True)
class OlderProxy:
    """A connected proxy (one stream) whose build lacks features this control plane has."""

    keys: tuple[ProxyKey, ...]
    """The workloads it fronts, its own first (a node agent fronts several)."""
    lacking: tuple[Feature, ...]
    """What it lacks that a config can use: withheld from it, or refused by it."""

    @property
    def name(self) -> str:
        own = workload_name(self.keys[0])
        return own if len(self.keys) == 1 else f"{own} (node of {len(self.keys)} workloads)"


def older_proxies(statuses: Iterable[ProxyStatus]) -> list[OlderProxy]:
    """The connected proxies that lack a feature a config can use, one per stream (a node's
    workloads share one status each and one stream)."""
    out: dict[tuple[ProxyKey, ...], OlderProxy] = {}
    for st in statuses:
        if not st.connected or not (st.withheld or st.refused):
            continue
        keys = tuple((ns, name) for ns, _, name in (n.partition("/") for n in st.node)) \
            or ((st.namespace, st.name),)
        out.setdefault(keys, OlderProxy(keys, st.withheld + st.refused))
    return list(out.values())


def _effect(f: Feature) -> str:
    """What a proxy lacking `f` does with a config that uses it (`features.py`)."""
    if f.refused_at:
        return ("the whole new config is refused (a NACK) and the last one kept running: no "
                "later change reaches it until it is upgraded or this use is removed")
    item = f.drops.rsplit(".", 1)[-1] if f.drops else ""
    if item == "rules[]":
        return ("the route rule using it is left out (its requests take the next matching "
                "rule, else 404)")
    if item == "filters[]":
        return "the filter entry is left out (the rule serves without it)"
    if item:
        what = {"matches[]": "route match", "destinations[]": "destination"}.get(item, item)
        return f"the {what} using it is left out"
    return "its fields are left out (the proxy runs as its build did without them)"


def _line(f: Feature, proxies: Sequence[OlderProxy]) -> str:
    names = sorted(p.name for p in proxies)
    shown = ", ".join(names[:MAX_NAMED])
    if len(names) > MAX_NAMED:
        shown += f" and {len(names) - MAX_NAMED} more"
    count = f"{len(names)} connected prox{'y' if len(names) == 1 else 'ies'}"
    return f"{f.name}: not run by {count} whose build lacks it ({shown}): there, {_effect(f)}"


class _Uses:
    """Each feature's uses per part of a snapshot, worked out once per part object: the
    compiler shares a mesh's outbound tables and clusters between snapshots by reference, so a
    thousand proxies cost their own parts and one pass over the shared ones."""

    def __init__(self, features: Iterable[Feature]) -> None:
        self._roots = {f.name: {p.split(".", 1)[0].removesuffix("[]") for p in (
            *f.paths, *((f.drops,) if f.drops else ()), *f.refused_at)} for f in features}
        self._memo: dict[tuple[int, str], tuple[Any, Counter[str]]] = {}

    def of(self, cfg: ProxyConfig, features: Iterable[Feature]) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for f in features:
            total: Counter[str] = Counter()
            for field in self._roots[f.name]:
                value = getattr(cfg, field, None)
                for part in (value if isinstance(value, list) else [value]):
                    if part is not None:
                        total.update(self._part(field, part, isinstance(value, list), f))
            out[f.name] = total
        return out

    def _part(self, field: str, part: Any, listed: bool, f: Feature) -> Counter[str]:
        key = (id(part), f.name)
        hit = self._memo.get(key)
        if hit is None or hit[0] is not part:
            plain = msgspec.to_builtins(part)
            hit = (part, uses_of({field: [plain] if listed else plain}, f))
            self._memo[key] = hit  # (holds `part`: its id is not reused meanwhile)
        return hit[1]


Pair = tuple[OlderProxy, Feature]


class _Skew:
    """One apply's check: the renders and what each found."""

    def __init__(self, objs: Mapping[int, Obj], proxies: Sequence[OlderProxy],
                 render: Render) -> None:
        self.objs, self.render = objs, render
        self.uses = _Uses({f for p in proxies for f in p.lacking})

    def snapshots(self, without: Collection[int],
                  proxies: Sequence[OlderProxy]) -> dict[OlderProxy, ProxyConfig | None]:
        """Each proxy's snapshot with the documents but `without` applied (a node's merged)."""
        cfgs = self.render([o for i, o in self.objs.items() if i not in without],
                           {k for p in proxies for k in p.keys})
        out: dict[OlderProxy, ProxyConfig | None] = {}
        for p in proxies:
            try:
                out[p] = NodeSnapshots(p.keys).current(cfgs.get)
            except NodeError:
                out[p] = None  # (the session logs it; nothing such a node would be sent)
        return out

    def uses_without(self, without: Collection[int],
                     pairs: Collection[Pair]) -> dict[Pair, Counter[str]]:
        proxies = list({p: None for p, _ in pairs})
        cfgs = self.snapshots(without, proxies)
        out: dict[Pair, Counter[str]] = {}
        for p in proxies:
            cfg = cfgs[p]
            found = self.uses.of(cfg, p.lacking) if cfg is not None else {}
            for f in p.lacking:
                out[(p, f)] = found.get(f.name, Counter())
        return out


def skew_warnings(objs: Mapping[int, Obj], changed: Collection[int],
                  proxies: Sequence[OlderProxy], render: Render, *,
                  clock: Callable[[], float] = time.monotonic) -> dict[int, list[str]]:
    """Per document index (of `objs`, the apply's documents), a line for each feature it puts
    in use at proxies of `proxies` that lack it; only documents of `changed` (those that
    change anything) are looked at.  `clock`: seconds, for `SPLIT_SECONDS`."""
    if not proxies or not changed:
        return {}
    check = _Skew(objs, proxies, render)
    after = check.snapshots((), proxies)
    using: dict[OlderProxy, tuple[ProxyConfig, dict[str, Counter[str]]]] = {}
    for p, cfg in after.items():
        now = check.uses.of(cfg, p.lacking) if cfg is not None else {}
        if cfg is not None and any(now.values()):
            using[p] = (cfg, now)
    if not using:
        return {}  # nothing the apply leads to uses what they lack: no second render
    before = check.snapshots(changed, list(using))
    added: dict[Pair, Counter[str]] = {}
    """(proxy, feature) newly in use -> its uses with the apply."""
    for p, (cfg, now) in using.items():
        old = before[p]
        if old is not None and old.version == cfg.version:
            continue  # the apply does not reach it
        was = check.uses.of(old, p.lacking) if old is not None else {}
        for f in p.lacking:
            if now[f.name] and not was.get(f.name):  # newly in use: this apply's doing
                added[(p, f)] = now[f.name]
    if not added:
        return {}
    blamed, untold = _attribute(sorted(changed), added, check, objs,
                                clock() + SPLIT_SECONDS, clock)
    out: dict[int, list[str]] = {}
    for i in sorted(blamed):
        by_feature: dict[str, tuple[Feature, list[OlderProxy]]] = {}
        for p, f in blamed[i]:
            by_feature.setdefault(f.name, (f, []))[1].append(p)
        out[i] = []
        for _, (f, ps) in sorted(by_feature.items()):
            groups = [untold.get((i, (p, f)), 0) for p in ps]
            out[i].append(_line(f, ps) + (_untold(max(groups)) if all(groups) else ""))
    return out


def _untold(group: int) -> str:
    """What a line adds when its document was warned because a bound was reached before its
    group of `group` documents was told apart."""
    return (f" (one or more of {group} documents of this apply, this one among them, put it "
            "in use: the check's bound was reached before telling which)")


def skew_check(proxies: Sequence[OlderProxy], render: Render) -> SkewCheck:
    """Apply's check for `proxies` (read from the push server's statuses on the event loop,
    `older_proxies`) with `render` (`MeshView.snapshots` of the same moment): safe to run on
    apply's worker thread (`apply_checks.py`)."""
    def check(objs: Mapping[int, Obj], changed: Collection[int]) -> dict[int, list[str]]:
        return skew_warnings(objs, changed, proxies, render)
    return check


def stored_skew(proxies: Sequence[OlderProxy], with_it: Snapshots,
                without_it: Snapshots) -> list[str]:
    """A line for each feature a stored object puts in use at proxies of `proxies` that lack
    it: its uses in their snapshots from the state with the object (`with_it`) are more than
    from the state with it deleted (`without_it`).  Counted, not compared path by path: a
    deleted route moves the index of those after it.  The second render is spent only when a
    proxy's snapshot uses something it lacks."""
    if not proxies:
        return []
    uses = _Uses({f for p in proxies for f in p.lacking})

    def merged(render: Snapshots, ps: Sequence[OlderProxy]
               ) -> dict[OlderProxy, ProxyConfig | None]:
        cfgs = render({k for p in ps for k in p.keys})
        out: dict[OlderProxy, ProxyConfig | None] = {}
        for p in ps:
            try:
                out[p] = NodeSnapshots(p.keys).current(cfgs.get)
            except NodeError:
                out[p] = None
        return out

    using: dict[OlderProxy, dict[str, Counter[str]]] = {}
    for p, cfg in merged(with_it, proxies).items():
        now = uses.of(cfg, p.lacking) if cfg is not None else {}
        if any(now.values()):
            using[p] = now
    if not using:
        return []
    blamed: dict[str, tuple[Feature, list[OlderProxy]]] = {}
    for p, old in merged(without_it, list(using)).items():
        was = uses.of(old, p.lacking) if old is not None else {}
        for f in p.lacking:
            if using[p][f.name].total() > was.get(f.name, Counter()).total():
                blamed.setdefault(f.name, (f, []))[1].append(p)
    return [_line(f, ps) for _, (f, ps) in sorted(blamed.items())]


def _attribute(changed: list[int], added: Mapping[Pair, Counter[str]], check: _Skew,
               objs: Mapping[int, Obj], deadline: float,
               clock: Callable[[], float]) -> tuple[dict[int, set[Pair]],
                                                    dict[tuple[int, Pair], int]]:
    """Which changing documents put each feature in use: a group whose leaving out takes some
    use of it away (counted per item, `uses_of`: two sticky routes in one apply are each
    found) is split, and each part left out in turn, down to single documents.  A group of several
    kinds splits by kind (a bulk apply of a thousand Services and one route finds the route
    in one step), a group of one kind in halves.  A use that a group takes away and none of
    its parts does (two documents each enough alone) is named on every document of the
    group, as is each group still undecided when `MAX_TESTS` renders are spent or the
    `deadline` (of `clock`) has passed (checked before each render: one render past it at
    most).  Also, per (document, pair) warned because a bound was reached, the size of its
    undecided group."""
    blamed: dict[int, set[Pair]] = {}
    untold: dict[tuple[int, Pair], int] = {}

    def undecided(group: list[int], pairs: set[Pair]) -> None:
        for i in group:
            blamed.setdefault(i, set()).update(pairs)
            if len(group) > 1:
                untold.update({(i, pf): len(group) for pf in pairs})

    tests = MAX_TESTS
    queue: deque[tuple[list[int], set[Pair]]] = deque([(changed, set(added))])
    while queue:
        group, pairs = queue.popleft()
        parts = _split(group, objs)
        if len(group) == 1 or tests < len(parts):
            undecided(group, pairs)
            continue
        unexplained = set(pairs)
        for part in parts:
            if clock() >= deadline:  # undecided, as past MAX_TESTS (its parts add nothing)
                unexplained = set()
                undecided(group, pairs)
                break
            tests -= 1
            without = check.uses_without(part, pairs)
            lost = {pf for pf in pairs if added[pf] - without[pf]}
            unexplained -= lost
            if lost:
                queue.append((part, lost))
        for i in group if unexplained else ():
            blamed.setdefault(i, set()).update(unexplained)
    return blamed, untold


def _split(group: list[int], objs: Mapping[int, Obj]) -> list[list[int]]:
    by_kind: dict[str, list[int]] = {}
    for i in group:
        by_kind.setdefault(str(objs[i].get("kind")), []).append(i)
    if len(by_kind) > 1:
        return list(by_kind.values())
    mid = len(group) // 2
    return [group[:mid], group[mid:]]


__all__ = ["MAX_NAMED", "MAX_TESTS", "SPLIT_SECONDS", "OlderProxy", "Render", "SkewCheck",
           "older_proxies", "skew_check", "skew_warnings"]
