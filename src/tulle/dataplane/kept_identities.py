"""The agent's side of the identities on disk (ADR 0123): which certificates in force came from
disk, reading them at start, writing each new one, removing at start those of workloads the
proxy no longer fronts (ADR 0126), and the lines an operator reads about them.

Why apart from `agent.py`: the agent holds the certificates and speaks the stream; what is
kept on disk, and what is said when a kept one cannot be served, are one concern of their own
(`identity_cache.py` holds the file rules).  Keys are `namespace/name`; the proxy's own
workload is `own`, its identity section `workload`, a node's further ones
`workload:<namespace>/<name>`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from tulle.dataplane.cache_serving import expected_principals
from tulle.dataplane.identity import HeldIdentity
from tulle.dataplane.identity_cache import MAX_INDEX, IdentityCache, IdentityRefused
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.reserved import workload_identity
from tulle.proxyconfig.validate import ConfigError

log = logging.getLogger("tulle.agent")

Refused = Mapping[str, IdentityRefused | None]
"""Fronted workloads whose kept identity was not taken, with why (None: none is kept)."""

MAX_REMOVALS = 64
"""Identity files removed at one start (a few system calls each); more stay listed in the
index for the next start.  A node proves about 20 workloads in one hello (ADR 0032), so one
start takes them all."""


class KeptIdentities:
    def __init__(self, cache: IdentityCache | None, own: str) -> None:
        self.cache = cache
        self.own = own
        self.from_disk: set[str] = set()
        """The identities in force that were read from disk and not yet replaced by a
        certificate from the control plane: presented with a CSR at the first hello."""
        self._expired_noted: set[str] = set()

    def section(self, key: str) -> str:
        """The identity section name of workload `key`."""
        ns, _, name = key.partition("/")
        return workload_identity(ns, name, first=key == self.own)

    def path(self, key: str) -> str:
        if self.cache is None:
            return "(no identity cache)"
        ns, _, name = key.partition("/")
        return str(self.cache.path_of(ns, name))

    def read(self, keys: Sequence[str], cfg: ProxyConfig | None,
             ) -> tuple[dict[str, HeldIdentity], dict[str, IdentityRefused | None]]:
        """The kept identities of `keys` that may be served (checked against what the cached
        snapshot `cfg` says of each workload), and the others with why."""
        found: dict[str, HeldIdentity] = {}
        refused: dict[str, IdentityRefused | None] = {}
        for k in keys:
            if self.cache is None:
                refused[k] = None
                continue
            ns, _, name = k.partition("/")
            first = k == self.own
            try:
                held = self.cache.load(ns, name, first=first,
                                       expected=expected_principals(cfg, ns, name, first=first))
            except IdentityRefused as exc:
                refused[k] = exc
                continue
            except (OSError, ValueError) as exc:
                refused[k] = IdentityRefused(f"unreadable: {exc}")
                continue
            if held is None:
                refused[k] = None
            else:
                found[k] = held
                self.from_disk.add(k)
        return found, refused

    def log_refused(self, key: str, why: IdentityRefused | None, what: str,
                    then: str = "") -> None:
        """One line: `what`, why `key`'s identity was not taken, `then` (ERROR when the file
        is one others could reach: its mode, owner, a link)."""
        if why is None:
            log.warning("%s: no certificate of %s is cached at %s%s", what, key,
                        self.path(key), then)
            return
        log.log(logging.ERROR if why.exposed else logging.WARNING,
                "%s: the certificate of %s cached at %s is refused: %s%s", what, key,
                why.path or self.path(key), why, then)

    def log_unserved(self, cfg: ProxyConfig, exc: ConfigError, refused: Refused,
                     cache_path: Path | None) -> None:
        """The cached snapshot cannot be served: one line per identity it needed that was not
        taken, else the snapshot's own fault."""
        if not refused or "no identity named" not in str(exc):
            log.warning("ignoring unusable cached snapshot %s: %s", cache_path, exc)
            return
        for k, why in refused.items():
            self.log_refused(k, why, f"not serving cached snapshot {cfg.version}",
                             "; waiting for the control plane")

    def keep(self, key: str, held: HeldIdentity) -> None:
        """Write `held` for `key`, if there is a cache; a failure is logged, and the
        certificate stays in force (memory only)."""
        self._expired_noted.discard(key)
        if self.cache is None:
            return
        ns, _, name = key.partition("/")
        try:
            self.cache.save(ns, name, held)
        except (OSError, ValueError, IdentityRefused) as exc:
            log.log(logging.ERROR if isinstance(exc, IdentityRefused) and exc.exposed
                    else logging.WARNING, "cannot keep the certificate of %s on disk (%s): %s; "
                    "a restart while the control plane is away will not serve mTLS", key,
                    self.cache.directory, exc)

    def tidy(self, fronted: Sequence[str], named: Collection[str] = ()) -> None:
        """At start, before any identity is read or written: remove the kept identities of
        the workloads this proxy kept before (its index; `named`: those its cached snapshot
        names, for a cache from before the index) that it no longer fronts, one line each;
        then record what it fronts now (ADR 0126).  Another proxy's files in a shared
        `--cache-dir` are in no list of this one's, so they are never candidates."""
        if self.cache is None:
            return
        ns, _, name = self.own.partition("/")
        try:
            before = self.cache.recorded(ns, name)
        except (IdentityRefused, OSError, ValueError) as exc:
            exposed = isinstance(exc, IdentityRefused) and exc.exposed
            log.log(logging.ERROR if exposed else logging.WARNING,
                    "ignoring the index of kept identities at %s: %s",
                    getattr(exc, "path", "") or self.cache.directory, exc)
            before = []
        stale = sorted((set(before) | set(named)) - set(fronted))
        claimed = self._claimed(stale)
        if claimed is None:  # (cannot tell whose they are now: all stay listed, said once)
            stale, later = [], stale
        else:
            stale = [k for k in stale if k not in claimed]
            later = stale[MAX_REMOVALS:]
        for k in stale[:MAX_REMOVALS]:
            if not self._remove(k):
                later.append(k)
        try:  # (what the index cannot hold is left for good: a node has about 20 pods)
            self.cache.record(ns, name, [*fronted, *later][:MAX_INDEX])
        except (IdentityRefused, OSError, ValueError) as exc:
            log.warning("cannot write the index of kept identities in %s: %s; a later start "
                        "will not know which of them were this proxy's", self.cache.directory,
                        exc)

    def _claimed(self, stale: Sequence[str]) -> dict[str, str] | None:
        """Which of `stale` another proxy sharing the directory fronts (its index lists them,
        `IdentityCache.claims`): theirs now, never removed, said once each and dropped from
        this proxy's index.  None when that cannot be told (then nothing is removed this
        start: a node agent once fronted a pod that now has a sidecar of its own writing its
        key here, ADR 0129)."""
        assert self.cache is not None
        if not stale:
            return {}
        ns, _, name = self.own.partition("/")
        try:
            claimed = self.cache.claims(ns, name, stale)
        except (IdentityRefused, OSError) as exc:
            log.warning("not removing the kept certificates of %s in %s at this start, which "
                        "this proxy no longer fronts: cannot tell whether another proxy "
                        "sharing the directory does: %s", ", ".join(stale[:20]),
                        self.cache.directory, exc)
            return None
        for k, proxy in sorted(claimed.items()):
            try:
                where = self.path(k)
            except ValueError:
                continue  # (a name that is no file's: nothing to say of it)
            log.info("not removing the kept certificate of %s at %s (this proxy no longer "
                     "fronts it): the index of proxy %s, which shares the directory, lists it",
                     k, where, proxy)
        return claimed

    def _remove(self, key: str) -> bool:
        """Remove the kept identity of `key`, a workload this proxy no longer fronts; False
        when that failed and is worth trying at the next start (not for a file that is not
        the proxy's, which is never removed, only said)."""
        assert self.cache is not None
        ns, _, name = key.partition("/")
        why = "this proxy no longer fronts it"
        try:
            where = str(self.cache.path_of(ns, name))
        except ValueError:
            return True  # (a name that is no file's: nothing was ever kept under it)
        try:
            removed = self.cache.remove(ns, name)
        except IdentityRefused as exc:
            log.log(logging.ERROR if exc.exposed else logging.WARNING,
                    "not removing the kept certificate of %s at %s (%s): %s", key,
                    exc.path or where, why, exc)
            return True
        except OSError as exc:
            log.warning("cannot remove the kept certificate of %s at %s (%s): %s", key, where,
                        why, exc)
            return False
        if removed > 1:  # hard links: the key is still on the disk under their names
            others = removed - 1
            log.warning("removed the kept certificate and key of %s at %s: %s; the file had "
                        "%d other hard link%s, under which its key is still on the disk: "
                        "remove %s", key, where, why, others, "s" * (others > 1),
                        "them" if others > 1 else "it")
        elif removed:
            log.info("removed the kept certificate and key of %s at %s: %s", key, where, why)
        return True

    def refused_by_control_plane(self, reason: str) -> list[str]:
        """The identities from disk to drop when a hello that presented them was refused
        with `reason`: all of them when it is about a certificate (another mesh's CA, a
        revoked root), else none (a protocol the control plane does not speak)."""
        if not self.from_disk or "certificate" not in reason:
            return []
        dropped = sorted(self.from_disk)
        self.from_disk.clear()
        s = "s" * (len(dropped) > 1)
        log.warning("the control plane refused the cached certificate%s of %s (%s): dropped; "
                    "the next hello presents the bootstrap token%s", s, ", ".join(dropped),
                    reason[:300], s)
        return dropped

    def note_expired(self, held: Mapping[str, HeldIdentity]) -> None:
        """While the control plane is away: one line per certificate in force that expired.
        It stays in force: peers refuse it anyway, and without it nothing of the config
        could be served, plaintext and egress included (ADR 0123)."""
        now = time.time()  # noqa: TID251 - wall clock vs certificate times
        for k, h in held.items():
            if h.cert.not_after <= now and k not in self._expired_noted:
                self._expired_noted.add(k)
                log.warning("the certificate of %s expired at %s and the control plane has not "
                            "renewed it: peers refuse it, so mTLS to and from %s fails until the "
                            "control plane answers", k,
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.cert.not_after)),
                            k)


__all__ = ["KeptIdentities", "Refused"]
