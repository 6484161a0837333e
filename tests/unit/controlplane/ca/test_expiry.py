"""`tulle check`'s certificate findings: each threshold, and the order they are listed in."""

from __future__ import annotations

import datetime as dt

from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.ca.expiry import (
    ProxyCert,
    ca_findings,
    order,
    proxy_findings,
    rotation_findings,
)
from tulle.controlplane.ca.rotation import CAState, ProxyView, progress

NOW = dt.datetime.now(dt.UTC)


def test_root_expiry_warns_within_the_window_and_errs_after() -> None:
    ca = CertificateAuthority.generate("cluster.local", now=NOW)  # ten years
    state = CAState.single(ca)
    assert ca_findings(state, NOW) == []
    near = ca_findings(state, NOW + dt.timedelta(days=3650 - 29))
    assert [(f.severity, f.code) for f in near] == [("warning", "RootExpiresSoon")]
    assert near[0].hint.startswith("`tulle ca rotate`")
    assert ca_findings(state, NOW, dt.timedelta(days=3651))[0].code == "RootExpiresSoon"
    gone = ca_findings(state, NOW + dt.timedelta(days=3651))
    assert [(f.severity, f.code) for f in gone] == [("error", "RootExpired")]


def test_the_time_left_is_written_in_the_unit_that_reads() -> None:
    """A CA 94 s from its end once read "(0.0 days)"."""
    ca = CertificateAuthority.generate("cluster.local", now=NOW)
    state = CAState.single(ca)
    end = ca.cert.not_valid_after_utc
    for left, text in ((dt.timedelta(days=12, hours=12), "(in 12.5 days)"),
                       (dt.timedelta(hours=5, minutes=30), "(in 5.5 hours)"),
                       (dt.timedelta(seconds=94), "(in 1 min 34 s)")):
        [f] = ca_findings(state, end - left)
        assert text in f.message, (left, f.message)


def test_the_hint_for_an_operators_file_ca_is_to_replace_the_files() -> None:
    """`tulle ca rotate` refuses a CA from --ca-cert/--ca-key ("replace the files"): the
    findings about it must not send the operator there."""
    state = CAState.single(CertificateAuthority.generate("cluster.local", now=NOW))
    for when in (NOW + dt.timedelta(days=3650 - 29), NOW + dt.timedelta(days=3651)):
        [f] = ca_findings(state, when, from_files=True)
        assert f.hint.startswith("replace the --ca-cert / --ca-key files"), f
        assert "tulle ca rotate" not in f.message
        [g] = ca_findings(state, when)
        assert g.code == f.code and g.hint.startswith("`tulle ca rotate`")


def test_every_certificate_finding_has_a_hint_in_its_json() -> None:
    """check.md lists a hint for each; `tulle check -o json` shows what `to_dict` gives."""
    t, day = int(NOW.timestamp()), 86400
    state = CAState.single(CertificateAuthority.generate("cluster.local", now=NOW))
    found = [*ca_findings(state, NOW + dt.timedelta(days=3650 - 29)),
             *ca_findings(state, NOW + dt.timedelta(days=3651)),
             *proxy_findings([ProxyCert("shop/late", t - day * 7 // 10, t + day * 3 // 10),
                              ProxyCert("shop/dead", t - day - 5, t - 5)], NOW)]
    assert sorted(f.code for f in found) == ["CertExpired", "CertPastRenewal", "RootExpired",
                                             "RootExpiresSoon"]
    for f in found:
        assert f.to_dict().get("hint"), f


def test_proxy_certificates_past_two_thirds_or_expired() -> None:
    t = int(NOW.timestamp())
    day = 86400
    found = proxy_findings([
        ProxyCert("shop/fresh", t - day // 2, t + day // 2),        # at 1/2: fine
        ProxyCert("shop/late", t - day * 7 // 10, t + day * 3 // 10),  # at 7/10: warning
        ProxyCert("shop/dead", t - day - 5, t - 5),                  # expired: error
        ProxyCert("shop/unknown", 0, 0),                             # never signed here
    ], NOW)
    assert [(f.severity, f.code, f.object) for f in order(found)] == [
        ("error", "CertExpired", "proxy shop/dead"),
        ("warning", "CertPastRenewal", "proxy shop/late")]


def test_a_proxy_off_its_stream_is_told_of_only_when_its_certificate_expired() -> None:
    """It cannot renew, so "not renewed" says nothing; an expiry while it was away is an
    error all the same (it once went unreported)."""
    t, day = int(NOW.timestamp()), 86400
    found = proxy_findings([
        ProxyCert("shop/away-late", t - day * 7 // 10, t + day * 3 // 10, connected=False),
        ProxyCert("shop/away-dead", t - day - 5, t - 5, connected=False),
    ], NOW)
    assert [(f.severity, f.code, f.object) for f in found] == [
        ("error", "CertExpired", "proxy shop/away-dead")]
    assert "while it was off its stream" in found[0].message


def test_a_rotation_half_done_is_a_warning_naming_who_holds_it() -> None:
    old, new = (CertificateAuthority.generate("cluster.local"),
                CertificateAuthority.generate("cluster.local"))
    idle = CAState.single(old)
    assert rotation_findings(idle, progress(idle, []), NOW) == []
    s = idle.start(new, NOW)
    held = progress(s, [ProxyView("shop/a", True, "", "")])
    f = rotation_findings(s, held, NOW)
    assert [(x.severity, x.code) for x in f] == [("warning", "RotationInProgress")]
    assert "add-root" in f[0].message and "shop/a" in f[0].message
    assert "run `tulle ca rotate` to go on" in rotation_findings(s, progress(s, []), NOW)[0].message
