"""`tulle iptables apply|clean`: a pod's traffic interception, run inside its network namespace.

Exit codes: 0 done; 2 a bad option (the message names it); 3 not root or iptables missing;
4 iptables-restore or `ip route` refused (their message is shown).
"""

from __future__ import annotations

import sys
from typing import get_args

import click

from tulle.net.iptables import (
    Family,
    Interception,
    OptionError,
    parse_cidrs,
    parse_mark,
    parse_ports,
    validate,
)

_BACKENDS = ("auto", "nft", "legacy")


def _families(ipv4: bool, ipv6: bool) -> tuple[Family, ...]:
    return tuple(f for f, on in zip(get_args(Family), (ipv4, ipv6), strict=True) if on)


def _fail(message: str, code: int) -> None:
    click.echo(f"tulle iptables: {message}", err=True)
    sys.exit(code)


@click.group("iptables")
def iptables() -> None:
    """Redirect a pod's traffic to its proxy (run inside the pod's network namespace)."""


@iptables.command("apply")
@click.option("--outbound-port", default=15001, show_default=True, type=int,
              help="Where outbound TCP is redirected.")
@click.option("--inbound-port", default=15006, show_default=True, type=int,
              help="Where inbound TCP is redirected.")
@click.option("--dns-port", default=15053, show_default=True, type=int,
              help="Where DNS (UDP and TCP 53) is redirected.")
@click.option("--redirect-dns/--no-redirect-dns", default=True, show_default=True)
@click.option("--proxy-uid", default="1337", show_default=True,
              help="The proxy's uid: its own traffic is not redirected ('' for none).")
@click.option("--proxy-mark", default="", help="Also exempt packets with this mark "
              "(VALUE or VALUE/MASK), for a proxy that sets SO_MARK.")
@click.option("--outbound-cidrs", default="*", show_default=True,
              help="Comma-separated destinations to redirect ('*': all).")
@click.option("--exclude-outbound-cidrs", default="", help="Comma-separated CIDRs never "
              "redirected.")
@click.option("--exclude-outbound-ports", default="", help="Comma-separated destination ports "
              "never redirected (e.g. the control plane's 15680,15681).")
@click.option("--inbound-ports", default="*", show_default=True,
              help="Comma-separated inbound ports to redirect ('*': all, '': none).")
@click.option("--exclude-inbound-ports", default="", help="With --inbound-ports '*': ports "
              "reaching the application directly (health checks, metrics).")
@click.option("--vip-cidr", "vip_cidrs", multiple=True, metavar="CIDR",
              help="The mesh's virtual-IP range: routed through the pod's interface when "
                   "nothing routes it yet (repeatable, IPv4 or IPv6).")
@click.option("--ipv4/--no-ipv4", default=True, show_default=True,
              help="Intercept IPv4; left out where the pod has it, it is refused instead.")
@click.option("--ipv6/--no-ipv6", default=True, show_default=True,
              help="Intercept IPv6; left out where the pod has it (a link-local address is "
                   "enough), it is refused instead, never left around the proxy.")
@click.option("--backend", type=click.Choice(_BACKENDS), default="auto", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the rules; change nothing (no root needed).")
def apply_cmd(outbound_port: int, inbound_port: int, dns_port: int, redirect_dns: bool,
              proxy_uid: str, proxy_mark: str, outbound_cidrs: str, exclude_outbound_cidrs: str,
              exclude_outbound_ports: str, inbound_ports: str, exclude_inbound_ports: str,
              vip_cidrs: tuple[str, ...], ipv4: bool, ipv6: bool, backend: str,
              dry_run: bool) -> None:
    """Install the interception rules (again: replaces what an earlier apply installed)."""
    from tulle.net import iptables_run

    try:
        uid = proxy_uid.strip()
        if uid and not uid.isdigit():
            raise OptionError(f"--proxy-uid: {uid!r} is not a uid")
        cfg = Interception(
            outbound_port=outbound_port, inbound_port=inbound_port, dns_port=dns_port,
            redirect_dns=redirect_dns, proxy_uid=int(uid) if uid else None,
            proxy_mark=parse_mark("--proxy-mark", proxy_mark) if proxy_mark else None,
            include_outbound=(None if outbound_cidrs.strip() == "*"
                              else parse_cidrs("--outbound-cidrs", [outbound_cidrs])),
            exclude_outbound=parse_cidrs("--exclude-outbound-cidrs", [exclude_outbound_cidrs]),
            exclude_outbound_ports=parse_ports("--exclude-outbound-ports",
                                               exclude_outbound_ports),
            include_inbound_ports=(None if inbound_ports.strip() == "*"
                                   else parse_ports("--inbound-ports", inbound_ports)),
            exclude_inbound_ports=parse_ports("--exclude-inbound-ports", exclude_inbound_ports),
            vip_ranges=parse_cidrs("--vip-cidr", vip_cidrs),
            families=_families(ipv4, ipv6),
        )
        validate(cfg)
    except OptionError as exc:
        _fail(str(exc), 2)
        return
    if dry_run:
        click.echo(iptables_run.dry_run(cfg), nl=False)
        return
    try:
        for line in iptables_run.apply(cfg, backend=backend):  # type: ignore[arg-type]
            click.echo(line)
    except iptables_run.InterceptionError as exc:
        _fail(str(exc), exc.code)


@iptables.command("clean")
@click.option("--ipv4/--no-ipv4", default=True, show_default=True)
@click.option("--ipv6/--no-ipv6", default=True, show_default=True)
@click.option("--backend", type=click.Choice(_BACKENDS), default="auto", show_default=True)
def clean_cmd(ipv4: bool, ipv6: bool, backend: str) -> None:
    """Remove exactly what `apply` installed: Tulle's jumps, chains and VIP routes."""
    from tulle.net import iptables_run

    try:
        done = iptables_run.clean(backend=backend,  # type: ignore[arg-type]
                                  families=_families(ipv4, ipv6))
    except iptables_run.InterceptionError as exc:
        _fail(str(exc), exc.code)
        return
    for line in done or ["nothing to remove"]:
        click.echo(line)


def _add_node_commands() -> None:
    from tulle.cli.iptables_node import node

    iptables.add_command(node)


_add_node_commands()
