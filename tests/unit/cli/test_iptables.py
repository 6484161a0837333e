"""`tulle iptables` as an operator types it: --dry-run output, refused options, exit codes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tulle.cli.commands import cli


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["iptables", *args])
    return result.exit_code, result.stdout, result.stderr


def test_dry_run_prints_both_families_with_the_options_applied() -> None:
    code, out, _ = _run("apply", "--dry-run", "--proxy-uid", "2000", "--exclude-outbound-ports",
                        "15680,15681", "--inbound-ports", "8080", "--no-redirect-dns",
                        "--no-ipv6")
    assert code == 0
    assert "-A TULLE_OUTPUT -m owner --uid-owner 2000 -j RETURN" in out
    assert "-A TULLE_OUTPUT -p tcp --dport 15681 -j RETURN" in out
    assert "-A TULLE_PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 15006" in out
    assert "TULLE_DNS" not in out
    # IPv6 left out: no redirects of it, its refusal instead (ADR 0111).
    ipv6 = out[out.index("# ip6tables-restore"):]
    assert ipv6.startswith("# ip6tables-restore --noflush, when the namespace has IPv6 "
                           "(refused: not intercepted)\n*filter\n")
    assert "REDIRECT" not in ipv6 and "-I INPUT -j TULLE_REFUSE_IN" in ipv6


@pytest.mark.parametrize(("args", "message"), [
    (["--proxy-uid", "nobody"], "--proxy-uid: 'nobody' is not a uid"),
    (["--proxy-uid", ""], "--proxy-uid/--proxy-mark: the proxy's own traffic must be excluded"),
    (["--inbound-ports", "80,x"], "--inbound-ports: 'x' is not a port"),
    (["--vip-cidr", "10.96.0.0/33"], "--vip-cidr: '10.96.0.0/33' is not a CIDR"),
    (["--no-ipv4", "--no-ipv6"], "--ipv4/--ipv6: at least one address family"),
    # Nothing a user passes can add a line to the iptables-restore input.
    (["--proxy-mark", "0x1\n-A OUTPUT -j DROP"], "--proxy-mark: "),
    (["--exclude-outbound-cidrs", "10.0.0.0/8\n-A OUTPUT -j DROP"], "is not a CIDR"),
])
def test_bad_options_exit_2_naming_the_option_and_change_nothing(args: list[str],
                                                               message: str) -> None:
    code, out, err = _run("apply", "--dry-run", *args)
    assert code == 2
    assert out == ""
    assert err.startswith("tulle iptables: ")
    assert message in err


def test_the_command_is_listed() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "iptables" in result.stdout
