"""The agent's side of the identities on disk (ADR 0123): which certificates in force came from
disk, reading them at start, writing each new one, and the lines an operator reads about them.

Why apart from `agent.py`: the agent holds the certificates and speaks the stream; what is
kept on disk, and what is said when a kept one cannot be served, are one concern of their own
(`identity_cache.py` holds the file rules).  Keys are `namespace/name`; the proxy's own
workload is `own`, its identity section `workload`, a node's further ones
`workload:<namespace>/<name>`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tulle.dataplane.cache_serving import expected_principals
from tulle.dataplane.identity import HeldIdentity
from tulle.dataplane.identity_cache import IdentityCache, IdentityRefused
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.reserved import workload_identity
from tulle.proxyconfig.validate import ConfigError

log = logging.getLogger("tulle.agent")

Refused = Mapping[str, IdentityRefused | None]
"""Fronted workloads whose kept identity was not taken, with why (None: none is kept)."""


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
