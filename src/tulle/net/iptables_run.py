"""Install and remove the interception ruleset in the current network namespace.

The rules come from `iptables.py`; this module finds the tools, picks the backend, feeds one
`iptables-restore --noflush` transaction per address family and adds or removes the
virtual-IP routes.  It acts on the namespace it runs in (a pod's: `ip netns exec POD tulle
iptables apply`), never another.

Backend (ADR 0043): `legacy` and `nft` rules both take effect when both are loaded, so a pod
must use one.  `auto` takes the one that already holds Tulle's chains, else the one that holds
any rules, else the `iptables` on PATH (Debian: nft).  Whatever the backend asked for, `apply`
removes Tulle's chains from the other one and `clean` cleans every backend that holds them:
left there, an earlier apply's rules would still redirect (ADR 0087).

`apply` fails before it commits anything when it can already tell it would fail: every
family's ruleset is checked with `--test`.  Should a route still be refused after the rules are
in, the rules are taken out again, so an exit code other than 0 never leaves interception half
installed.  A virtual-IP range of a family the namespace has no global address of is not
routed, and the output says so: nothing there can call it (one init step with both families'
ranges serves single-stack and dual-stack pods alike, ADR 0088).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from tulle.net.iptables import (
    ROUTE_PROTO,
    Family,
    Installed,
    Interception,
    Network,
    installed,
    restore_input,
)

Backend = Literal["auto", "nft", "legacy"]
FAMILIES: Final[tuple[Family, ...]] = (4, 6)
Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]

EXIT_ENVIRONMENT: Final = 3
"""Not root, or a tool missing."""
EXIT_REFUSED: Final = 4
"""iptables-restore or ip refused what it was given."""


class InterceptionError(Exception):
    """Why apply/clean could not do its job; `code` is the process exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)


@dataclass(frozen=True, slots=True)
class Tools:
    """The save/restore pair of one backend and family."""

    save: str
    restore: str


def _tools(backend: str, family: Family) -> Tools | None:
    base = "iptables" if family == 4 else "ip6tables"
    infix = "" if backend == "path" else f"-{backend}"
    save, restore = f"{base}{infix}-save", f"{base}{infix}-restore"
    if shutil.which(save) and shutil.which(restore):
        return Tools(save, restore)
    return None


def _saved(tools: Tools, runner: Runner) -> str:
    # Not `-t nat`: naming a table makes the legacy backend instantiate it in this namespace.
    done = runner([tools.save], None)
    return done.stdout if done.returncode == 0 else ""


def choose_backend(backend: Backend, family: Family, runner: Runner = run) -> list[Tools]:
    """The backends to act on for `family` (more than one only for `clean` in auto)."""
    if backend != "auto":
        tools = _tools(backend, family)
        if tools is None:
            name = "iptables" if family == 4 else "ip6tables"
            raise InterceptionError(f"{name}-{backend}-save / -restore not found on PATH",
                                    EXIT_ENVIRONMENT)
        return [tools]
    candidates = [t for t in (_tools("nft", family), _tools("legacy", family)) if t]
    if not candidates:
        plain = _tools("path", family)
        if plain is None:
            name = "iptables" if family == 4 else "ip6tables"
            raise InterceptionError(f"{name}-save / {name}-restore not found on PATH "
                                    "(install iptables)", EXIT_ENVIRONMENT)
        return [plain]
    saved = {t: _saved(t, runner) for t in candidates}
    ours = [t for t in candidates if not installed(saved[t]).empty]
    if ours:
        return ours
    busy = [t for t in candidates if any(line.startswith("-A ") for line in
                                         saved[t].splitlines())]
    if busy:
        return busy[:1]
    on_path = shutil.which("iptables" if family == 4 else "ip6tables")
    if on_path is not None and "legacy" in os.path.realpath(on_path):
        return [t for t in candidates if "legacy" in t.save] or candidates[:1]
    return candidates[:1]


def _also_holding_ours(chosen: Sequence[Tools], family: Family, runner: Runner) -> list[Tools]:
    """The other backends of `family` that hold Tulle's chains (an earlier apply's, made with
    another backend)."""
    out = []
    for t in (_tools("nft", family), _tools("legacy", family)):
        if t is not None and t not in chosen and not installed(_saved(t, runner)).empty:
            out.append(t)
    return out


def check_environment() -> None:
    if os.geteuid() != 0:
        raise InterceptionError("needs root (CAP_NET_ADMIN in the pod's network namespace); "
                                "use --dry-run to print the rules", EXIT_ENVIRONMENT)


def _restore(tools: Tools, text: str, runner: Runner, test: bool = False) -> None:
    done = runner([tools.restore, "--noflush", "--wait", "5", *(["--test"] if test else [])],
                  text)
    if done.returncode != 0:
        raise InterceptionError(f"{tools.restore} refused the ruleset: "
                                f"{(done.stderr or done.stdout).strip()}", EXIT_REFUSED)


def apply(cfg: Interception, backend: Backend = "auto", runner: Runner = run) -> list[str]:
    """Install `cfg` (replacing any earlier apply); returns what was done, one line each."""
    check_environment()
    done: list[str] = []
    plan: list[tuple[Tools, str, str]] = []
    installs: list[tuple[Family, Tools]] = []
    for family in FAMILIES:
        if family in cfg.families:
            what = "rules installed"
        elif has_family(family, runner):
            what = (f"not intercepted (--no-ipv{family}), so refused in and out (loopback, "
                    f"ICMP and the proxy's own traffic excepted)")
        else:
            continue  # the namespace has none of this family: nothing can pass
        try:
            chosen = choose_backend(backend, family, runner)
        except InterceptionError as exc:
            if family in cfg.families:
                raise
            raise InterceptionError(
                f"IPv{family} is on in this namespace and --no-ipv{family} leaves it to be "
                f"refused, which needs {exc} (or turn IPv{family} off in the pod)",
                exc.code) from exc
        tools, others = chosen[0], [*chosen[1:], *_also_holding_ours(chosen, family, runner)]
        text = restore_input(cfg, family, installed(_saved(tools, runner)))
        plan.append((tools, text, f"IPv{family}: {what} with {tools.restore}"))
        installs.append((family, tools))
        for other in others:  # Tulle's chains in a second backend would redirect twice
            text = restore_input(None, family, installed(_saved(other, runner)))
            plan.append((other, text, f"IPv{family}: earlier rules removed with {other.restore}"))
    # Every transaction is checked (`--test`) before any is committed: a family the kernel
    # refuses (IPv6 disabled, a module missing) leaves the other one untouched too.
    for tools, text, _ in plan:
        _restore(tools, text, runner, test=True)
    for tools, text, line in plan:
        _restore(tools, text, runner)
        done.append(line)
    try:
        done += routes_apply(cfg.vip_ranges, runner)
    except InterceptionError as exc:
        for family, tools in installs:  # no half-installed interception behind an error
            _restore(tools, restore_input(None, family, installed(_saved(tools, runner))),
                     runner)
        routes_clean(runner)
        raise InterceptionError(f"{exc}; the rules just installed were removed again",
                                exc.code) from exc
    return done


def has_family(family: Family, runner: Runner = run) -> bool:
    """Whether an interface other than loopback has an address of `family` (a link-local
    IPv6 one counts: it reaches every neighbour on the link)."""
    out = runner(_ip(family, "-o", "addr", "show"), None).stdout
    return any(len(w := line.split()) > 1 and w[1] != "lo" for line in out.splitlines())


def clean(backend: Backend = "auto", families: Sequence[Family] = (4, 6),
          runner: Runner = run) -> list[str]:
    """Remove Tulle's jumps, chains and routes, and nothing else."""
    check_environment()
    done: list[str] = []
    for family in families:
        chosen = choose_backend(backend, family, runner)
        for tools in [*chosen, *_also_holding_ours(chosen, family, runner)]:
            before = installed(_saved(tools, runner))
            if before.empty:
                continue
            _restore(tools, restore_input(None, family, before), runner)
            done.append(f"IPv{family}: rules removed with {tools.restore}")
    done += routes_clean(runner)
    return done


def _ip(family: int, *args: str) -> list[str]:
    return ["ip", f"-{family}", *args]


def _our_routes(family: int, runner: Runner) -> list[str]:
    out = runner(_ip(family, "route", "show", "proto", str(ROUTE_PROTO)), None)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _device(family: int, runner: Runner) -> str | None:
    """The interface that carries the pod's (first global) address of `family`; None: it has
    none of that family."""
    out = runner(_ip(family, "-o", "addr", "show", "scope", "global"), None).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) > 1:
            return words[1].split("@")[0]
    return None


def routes_apply(ranges: Sequence[Network], runner: Runner = run) -> list[str]:
    """An on-link route for each virtual-IP range that nothing routes yet (ADR 0043).

    A namespace with a default route (a Kubernetes pod) needs none: VIP traffic follows it and
    is redirected in nat OUTPUT before it leaves.  Without one (the testbed), `connect()` to a
    VIP fails with ENETUNREACH before netfilter sees a packet, so the range gets a route on the
    pod's interface, tagged `proto 157` for `clean`.
    """
    done: list[str] = []
    for family in (4, 6):
        for dst in _our_routes(family, runner):
            runner(_ip(family, "route", "del", dst, "proto", str(ROUTE_PROTO)), None)
    for net in ranges:
        probe = runner(_ip(net.version, "route", "get", str(net.network_address)), None)
        if probe.returncode == 0:
            done.append(f"{net}: already routed ({probe.stdout.split(chr(10))[0].strip()})")
            continue
        dev = _device(net.version, runner)
        if dev is None:
            done.append(f"{net}: not routed: no global IPv{net.version} address here, so "
                        "nothing here can call it")
            continue
        add = runner(_ip(net.version, "route", "add", str(net), "dev", dev, "proto",
                         str(ROUTE_PROTO)), None)
        if add.returncode != 0:
            raise InterceptionError(f"ip route add {net} dev {dev}: {add.stderr.strip()}",
                                    EXIT_REFUSED)
        done.append(f"{net}: routed on {dev}")
    return done


def routes_clean(runner: Runner = run) -> list[str]:
    done = []
    for family in (4, 6):
        for dst in _our_routes(family, runner):
            runner(_ip(family, "route", "del", dst, "proto", str(ROUTE_PROTO)), None)
            done.append(f"{dst}: route removed")
    return done


def dry_run(cfg: Interception) -> str:
    """What `apply` would feed each family's iptables-restore, on a namespace with nothing."""
    parts = []
    for family in FAMILIES:
        tool = f"{'iptables' if family == 4 else 'ip6tables'}-restore --noflush"
        parts.append(f"# {tool}" if family in cfg.families else
                     f"# {tool}, when the namespace has IPv{family} (refused: not intercepted)")
        parts.append(restore_input(cfg, family, Installed()))
    for net in cfg.vip_ranges:
        parts.append(f"# when {net} has no route: ip -{net.version} route add {net} dev <pod "
                     f"interface> proto {ROUTE_PROTO}\n")
    return "\n".join(parts)
