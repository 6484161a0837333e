"""Steer every pod's outbound TCP to the node agent's listener for that pod (agent mode, ADR 0047).

A per-node agent runs in the node's network namespace and fronts the pods behind it.  Each pod
gets an outbound listener of its own on the agent (`127.0.0.1:<outboundPort>`, the port the
pod's workload registers), so the listener a connection arrives on *is* the pod it came from,
and the agent presents that pod's certificate (ADR 0032).  This module installs, in the
**node's** namespace (never a pod's, never the host's), one nat chain, `TULLE_NODE`, jumped to
from `PREROUTING`, holding per pod::

    -A TULLE_NODE -i <pod's veth> -s <pod address>/32 -p tcp -j DNAT --to-destination 127.0.0.1:<port>

and sets `net.ipv4.conf.<pod's veth>.route_localnet=1`, without which the kernel drops a packet
arriving on a non-loopback interface for 127.0.0.1.  The DNAT happens in the namespace the
agent's socket lives in, so `SO_ORIGINAL_DST` (conntrack's original tuple) gives the agent the
destination the pod dialled, as after a REDIRECT.  Matching both the interface and the source
address means a packet claiming a pod's address from anywhere else (the bridge, another veth) is
not steered to that pod's listener: it cannot borrow the pod's identity.

A pod with `interception: agent` and inbound ports also gives its agent inbound port
(`--pod ADDRESS=PORT:INBOUND`): TCP for the pod's address arriving on any other interface of
the node (the uplink, the veths of pods not served by the agent) is DNAT'd to
`127.0.0.1:<inbound>`, where the agent terminates mTLS with the pod's certificate, applies its
policies and forwards to the pod.  These rules come after the per-pod outbound ones, so a served
pod calling another one goes through its own outbound listener first.  The agent's own dial to
the pod leaves from the node (OUTPUT, not PREROUTING) and is not steered back.  Those
interfaces get `route_localnet` and the guard below too.

`route_localnet` would also let a packet a pod crafts for 127.0.0.0/8 (with a raw socket) reach
the node's loopback services, the agent's admin port among them; such packets are dropped before
any NAT, in the `raw` table (`TULLE_NODE_GUARD`, `-i <veth> -d 127.0.0.0/8 -j DROP`).  The
steered packets are not affected: their original destination is the pod's, never loopback.

Two pods of the node calling each other: the agent's mTLS dial to a pod it serves inbound and
its plaintext dial to that pod's application would be the same to the kernel, so the control
plane has the former dial the pod's loopback alias (`agent_inbound_alias`) instead, and a nat
`OUTPUT` chain, `TULLE_NODE_OUT`, DNATs each alias to the pod's inbound listener; the original
destination's port is still the pod's (ADR 0050).

A pod's DNS (UDP and TCP port 53, whatever nameserver it asks) is DNAT'd first, to the agent's
mesh DNS resolver (`--dns-port`, 15053 by default, ADR 0050): the query keeps the pod's
source address, by which the resolver answers the pod's bare names in the pod's namespace.

`clean` removes the jumps and the chains and resets `route_localnet` on the interfaces the chain
named; nothing else is touched.  IPv4 only (the testbed's pods and the compiled outbound
listener are IPv4); a served pod's IPv6 is refused instead (`node_steer6.py`, ADR 0050).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from tulle.net.iptables_run import EXIT_ENVIRONMENT, EXIT_REFUSED, InterceptionError
from tulle.proxyconfig.reserved import agent_inbound_alias

CHAIN: Final = "TULLE_NODE"
JUMP: Final = f"-A PREROUTING -j {CHAIN}"
CHAIN_OUT: Final = "TULLE_NODE_OUT"
JUMP_OUT: Final = f"-A OUTPUT -j {CHAIN_OUT}"
GUARD: Final = "TULLE_NODE_GUARD"
GUARD_JUMP: Final = f"-A PREROUTING -j {GUARD}"
AGENT_ADDRESS: Final = "127.0.0.1"
_DEVICE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")

Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


def run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)


@dataclass(frozen=True, slots=True)
class PodSteer:
    """One pod: its address, the interface it is behind on this node, its agent port."""

    address: ipaddress.IPv4Address
    port: int
    device: str = ""
    inbound: int = 0
    """The agent's inbound port for this pod (0: its inbound traffic is not steered)."""


def parse_pod(text: str) -> PodSteer:
    """`--pod ADDRESS=PORT` -> PodSteer (device still unknown); OptionError-like ValueError
    naming the option."""
    addr, sep, port = text.partition("=")
    if not sep:
        raise ValueError(f"--pod: {text!r}: use ADDRESS=PORT (the pod's agent port)")
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        raise ValueError(f"--pod: {addr!r} is not an IP address") from None
    if not isinstance(ip, ipaddress.IPv4Address):
        raise ValueError(f"--pod: {addr!r}: agent steering is IPv4 only")
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"--pod: {addr!r} cannot be a pod's address")
    out, _, inbound = port.partition(":")
    for p in (out, *([inbound] if inbound or port.endswith(":") else [])):
        if not p.strip().isdigit() or not 0 < int(p) < 65536:
            raise ValueError(f"--pod: {p!r} is not a port (1-65535)")
    return PodSteer(ip, int(out), inbound=int(inbound) if inbound else 0)


def check_pods(pods: Sequence[PodSteer]) -> None:
    seen_addr: set[ipaddress.IPv4Address] = set()
    seen_port: dict[int, ipaddress.IPv4Address] = {}
    for p in pods:
        if p.address in seen_addr:
            raise ValueError(f"--pod: {p.address} is given twice")
        for port in (p.port, p.inbound):
            if port in seen_port:
                raise ValueError(f"--pod: port {port} is given to {seen_port[port]} and "
                                 f"{p.address}: each pod needs agent ports of its own (its "
                                 "identity is chosen by the port)")
            if port:
                seen_port[port] = p.address
        seen_addr.add(p.address)
        if p.device and not _DEVICE.match(p.device):
            raise ValueError(f"--pod: {p.address}: bad interface name {p.device!r}")


def chain_rules(pods: Sequence[PodSteer], uplinks: Sequence[str] = (),
                dns_port: int = 0) -> list[str]:
    dns = [f"-A {CHAIN} -i {p.device} -s {p.address}/32 -p {proto} --dport 53 -j DNAT "
           f"--to-destination {AGENT_ADDRESS}:{dns_port}"
           for p in pods for proto in ("udp", "tcp")] if dns_port else []
    out = dns + [f"-A {CHAIN} -i {p.device} -s {p.address}/32 -p tcp -j DNAT --to-destination "
                 f"{AGENT_ADDRESS}:{p.port}" for p in pods]
    return out + [f"-A {CHAIN} -i {dev} -d {p.address}/32 -p tcp -j DNAT --to-destination "
                  f"{AGENT_ADDRESS}:{p.inbound}" for p in pods if p.inbound for dev in uplinks]


def out_rules(pods: Sequence[PodSteer]) -> list[str]:
    """The agent's own dials to a pod it serves inbound (another pod of the node calling it)
    go to the pod's loopback alias; DNAT'd here to the pod's inbound listener, the pod's
    port stays the original destination (ADR 0050)."""
    return [f"-A {CHAIN_OUT} -d {agent_inbound_alias(p.inbound)}/32 -p tcp -j DNAT "
            f"--to-destination {AGENT_ADDRESS}:{p.inbound}" for p in pods if p.inbound]


def guard_rules(pods: Sequence[PodSteer], uplinks: Sequence[str] = ()) -> list[str]:
    devs = [p.device for p in pods] + [d for d in uplinks if any(p.inbound for p in pods)]
    return [f"-A {GUARD} -i {d} -d 127.0.0.0/8 -j DROP" for d in devs]


def _table(table: str, chains: Sequence[tuple[str, str, list[str] | None]],
           lines: list[str]) -> list[str]:
    """`chains`: (chain, parent chain, its rules; None or [] to remove it)."""
    out = [f"*{table}"]
    for chain, parent, rules in chains:
        if f"-A {parent} -j {chain}" in lines:
            out.append(f"-D {parent} -j {chain}")
        if not rules and (rules is None or chain == CHAIN_OUT):
            if any(line.startswith(f":{chain} ") for line in lines):
                out += [f"-F {chain}", f"-X {chain}"]
        else:
            out += [f":{chain} - [0:0]", *rules, f"-A {parent} -j {chain}"]
    out.append("COMMIT")
    return out


def restore_input(pods: Sequence[PodSteer] | None, saved: str,
                  uplinks: Sequence[str] = (), dns_port: int = 0) -> str:
    """One `iptables-restore --noflush` transaction: drop our jumps if present, (re)declare the
    chains (which flushes them), fill them and jump to them; with `pods` None, remove it all.
    (`saved` is `iptables-save` of every table; a chain name is ours in one table only.)"""
    lines = saved.splitlines()
    nat = _table("nat", [
        (CHAIN, "PREROUTING", None if pods is None else chain_rules(pods, uplinks, dns_port)),
        (CHAIN_OUT, "OUTPUT", None if pods is None else out_rules(pods))], lines)
    raw = _table("raw", [
        (GUARD, "PREROUTING", None if pods is None else guard_rules(pods, uplinks))], lines)
    return "\n".join(nat + raw) + "\n"


def devices_in(saved: str) -> list[str]:
    """The interfaces our chain names (to reset their route_localnet on clean)."""
    out = []
    for line in saved.splitlines():
        if line.startswith(f"-A {CHAIN} "):
            parts = line.split()
            if "-i" in parts:
                dev = parts[parts.index("-i") + 1]
                if _DEVICE.match(dev) and dev not in out:
                    out.append(dev)
    return out


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InterceptionError(f"{name} not found on PATH (install iptables)", EXIT_ENVIRONMENT)
    return path


def _saved(runner: Runner) -> str:
    done = runner([_tool("iptables-save")], None)
    return done.stdout if done.returncode == 0 else ""


def device_of(address: ipaddress.IPv4Address, runner: Runner) -> str:
    """The interface this namespace reaches `address` by (the pod's veth)."""
    done = runner(["ip", "-o", "-4", "route", "get", str(address)], None)
    parts = done.stdout.split()
    if done.returncode != 0 or "dev" not in parts:
        raise InterceptionError(f"--pod {address}: no route to it in this namespace "
                                f"({(done.stderr or done.stdout).strip()})", EXIT_REFUSED)
    dev = parts[parts.index("dev") + 1]
    if dev == "lo" or parts[0] == "local":
        raise InterceptionError(f"--pod {address}: that address is this namespace's own; "
                                "run this in the node's namespace, for pods behind it",
                                EXIT_REFUSED)
    if not _DEVICE.match(dev):
        raise InterceptionError(f"--pod {address}: odd interface name {dev!r}", EXIT_REFUSED)
    return dev


def uplinks(pods: Sequence[PodSteer], runner: Runner) -> list[str]:
    """Every interface of this namespace but loopback and the served pods' veths: where a
    served pod's inbound traffic can arrive from."""
    done = runner(["ip", "-o", "link", "show"], None)
    if done.returncode != 0:
        raise InterceptionError(f"ip link: {(done.stderr or done.stdout).strip()}",
                                EXIT_REFUSED)
    mine = {p.device for p in pods}
    out = []
    for line in done.stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        dev = parts[1].strip().split("@")[0]
        if dev and dev != "lo" and dev not in mine and _DEVICE.match(dev) and dev not in out:
            out.append(dev)
    return out


def _route_localnet(dev: str, on: bool) -> None:
    path = f"/proc/sys/net/ipv4/conf/{dev}/route_localnet"
    try:
        with open(path, "w") as f:
            f.write("1" if on else "0")
    except FileNotFoundError:
        pass  # the interface is gone (its pod was deleted): nothing to reset
    except OSError as exc:
        raise InterceptionError(f"{path}: {exc.strerror}", EXIT_REFUSED) from None


def _restore(text: str, runner: Runner) -> None:
    done = runner([_tool("iptables-restore"), "--noflush", "--wait", "5"], text)
    if done.returncode != 0:
        raise InterceptionError(f"iptables-restore refused the ruleset: "
                                f"{(done.stderr or done.stdout).strip()}", EXIT_REFUSED)


def _root() -> None:
    if os.geteuid() != 0:
        raise InterceptionError("needs root (CAP_NET_ADMIN in the node's network namespace); "
                                "use --dry-run to print the rules", EXIT_ENVIRONMENT)


def resolve(pods: Sequence[PodSteer], runner: Runner = run) -> list[PodSteer]:
    out = [PodSteer(p.address, p.port, p.device or device_of(p.address, runner), p.inbound)
           for p in pods]
    check_pods(out)
    return out


def apply(pods: Sequence[PodSteer], runner: Runner = run, dns_port: int = 0) -> list[str]:
    """Steer `pods` (replacing an earlier apply), and their DNS (UDP and TCP 53) to the
    agent's resolver on `dns_port` (0: not); returns what was done, one line each."""
    _root()
    resolved = resolve(pods, runner)
    ups = uplinks(resolved, runner) if any(p.inbound for p in resolved) else []
    saved = _saved(runner)
    wanted = {p.device for p in resolved} | set(ups)
    for dev in set(devices_in(saved)) - wanted:
        _route_localnet(dev, False)
    for dev in sorted(wanted):
        _route_localnet(dev, True)
    _restore(restore_input(resolved, saved, ups, dns_port), runner)
    return [f"steered {p.address} (via {p.device}) to {AGENT_ADDRESS}:{p.port}"
            + (f", its DNS to {AGENT_ADDRESS}:{dns_port}" if dns_port else "")
            + (f", its inbound (via {', '.join(ups)}) to {AGENT_ADDRESS}:{p.inbound}"
               if p.inbound else "") for p in resolved]


def clean(runner: Runner = run) -> list[str]:
    """Remove exactly what `apply` installed."""
    _root()
    saved = _saved(runner)
    devs = devices_in(saved)
    lines = saved.splitlines()
    if not any(line.startswith((f":{CHAIN} ", f":{GUARD} ", f":{CHAIN_OUT} "))
               or line in (JUMP, GUARD_JUMP, JUMP_OUT) for line in lines):
        return []
    _restore(restore_input(None, saved), runner)
    for dev in devs:
        _route_localnet(dev, False)
    return [f"removed {CHAIN}, {CHAIN_OUT} and {GUARD}", *(f"route_localnet off on {d}" for d in devs)]
