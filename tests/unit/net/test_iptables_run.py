"""Running the interception: backend choice, the transactions fed to iptables-restore, the VIP
routes and the errors, against a scripted runner (no root, no namespaces)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from tulle.net import iptables_run
from tulle.net.iptables import Interception, parse_cidrs
from tulle.net.iptables_run import InterceptionError, Tools

NFT = Tools("iptables-nft-save", "iptables-nft-restore")
LEGACY = Tools("iptables-legacy-save", "iptables-legacy-restore")
OURS = "*nat\n:OUTPUT ACCEPT [0:0]\n:TULLE_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j TULLE_OUTPUT\nCOMMIT\n"
FOREIGN = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"


class Script:
    """Answers commands by their first words; records every call and its stdin."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), stdin))
        for prefix, (code, out) in self.answers.items():
            if " ".join(argv).startswith(prefix):
                return subprocess.CompletedProcess(list(argv), code, out, out if code else "")
        return subprocess.CompletedProcess(list(argv), 0, "", "")

    def fed(self, tool: str) -> list[str]:
        """What was committed to `tool` (its `--test` runs left out)."""
        return [stdin or "" for argv, stdin in self.calls
                if argv[0] == tool and "--test" not in argv]


@pytest.fixture(autouse=True)
def root_and_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables_run.os, "geteuid", lambda: 0)
    monkeypatch.setattr(iptables_run.shutil, "which", lambda name: f"/usr/sbin/{name}")


def test_auto_prefers_the_backend_holding_tulle_chains_then_any_rules_then_nft() -> None:
    assert iptables_run.choose_backend("auto", 4, Script({"iptables-legacy-save": (0, OURS)})) \
        == [LEGACY]
    assert iptables_run.choose_backend("auto", 4, Script({"iptables-legacy-save": (0, FOREIGN)})) \
        == [LEGACY]
    assert iptables_run.choose_backend("auto", 4, Script({})) == [NFT]
    both = Script({"iptables-legacy-save": (0, OURS), "iptables-nft-save": (0, OURS)})
    assert iptables_run.choose_backend("auto", 4, both) == [NFT, LEGACY]
    # Detection never names a table: legacy would create it in the namespace.
    assert all("-t" not in argv for argv, _ in both.calls)


def test_apply_installs_in_one_backend_and_cleans_tulle_chains_out_of_the_other() -> None:
    script = Script({"iptables-legacy-save": (0, OURS), "iptables-nft-save": (0, OURS)})
    done = iptables_run.apply(Interception(families=(4,)), runner=script)
    assert done == ["IPv4: rules installed with iptables-nft-restore",
                    "IPv4: earlier rules removed with iptables-legacy-restore"]
    [nft] = script.fed("iptables-nft-restore")
    assert "-D OUTPUT -p tcp -j TULLE_OUTPUT" in nft and "-A OUTPUT -p tcp -j TULLE_OUTPUT" in nft
    [legacy] = script.fed("iptables-legacy-restore")
    assert "-X TULLE_OUTPUT" in legacy and "-A " not in legacy


def test_a_refused_ruleset_is_exit_4_with_the_tools_message() -> None:
    script = Script({"iptables-nft-restore": (1, "iptables-restore: line 5 failed")})
    with pytest.raises(InterceptionError) as exc:
        iptables_run.apply(Interception(families=(4,)), runner=script)
    assert exc.value.code == 4
    assert "iptables-nft-restore refused the ruleset: iptables-restore: line 5 failed" in str(
        exc.value)


def test_not_root_and_missing_tools_are_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables_run.os, "geteuid", lambda: 1000)
    with pytest.raises(InterceptionError, match="needs root") as exc:
        iptables_run.clean(runner=Script({}))
    assert exc.value.code == 3
    monkeypatch.setattr(iptables_run.os, "geteuid", lambda: 0)
    monkeypatch.setattr(iptables_run.shutil, "which", lambda name: None)
    with pytest.raises(InterceptionError, match="not found on PATH") as exc:
        iptables_run.apply(Interception(), runner=Script({}))
    assert exc.value.code == 3
    with pytest.raises(InterceptionError, match="iptables-legacy-save / -restore not found"):
        iptables_run.apply(Interception(), backend="legacy", runner=Script({}))


def test_vip_routes_only_where_nothing_routes_the_range() -> None:
    ranges = parse_cidrs("--vip-cidr", ["10.96.0.0/16,fd00:96::/112"])
    script = Script({
        "ip -4 route get 10.96.0.0": (2, "RTNETLINK answers: Network is unreachable"),
        "ip -6 route get fd00:96::": (0, "fd00:96:: from :: via fe80::1 dev eth0"),
        "ip -4 -o addr show scope global": (0, "2: eth0@if9    inet 10.231.0.2/24 ..."),
        "ip -4 route show proto 157": (0, "10.1.0.0/16 dev eth0 scope link\n"),
    })
    done = iptables_run.routes_apply(ranges, script)
    assert done == ["10.96.0.0/16: routed on eth0",
                    "fd00:96::/112: already routed (fd00:96:: from :: via fe80::1 dev eth0)"]
    ran = [" ".join(argv) for argv, _ in script.calls]
    assert "ip -4 route del 10.1.0.0/16 proto 157" in ran  # the previous apply's route
    assert "ip -4 route add 10.96.0.0/16 dev eth0 proto 157" in ran
    assert not any(r.startswith("ip -6 route add") for r in ran)


def test_dry_run_needs_no_root_and_shows_both_families(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables_run.os, "geteuid", lambda: 1000)
    text = iptables_run.dry_run(Interception(vip_ranges=parse_cidrs("x", ["10.96.0.0/16"])))
    assert text.count("COMMIT") == 2
    assert "# ip6tables-restore --noflush" in text
    assert "ip -4 route add 10.96.0.0/16 dev <pod interface> proto 157" in text


def test_every_family_is_tested_before_any_is_committed() -> None:
    script = Script({"ip6tables-nft-restore --noflush --wait 5 --test":
                     (2, "ip6tables-restore v1.8.9: can't initialize ip6tables table `nat'")})
    with pytest.raises(InterceptionError, match="can't initialize ip6tables table") as exc:
        iptables_run.apply(Interception(), runner=script)
    assert exc.value.code == 4
    committed = [argv for argv, _ in script.calls if "restore" in argv[0] and "--test" not in argv]
    assert committed == []
    assert [argv[0] for argv, _ in script.calls if "--test" in argv] == [
        "iptables-nft-restore", "ip6tables-nft-restore"]


def test_an_explicit_backend_still_takes_tulle_chains_out_of_the_other() -> None:
    """Applied with nft, then again with `--backend legacy`: the nft rules would still redirect
    (both backends take effect), so they go; `clean --backend legacy` cleans both as well."""
    script = Script({"iptables-nft-save": (0, OURS)})
    done = iptables_run.apply(Interception(families=(4,)), backend="legacy", runner=script)
    assert done == ["IPv4: rules installed with iptables-legacy-restore",
                    "IPv4: earlier rules removed with iptables-nft-restore"]
    [nft] = script.fed("iptables-nft-restore")
    assert "-X TULLE_OUTPUT" in nft and "-A " not in nft
    script = Script({"iptables-nft-save": (0, OURS), "iptables-legacy-save": (0, OURS)})
    done = iptables_run.clean(backend="legacy", families=(4,), runner=script)
    assert done == ["IPv4: rules removed with iptables-legacy-restore",
                    "IPv4: rules removed with iptables-nft-restore"]
    # A backend without Tulle's chains is not written to.
    script = Script({"iptables-legacy-save": (0, FOREIGN)})
    iptables_run.apply(Interception(families=(4,)), backend="legacy", runner=script)
    assert script.fed("iptables-nft-restore") == []


def test_a_range_of_a_family_the_pod_has_no_address_of_is_not_routed_and_said_so() -> None:
    """One init step with both families' ranges for every pod (ADR 0088): a single-stack pod
    cannot call the other family's VIPs, so that range is skipped, not an error."""
    ranges = parse_cidrs("--vip-cidr", ["10.96.0.0/16", "fd74:756c:6c65:7669::/112"])
    script = Script({"ip -4 route get 10.96.0.0": (2, "RTNETLINK answers: Network is unreachable"),
                     "ip -4 -o addr show scope global": (0, "2: eth0@if9    inet 10.231.0.2/24"),
                     "ip -6 route get fd74:756c:6c65:7669::": (2, "Network is unreachable"),
                     "ip -6 -o addr show scope global": (0, "")})
    done = iptables_run.apply(Interception(families=(4, 6), vip_ranges=ranges), runner=script)
    assert done[-2:] == ["10.96.0.0/16: routed on eth0",
                         "fd74:756c:6c65:7669::/112: not routed: no global IPv6 address here, "
                         "so nothing here can call it"]
    adds = [argv for argv, _ in script.calls if argv[:4] in (["ip", "-4", "route", "add"],
                                                           ["ip", "-6", "route", "add"])]
    assert adds == [["ip", "-4", "route", "add", "10.96.0.0/16", "dev", "eth0", "proto", "157"]]


def test_a_route_refused_after_the_rules_went_in_takes_them_out_again() -> None:
    ranges = parse_cidrs("--vip-cidr", ["10.96.0.0/16"])
    script = Script({"ip -4 route get 10.96.0.0": (2, "RTNETLINK answers: Network is unreachable"),
                     "ip -4 -o addr show scope global": (0, "2: eth0@if9    inet 10.231.0.2/24"),
                     "ip -4 route add": (2, "RTNETLINK answers: File exists"),
                     "iptables-nft-save": (0, OURS)})
    with pytest.raises(InterceptionError, match="rules just installed were removed again") as exc:
        iptables_run.apply(Interception(families=(4,), vip_ranges=ranges), runner=script)
    assert exc.value.code == 4 and "File exists" in str(exc.value)
    installed_then_removed = script.fed("iptables-nft-restore")
    assert len(installed_then_removed) == 2
    assert "-A OUTPUT -p tcp -j TULLE_OUTPUT" in installed_then_removed[0]
    assert "-X TULLE_OUTPUT" in installed_then_removed[1]
    assert "-A " not in installed_then_removed[1]


def test_a_family_the_pod_has_but_leaves_out_is_refused_and_one_it_lacks_untouched() -> None:
    has6 = Script({"ip -6 -o addr show": (0, "1: lo    inet6 ::1/128 scope host\n"
                                             "2: eth0    inet6 fe80::1/64 scope link\n")})
    done = iptables_run.apply(Interception(families=(4,)), runner=has6)
    assert done == ["IPv4: rules installed with iptables-nft-restore",
                    "IPv6: not intercepted (--no-ipv6), so refused in and out (loopback, ICMP "
                    "and the proxy's own traffic excepted) with ip6tables-nft-restore"]
    [six] = has6.fed("ip6tables-nft-restore")
    assert six.startswith("*filter") and "-I INPUT -j TULLE_REFUSE_IN" in six
    lo_only = Script({"ip -6 -o addr show": (0, "1: lo    inet6 ::1/128 scope host\n")})
    assert iptables_run.apply(Interception(families=(4,)), runner=lo_only) == [
        "IPv4: rules installed with iptables-nft-restore"]
    assert lo_only.fed("ip6tables-nft-restore") == []


def test_a_family_to_refuse_without_its_tools_is_exit_3_saying_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables_run.shutil, "which",
                        lambda name: None if name.startswith("ip6") else f"/usr/sbin/{name}")
    has6 = Script({"ip -6 -o addr show": (0, "2: eth0    inet6 fe80::1/64 scope link\n")})
    with pytest.raises(InterceptionError, match="IPv6 is on in this namespace and --no-ipv6 "
                       "leaves it to be refused") as exc:
        iptables_run.apply(Interception(families=(4,)), runner=has6)
    assert exc.value.code == 3
    assert has6.fed("iptables-nft-restore") == []  # nothing committed
