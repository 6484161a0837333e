"""`tulle iptables node apply|clean`: steer the pods behind a node to its agent (ADR 0047).

Runs in the node's network namespace, where the per-node agent runs.  Exit codes as for
`tulle iptables apply`: 2 a bad option, 3 not root or iptables missing, 4 refused.
"""

from __future__ import annotations

import sys

import click


def _fail(message: str, code: int) -> None:
    click.echo(f"tulle iptables node: {message}", err=True)
    sys.exit(code)


@click.group("node")
def node() -> None:
    """Steer the outbound TCP and the DNS of the pods behind this node to the node agent
    (agent mode)."""


@node.command("apply")
@click.option("--pod", "pods", multiple=True, required=True,
              metavar="ADDRESS=PORT[:INBOUND_PORT]",
              help="A pod behind this node and its outbound port on the agent (the workload's "
                   "outboundPort), and its inbound port there for a pod with "
                   "`interception: agent` and ports (inboundPort); repeat for every pod.")
@click.option("--dns-port", default=15053, show_default=True, type=click.IntRange(1, 65535),
              help="The agent's mesh DNS resolver port on its loopback.")
@click.option("--redirect-dns/--no-redirect-dns", default=True, show_default=True,
              help="Steer the pods' DNS (UDP and TCP 53) to the agent's resolver.")
@click.option("--ipv6/--no-ipv6", default=True, show_default=True,
              help="Kept for old scripts: the served pods' IPv6 TCP and UDP are refused "
                   "wherever the node has IPv6, either way (agent mode is IPv4: nothing may "
                   "pass around the agent; ADR 0114).")
@click.option("--dry-run", is_flag=True, help="Print the rules; change nothing (no root needed; "
              "interfaces are shown as <dev>).")
def apply_cmd(pods: tuple[str, ...], dns_port: int, redirect_dns: bool, ipv6: bool,
              dry_run: bool) -> None:
    """Install the steering rules (again: replaces what an earlier apply installed)."""
    from tulle.net import node_steer, node_steer6
    from tulle.net.iptables_run import InterceptionError

    try:
        parsed = [node_steer.parse_pod(p) for p in pods]
        node_steer.check_pods(parsed)
    except ValueError as exc:
        _fail(str(exc), 2)
        return
    if dry_run:
        shown = [node_steer.PodSteer(p.address, p.port, "<dev>", p.inbound) for p in parsed]
        click.echo(node_steer.restore_input(shown, "", ["<uplink>"],
                                            dns_port if redirect_dns else 0), nl=False)
        click.echo("# ip6tables-restore --noflush (where the node has IPv6)")
        click.echo(node_steer6.restore_input(["<dev>"], ""), nl=False)
        return
    try:
        refuse6 = node_steer6.needed()
        if refuse6:
            node_steer6.check_tools()  # before anything is installed
        done = node_steer.apply(parsed, dns_port=dns_port if redirect_dns else 0)
        if refuse6:
            if not ipv6:
                done.append("--no-ipv6: IPv6 is on here, so the served pods' IPv6 is refused "
                            "anyway (agent mode steers IPv4 only)")
            done += node_steer6.apply([p.device for p in node_steer.resolve(parsed)])
        for line in done:
            click.echo(line)
    except (InterceptionError, ValueError) as exc:
        _fail(str(exc), getattr(exc, "code", 2))


@node.command("clean")
def clean_cmd() -> None:
    """Remove exactly what `apply` installed (the chains, their jumps, route_localnet)."""
    from tulle.net import node_steer, node_steer6
    from tulle.net.iptables_run import InterceptionError

    try:
        done = node_steer.clean()
        if node_steer6.available():
            done += node_steer6.clean()
    except InterceptionError as exc:
        _fail(str(exc), exc.code)
        return
    for line in done or ["nothing to remove"]:
        click.echo(line)
