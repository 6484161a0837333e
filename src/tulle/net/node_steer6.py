"""Agent mode's IPv6 side: the served pods' IPv6 TCP and UDP are refused, never let past the
agent (ADR 0050).

The node agent's listeners are on 127.0.0.1 and the pods' traffic reaches them by DNAT with
`route_localnet` (`node_steer.py`).  IPv6 has no `route_localnet`: a packet from a pod's veth
DNAT'd to `::1` is answered "network unreachable" by the kernel (checked in a testbed), so the
IPv4 scheme cannot be carried over, and the compiled listeners are IPv4 only (ADR 0044).
Without rules a dual-stack pod would reach other pods and Services' backends over IPv6 around
the agent, plaintext, with no policy, and be reached the same way.  So, in the node's
namespace (never a pod's, never the host's), one filter chain per hook:

    TULLE_NODE6     (from FORWARD)  -i <veth> -p tcp -j REJECT --reject-with tcp-reset
                                    -i <veth> -p udp -j REJECT
                                    -o <veth> -p tcp -j REJECT --reject-with tcp-reset
                                    -o <veth> -p udp -j REJECT
    TULLE_NODE6_IN  (from INPUT)    -i <veth> -p tcp -j REJECT --reject-with tcp-reset
                                    -i <veth> -p udp -j REJECT

per served pod's veth: what the pod sends through or to the node, and what is forwarded to it.
ICMPv6 (neighbour discovery on the veth) is untouched; the agent's own connections (OUTPUT) are
untouched.  A refusal, not a silent drop: a client sees a reset or "port unreachable" at once.
`clean` removes exactly these chains and jumps.  Applied wherever the namespace has an IPv6
address on an interface other than loopback (`needed`), whatever `--ipv6/--no-ipv6` says: a
`--no-ipv6` that left the family alone opened it around the agent (ADR 0114).  Without
`ip6tables-restore` there, `apply` exits 3 before installing anything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Final

from tulle.net.iptables_run import (
    EXIT_ENVIRONMENT,
    EXIT_REFUSED,
    InterceptionError,
    has_family,
)
from tulle.net.node_steer import Runner, run

CHAIN: Final = "TULLE_NODE6"
CHAIN_IN: Final = "TULLE_NODE6_IN"
_HOOKS: Final = ((CHAIN, "FORWARD"), (CHAIN_IN, "INPUT"))


def available() -> bool:
    """IPv6 in this namespace and the tools to filter it."""
    return os.path.exists("/proc/net/if_inet6") and all(
        shutil.which(t) for t in ("ip6tables-save", "ip6tables-restore"))


def needed(runner: Runner = run) -> bool:
    """Whether the served pods' IPv6 must be refused here: the node's namespace has an IPv6
    address on an interface other than loopback (a veth's link-local one is enough to reach
    the pod).  `--no-ipv6` does not change it: agent mode steers IPv4 only, so IPv6 left
    alone would go around the agent both ways (ADR 0114, as ADR 0111 did for a sidecar's
    `--no-ipv6`)."""
    return os.path.exists("/proc/net/if_inet6") and has_family(6, runner)


def check_tools() -> None:
    """Refuse to steer a node whose IPv6 cannot be refused: exit 3 naming both ways out,
    before any rule is installed (it used to skip IPv6 silently)."""
    missing = [t for t in ("ip6tables-save", "ip6tables-restore") if not shutil.which(t)]
    if missing:
        raise InterceptionError(
            f"IPv6 is on in the node's namespace and agent mode refuses the served pods' IPv6 "
            f"(it steers IPv4 only), which needs {' and '.join(missing)}: install them, or "
            "turn IPv6 off on the node", EXIT_ENVIRONMENT)


def rules(devices: Sequence[str]) -> dict[str, list[str]]:
    fwd: list[str] = []
    inp: list[str] = []
    for dev in devices:
        for way in ("-i", "-o"):
            fwd += [f"-A {CHAIN} {way} {dev} -p tcp -j REJECT --reject-with tcp-reset",
                    f"-A {CHAIN} {way} {dev} -p udp -j REJECT"]
        inp += [f"-A {CHAIN_IN} -i {dev} -p tcp -j REJECT --reject-with tcp-reset",
                f"-A {CHAIN_IN} -i {dev} -p udp -j REJECT"]
    return {CHAIN: fwd, CHAIN_IN: inp}


def restore_input(devices: Sequence[str] | None, saved: str) -> str:
    """One `ip6tables-restore --noflush` transaction: our jumps dropped if present, the chains
    (re)declared and filled and jumped to; with `devices` None, removed."""
    lines = saved.splitlines()
    out = ["*filter"]
    want = rules(devices) if devices is not None else None
    for chain, hook in _HOOKS:
        jump = f"-A {hook} -j {chain}"
        if jump in lines:
            out.append(f"-D {hook} -j {chain}")
        if want is None:
            if any(line.startswith(f":{chain} ") for line in lines):
                out += [f"-F {chain}", f"-X {chain}"]
        else:
            out += [f":{chain} - [0:0]", *want[chain], jump]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def _saved(runner: Runner) -> str:
    done = runner(["ip6tables-save", "-t", "filter"], None)
    return done.stdout if done.returncode == 0 else ""


def _restore(text: str, runner: Runner) -> None:
    done = runner(["ip6tables-restore", "--noflush", "--wait", "5"], text)
    if done.returncode != 0:
        raise InterceptionError(f"ip6tables-restore refused the ruleset: "
                                f"{(done.stderr or done.stdout).strip()}", EXIT_REFUSED)


def apply(devices: Sequence[str], runner: Runner = run) -> list[str]:
    """Refuse the IPv6 TCP and UDP of the pods behind `devices` (replacing an earlier apply)."""
    _restore(restore_input(devices, _saved(runner)), runner)
    return [f"refused IPv6 TCP/UDP of the pod behind {d} (agent mode is IPv4)" for d in devices]


def clean(runner: Runner = run) -> list[str]:
    saved = _saved(runner)
    lines = saved.splitlines()
    if not any(line.startswith((f":{CHAIN} ", f":{CHAIN_IN} ")) for line in lines):
        return []
    _restore(restore_input(None, saved), runner)
    return [f"removed {CHAIN} and {CHAIN_IN}"]
