"""The interception ruleset a pod's sidecar needs, rendered as `iptables-restore` input.

`tulle iptables apply` (istio-iptables, linkerd proxy-init) redirects a pod's traffic to its
proxy: outbound TCP to 15001, inbound TCP to 15006, DNS (UDP and TCP 53) to 15053.  This
module is pure: options in, ruleset text out, and the parsing of `iptables-save` output that
tells which of Tulle's jumps are already installed.  Running the tools is `iptables_run.py`'s.

Everything lives in the `nat` table, in three chains of Tulle's own, reached by jumps appended
to the built-in chains:

    OUTPUT     -p udp --dport 53 -j TULLE_DNS        (when DNS is redirected)
    OUTPUT     -p tcp --dport 53 -j TULLE_DNS
    OUTPUT     -p tcp            -j TULLE_OUTPUT
    PREROUTING -p tcp            -j TULLE_PREROUTING (when inbound is redirected)

One `iptables-restore --noflush` transaction per family deletes the previous jumps, declares
(and so flushes) the chains, fills them and adds the jumps again: applying twice is applying
once, applying other options replaces the old ones, and nobody sees a half-written ruleset.
`clean` is the same transaction without the filling: exactly Tulle's jumps and chains go.

A family the pod has but the options leave out (`--no-ipv6` where the kernel runs IPv6: every
interface has a link-local address at least) is refused, never left to pass around the proxy
(ADR 0111): two chains of the `filter` table, jumped to first from `INPUT` and `OUTPUT`, let
loopback, ICMP, the proxy's own traffic and the replies to it through and reject the rest
(a TCP reset, else "port unreachable").  `tulle iptables node apply` refuses a served pod's
IPv6 the same way (ADR 0050).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from tulle.proxyconfig.address import matched_network

Family = Literal[4, 6]

CHAIN_OUTPUT: Final = "TULLE_OUTPUT"
CHAIN_INBOUND: Final = "TULLE_PREROUTING"
CHAIN_DNS: Final = "TULLE_DNS"
CHAINS: Final = (CHAIN_OUTPUT, CHAIN_INBOUND, CHAIN_DNS)
CHAIN_REFUSE_IN: Final = "TULLE_REFUSE_IN"
CHAIN_REFUSE_OUT: Final = "TULLE_REFUSE_OUT"
FILTER_CHAINS: Final = (CHAIN_REFUSE_IN, CHAIN_REFUSE_OUT)
"""`filter` chains refusing a family the pod has and the options do not intercept."""
BUILTIN: Final = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
LOOPBACK: Final = {4: "127.0.0.0/8", 6: "::1/128"}
ICMP: Final = {4: "icmp", 6: "ipv6-icmp"}
ROUTE_PROTO: Final = 157
"""`ip route ... proto 157`: marks the virtual-IP routes `apply` adds, so `clean` finds them."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class OptionError(ValueError):
    """An option that cannot be turned into rules; the message names the option."""


@dataclass(frozen=True, slots=True)
class Interception:
    """What `apply` installs.  `None` in an include list means "everything"."""

    outbound_port: int = 15001
    inbound_port: int = 15006
    dns_port: int = 15053
    proxy_uid: int | None = 1337
    proxy_mark: str | None = None
    """`VALUE` or `VALUE/MASK` (as `-m mark --mark` takes it)."""
    redirect_dns: bool = True
    include_outbound: tuple[Network, ...] | None = None
    exclude_outbound: tuple[Network, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    include_inbound_ports: tuple[int, ...] | None = None
    exclude_inbound_ports: tuple[int, ...] = ()
    vip_ranges: tuple[Network, ...] = ()
    families: tuple[Family, ...] = (4, 6)


def parse_port(option: str, text: str) -> int:
    text = text.strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise OptionError(f"{option}: {text!r} is not a port (1-65535)")
    return int(text)


def parse_ports(option: str, text: str) -> tuple[int, ...]:
    """`"15000,15090"` -> (15000, 15090); empty -> ()."""
    items = [t for t in text.split(",") if t.strip()]
    return tuple(sorted({parse_port(option, t) for t in items}))


def parse_cidrs(option: str, texts: Iterable[str]) -> tuple[Network, ...]:
    """Comma-separated CIDRs (an address alone is a /32 or /128), in the order given; an
    IPv4-mapped range is the IPv4 range it names (the kernel sees that traffic as IPv4)."""
    out: list[Network] = []
    for text in texts:
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise OptionError(f"{option}: {item!r} is not a CIDR ({exc})") from None
            net = matched_network(item)  # `::ffff:10.0.0.0/104` is 10.0.0.0/8: iptables' rule
            if net not in out:
                out.append(net)
    return tuple(out)


def parse_mark(option: str, text: str) -> str:
    """`0x539` or `0x539/0xfff`: checked, then passed to `-m mark --mark` as written."""
    parts = text.split("/")
    try:
        numbers = [int(p, 0) for p in parts]
    except ValueError:
        raise OptionError(f"{option}: {text!r} is not a mark (VALUE or VALUE/MASK)") from None
    if len(parts) > 2 or not all(0 <= n <= 0xFFFFFFFF for n in numbers) or numbers[0] == 0:
        raise OptionError(f"{option}: {text!r} is not a non-zero 32-bit mark (VALUE or VALUE/MASK)")
    return text


def validate(cfg: Interception) -> None:
    """Refuse combinations that would redirect the proxy to itself or redirect nothing."""
    if cfg.proxy_uid is None and cfg.proxy_mark is None:
        raise OptionError("--proxy-uid/--proxy-mark: the proxy's own traffic must be excluded "
                          "by uid or mark, or every connection it makes loops back into it")
    if cfg.proxy_uid is not None and not 0 <= cfg.proxy_uid < 2**32 - 1:
        raise OptionError(f"--proxy-uid: {cfg.proxy_uid} is not a uid")
    ports = {"--outbound-port": cfg.outbound_port, "--inbound-port": cfg.inbound_port,
             "--dns-port": cfg.dns_port}
    for name, port in ports.items():
        if not 1 <= port <= 65535:
            raise OptionError(f"{name}: {port} is not a port (1-65535)")
    if cfg.include_inbound_ports is not None and cfg.exclude_inbound_ports:
        raise OptionError("--exclude-inbound-ports: only with --inbound-ports '*' (an explicit "
                          "list of redirected ports already leaves every other port alone)")
    if not cfg.families:
        raise OptionError("--ipv4/--ipv6: at least one address family")


def _mine(nets: Sequence[Network] | None, family: Family) -> list[str]:
    return [str(n) for n in nets or () if n.version == family]


def _exclusions(cfg: Interception, chain: str) -> list[str]:
    lines = []
    if cfg.proxy_uid is not None:
        lines.append(f"-A {chain} -m owner --uid-owner {cfg.proxy_uid} -j RETURN")
    if cfg.proxy_mark is not None:
        lines.append(f"-A {chain} -m mark --mark {cfg.proxy_mark} -j RETURN")
    return lines


def _to_self(cfg: Interception, family: Family) -> list[str]:
    """The proxy's own connections to this pod's non-loopback address (a pod calling its own
    Service: app -> outbound -> this pod's IP) go through the inbound side like any other
    caller's (Istio does the same).  They leave on `lo`; the inbound side then dials the app
    on loopback, which these rules skip, so there is no loop."""
    match = f"-A {CHAIN_OUTPUT} -o lo ! -d {LOOPBACK[family]}"
    lines = []
    if cfg.proxy_uid is not None:
        lines.append(f"{match} -m owner --uid-owner {cfg.proxy_uid} -j {CHAIN_INBOUND}")
    if cfg.proxy_mark is not None:
        lines.append(f"{match} -m mark --mark {cfg.proxy_mark} -j {CHAIN_INBOUND}")
    return lines


def chain_rules(cfg: Interception, family: Family) -> dict[str, list[str]]:
    """The rules of each of Tulle's chains that `cfg` uses, for one address family."""
    chains: dict[str, list[str]] = {}
    if cfg.redirect_dns:
        chains[CHAIN_DNS] = [
            *_exclusions(cfg, CHAIN_DNS),
            f"-A {CHAIN_DNS} -p udp -j REDIRECT --to-ports {cfg.dns_port}",
            f"-A {CHAIN_DNS} -p tcp -j REDIRECT --to-ports {cfg.dns_port}",
        ]
    inbound_on = cfg.include_inbound_ports is None or bool(cfg.include_inbound_ports)
    out = _to_self(cfg, family) if inbound_on else []
    out += [*_exclusions(cfg, CHAIN_OUTPUT), f"-A {CHAIN_OUTPUT} -d {LOOPBACK[family]} -j RETURN"]
    out += [f"-A {CHAIN_OUTPUT} -p tcp --dport {p} -j RETURN" for p in cfg.exclude_outbound_ports]
    out += [f"-A {CHAIN_OUTPUT} -d {n} -j RETURN" for n in _mine(cfg.exclude_outbound, family)]
    redirect = f"-p tcp -j REDIRECT --to-ports {cfg.outbound_port}"
    if cfg.include_outbound is None:
        out.append(f"-A {CHAIN_OUTPUT} {redirect}")
    else:
        out += [f"-A {CHAIN_OUTPUT} -d {n} {redirect}"
                for n in _mine(cfg.include_outbound, family)]
    chains[CHAIN_OUTPUT] = out
    if inbound_on:
        redirect = f"-j REDIRECT --to-ports {cfg.inbound_port}"
        if cfg.include_inbound_ports is None:
            inbound = [f"-A {CHAIN_INBOUND} -p tcp --dport {p} -j RETURN"
                       for p in cfg.exclude_inbound_ports]
            inbound.append(f"-A {CHAIN_INBOUND} -p tcp {redirect}")
        else:
            inbound = [f"-A {CHAIN_INBOUND} -p tcp --dport {p} {redirect}"
                       for p in cfg.include_inbound_ports]
        chains[CHAIN_INBOUND] = inbound
    return chains


def refuse_rules(cfg: Interception, family: Family) -> dict[str, list[str]]:
    """A family `cfg` does not intercept, refused: without these its TCP and UDP went around
    the proxy both ways (the application reached other pods' ports in plaintext, with no
    policy, and was reached the same way).  Loopback stays open (the application and its
    proxy), ICMP too (IPv6 neighbour discovery; no service answers ICMP), the proxy's own
    traffic and the replies to it too (a control plane reached over that family)."""
    reject = ["-p tcp -j REJECT --reject-with tcp-reset", "-j REJECT"]
    # RELATED out: the reset `REJECT` answers an inbound SYN with is related to it (and
    # leaves through OUTPUT); nothing of the application's is, its own SYN being refused.
    out = [f"-A {CHAIN_REFUSE_OUT} -o lo -j RETURN", *_exclusions(cfg, CHAIN_REFUSE_OUT),
           f"-A {CHAIN_REFUSE_OUT} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
           f"-A {CHAIN_REFUSE_OUT} -p {ICMP[family]} -j RETURN",
           *(f"-A {CHAIN_REFUSE_OUT} {r}" for r in reject)]
    inp = [f"-A {CHAIN_REFUSE_IN} -i lo -j RETURN",
           f"-A {CHAIN_REFUSE_IN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
           f"-A {CHAIN_REFUSE_IN} -p {ICMP[family]} -j RETURN",
           *(f"-A {CHAIN_REFUSE_IN} {r}" for r in reject)]
    return {CHAIN_REFUSE_IN: inp, CHAIN_REFUSE_OUT: out}


def refuse_jumps() -> list[str]:
    """Inserted first, not appended: a rule of somebody else's that accepts (`-A INPUT -j
    ACCEPT`) must not let the family around the refusal."""
    return [f"-I INPUT -j {CHAIN_REFUSE_IN}", f"-I OUTPUT -j {CHAIN_REFUSE_OUT}"]


def jumps(chains: Iterable[str]) -> list[str]:
    """The jumps from the built-in chains, DNS first (TCP 53 must not reach TULLE_OUTPUT)."""
    have = set(chains)
    lines = []
    if CHAIN_DNS in have:
        lines += [f"-A OUTPUT -p udp --dport 53 -j {CHAIN_DNS}",
                  f"-A OUTPUT -p tcp --dport 53 -j {CHAIN_DNS}"]
    if CHAIN_OUTPUT in have:
        lines.append(f"-A OUTPUT -p tcp -j {CHAIN_OUTPUT}")
    if CHAIN_INBOUND in have:
        lines.append(f"-A PREROUTING -p tcp -j {CHAIN_INBOUND}")
    return lines


@dataclass(frozen=True, slots=True)
class Installed:
    """Tulle's part of a `nat` table as `iptables-save` shows it."""

    chains: tuple[str, ...] = ()
    jumps: tuple[str, ...] = ()
    """`-A <builtin> ... -j TULLE_*` lines, verbatim."""
    filter_chains: tuple[str, ...] = ()
    """The refusal's chains in the `filter` table."""
    filter_jumps: tuple[str, ...] = ()

    @property
    def nat_empty(self) -> bool:
        return not self.chains and not self.jumps

    @property
    def empty(self) -> bool:
        return self.nat_empty and not self.filter_chains and not self.filter_jumps


def installed(save_output: str) -> Installed:
    """Find Tulle's chains and the jumps to them in `iptables-save` output (the `nat` table's
    and the refusal's in `filter`)."""
    found: dict[str, tuple[list[str], list[str]]] = {"*nat": ([], []), "*filter": ([], [])}
    ours = {"*nat": CHAINS, "*filter": FILTER_CHAINS}
    table = ""
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line
        elif table not in found:
            continue
        elif line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name in ours[table]:
                found[table][0].append(name)
        elif line.startswith("-A "):
            words = line.split()
            if (len(words) > 2 and words[1] in BUILTIN and "-j" in words
                    and words[words.index("-j") + 1] in ours[table]):
                found[table][1].append(line)
    (chains, jumped), (fchains, fjumped) = found["*nat"], found["*filter"]
    return Installed(tuple(chains), tuple(jumped), tuple(fchains), tuple(fjumped))


def restore_input(cfg: Interception | None, family: Family, before: Installed) -> str:
    """One `iptables-restore --noflush` transaction: `cfg` installed (None: all removed).  A
    family `cfg` leaves out gets the refusal (`refuse_rules`) instead of the redirects.

    Old jumps are deleted by their exact text, chains are declared (which creates or flushes
    them), refilled, jumped to again; chains no longer wanted are deleted last.  `filter` is
    named only when it holds or gets the refusal, and then `nat` only when it holds or gets
    redirects (the legacy backend creates a table that is named).
    """
    intercepted = cfg is not None and family in cfg.families
    wanted = chain_rules(cfg, family) if cfg is not None and intercepted else {}
    refusal = refuse_rules(cfg, family) if cfg is not None and not intercepted else {}
    lines = []
    filter_on = bool(refusal or before.filter_chains or before.filter_jumps)
    if wanted or not before.nat_empty or not filter_on:
        lines += _table("*nat", CHAINS, wanted, before.chains, before.jumps, jumps(wanted))
    if filter_on:
        lines += _table("*filter", FILTER_CHAINS, refusal, before.filter_chains,
                        before.filter_jumps, refuse_jumps() if refusal else [])
    return "\n".join(lines) + "\n"


def _table(name: str, ours: Sequence[str], wanted: dict[str, list[str]],
           chains: Sequence[str], old_jumps: Sequence[str], new_jumps: list[str]) -> list[str]:
    declared = [c for c in ours if c in wanted or c in chains]
    lines = [name, *(f":{c} - [0:0]" for c in declared)]
    lines += ["-D " + j[3:] for j in old_jumps]
    for chain in ours:
        lines += wanted.get(chain, [])
    lines += new_jumps
    lines += [f"-X {c}" for c in declared if c not in wanted]
    lines.append("COMMIT")
    return lines
