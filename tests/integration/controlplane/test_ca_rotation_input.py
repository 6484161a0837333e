"""Bad input and attacks on `tulle ca rotate` (ADR 0035), against a real control plane on
127.0.0.1 and the real CLI: an operator CA with the wrong curve, a key that does not match its
certificate or a key file others can read is refused with the reason and changes nothing; a
read-only API token cannot rotate (403); a certificate of the retired root is refused on the
stream; no key reaches a response or a log line.  And the operator's CA, given by flags,
becomes the mesh's."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.certs import issued, operator_root, write_ca_files
from tests.support.cli import tulle
from tests.support.controlplane import (
    auth,
    eventually,
    first_answer,
    open_stream,
    running_control_plane,
)

from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.ca.persist import CA_KIND, CA_NAME
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.controlplane.main import ControlPlane
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import (
    Error,
    Hello,
    Message,
    TrustUpdate,
    WorkloadInfo,
    encode,
)

NS = "shop"


def _ca_files(tmp: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
              mode: int = 0o600, name: str = "new-ca") -> tuple[Path, Path]:
    return write_ca_files(tmp, cert, key, mode, name)


def _root(key: ec.EllipticCurvePrivateKey, cn: str = "operator root") -> x509.Certificate:
    return operator_root(key, cn=cn)


async def _get(api: str, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, s.get(f"{api}{path}") as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def _record_version(cp: ControlPlane) -> str:
    assert cp.store is not None
    obj = await cp.store.get(CA_KIND, None, CA_NAME)
    return str(obj["metadata"]["resourceVersion"])


def _key_lines(key: ec.EllipticCurvePrivateKey) -> list[str]:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return [line for line in pem.splitlines() if "PRIVATE KEY" not in line]


async def test_a_control_plane_refuses_to_start_with_a_ca_not_valid_yet(tmp_path: Path) -> None:
    from tulle.controlplane.ca.authority import CAError

    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = _ca_files(tmp_path, operator_root(
        key, starts_in=dt.timedelta(hours=2)), key, name="future")
    with pytest.raises(CAError, match="is not valid before .*every peer would refuse"):
        async with running_control_plane(ca_cert=str(cert_path), ca_key=str(key_path)):
            pass


async def test_a_bad_operator_ca_is_refused_with_the_reason_and_nothing_changes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_control_plane() as cp:
        before, rv = await _get(cp.api_url, "/api/v1/ca"), await _record_version(cp)
        p384 = ec.generate_private_key(ec.SECP384R1())
        good, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
            ec.SECP256R1())
        cases = [
            ("wrong curve", _ca_files(tmp_path, _root(p384), p384, name="p384"),
             "the CA key is secp384r1; the mesh uses ECDSA P-256"),
            ("mismatched", _ca_files(tmp_path, _root(good), other, name="mismatched"),
             "the CA key does not match the CA certificate"),
            ("mode 0644", _ca_files(tmp_path, _root(good), good, 0o644, name="open"),
             "mode 0644 lets others read it; chmod 600 it"),
            # Not valid for two hours: once taken, every handshake with what it signed failed.
            ("not yet valid", _ca_files(tmp_path, operator_root(
                good, starts_in=dt.timedelta(hours=2)), good, name="future"),
             "is not valid before"),
        ]
        texts: list[str] = []
        for what, (cert_path, key_path), reason in cases:
            code, out, err = await tulle(cp.api_url, "ca", "rotate", "--ca-cert",
                                         str(cert_path), "--ca-key", str(key_path))
            assert code != 0, what
            assert reason in err, (what, err)
            texts += [out, err]
        # The API says the same to a caller that skips the CLI, as 422.
        async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
            for key in (p384, other):
                cert = _root(p384) if key is p384 else _root(good)
                body = {"certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
                        "keyPem": "\n".join(["-----BEGIN PRIVATE KEY-----", *_key_lines(key),
                                             "-----END PRIVATE KEY-----"])}
                async with s.post(f"{cp.api_url}/api/v1/ca/rotation", json=body) as r:
                    assert r.status == 422
                    texts.append(await r.text())
            async with s.post(f"{cp.api_url}/api/v1/ca/rotation",
                              json={"certPem": "x"}) as r:
                assert r.status == 422 and "give both" in await r.text()
        assert await _get(cp.api_url, "/api/v1/ca") == before
        assert await _record_version(cp) == rv
        for key in (p384, good, other):
            for line in _key_lines(key):
                assert all(line not in t for t in texts)
                assert line not in caplog.text


async def test_a_read_only_token_cannot_rotate(tmp_path: Path) -> None:
    async with running_control_plane() as cp:
        async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.post(
                f"{cp.api_url}/api/v1/api-tokens", json={"role": "read-only"}) as r:
            assert r.status == 201
            reader = (await r.json())["token"]
        rv = await _record_version(cp)
        headers = {"Authorization": f"Bearer {reader}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            for path in ("/api/v1/ca/rotation", "/api/v1/ca/rotation/advance"):
                async with s.post(f"{cp.api_url}{path}", json={}) as r:
                    assert r.status == 403, path
            async with s.get(f"{cp.api_url}/api/v1/ca") as r:  # reading is allowed
                assert r.status == 200
                assert "PRIVATE KEY" not in await r.text()
        code, _, err = await tulle(cp.api_url, "ca", "rotate", token=reader)
        assert code == 1 and "read-only token cannot POST /api/v1/ca/rotation" in err, err
        async with aiohttp.ClientSession() as s, s.post(
                f"{cp.api_url}/api/v1/ca/rotation", json={}) as r:
            assert r.status == 401
        assert await _record_version(cp) == rv


async def _hello(port: int, hello: Hello) -> Message:
    return await first_answer(port, hello)


def _cert_hello(ca: CertificateAuthority, name: str) -> Hello:
    """A hello presenting a certificate `ca` signed for `name`, with a valid proof."""
    key = WorkloadKey()
    signed = ca.sign_csr(key.csr(NS, name), SpiffeId("cluster.local", NS, name), name)
    at = int(time.time())  # noqa: TID251 - the proof's wall-clock time
    return Hello(workload=WorkloadInfo(name=name, namespace=NS, address="127.0.0.1",
                                       service_account=name),
                 api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED),
                 certificate=signed.chain_pem, proof_time=at, proof=key.proof(NS, name, at))


async def test_the_stream_admits_old_root_certificates_while_reissuing_never_after(
        tmp_path: Path) -> None:
    """With no proxy connected every stage is done at once; the CLI still takes them one by
    one.  Mid-rotation (reissue) a proxy presenting an old-CA certificate is admitted and told
    to renew; once the old root is retired it is refused."""
    async with running_control_plane() as cp:
        old = cp.ca
        assert old is not None
        for _ in range(2):  # add-root, then reissue
            code, _, err = await tulle(cp.api_url, "ca", "rotate", "--step")
            assert code == 0, err
        assert (await _get(cp.api_url, "/api/v1/ca"))["stage"] == "reissue"
        answer = await _hello(cp.stream_port, _cert_hello(old, "web"))
        assert isinstance(answer, TrustUpdate) and answer.renew, answer
        assert len(answer.trust_bundle) == 2
        code, out, err = await tulle(cp.api_url, "ca", "rotate")
        assert code == 0 and "stage idle:" in out, err
        answer = await _hello(cp.stream_port, _cert_hello(old, "web2"))
        assert isinstance(answer, Error)
        assert "not issued by this mesh's CA" in answer.reason
        assert cp.ca is not None and cp.ca.cert != old.cert
        answer = await _hello(cp.stream_port, _cert_hello(cp.ca, "web3"))
        assert not isinstance(answer, Error), answer


async def test_the_operators_ca_becomes_the_mesh_ca_and_check_reports_expiry(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_control_plane() as cp:
        key = ec.generate_private_key(ec.SECP256R1())
        root = _root(key)
        cert_path, key_path = _ca_files(tmp_path, root, key)
        code, out, err = await tulle(cp.api_url, "ca", "rotate", "--ca-cert", str(cert_path),
                                     "--ca-key", str(key_path))
        assert code == 0, err
        assert "stage idle:" in out
        assert cp.ca is not None and cp.ca.cert == root
        st = await _get(cp.api_url, "/api/v1/ca")
        assert [r["subject"] for r in st["roots"]] == ["CN=operator root"]
        assert "PRIVATE KEY" not in json.dumps(st)
        code, out, _ = await tulle(cp.api_url, "ca", "rotate", "--status", "-o", "json")
        assert code == 0 and "PRIVATE KEY" not in out
        for line in _key_lines(key):
            assert line not in caplog.text and line not in out

        # The operator's root expires in 20 days: within the default 30, a warning.
        code, out, _ = await tulle(cp.api_url, "check", "-o", "json")
        assert code == 0
        findings = json.loads(out)["findings"]
        assert [(f["severity"], f["code"]) for f in findings] == [
            ("warning", "RootExpiresSoon")]
        assert findings[0]["hint"].startswith("`tulle ca rotate`")  # rotated in: the store's
        code, out, _ = await tulle(cp.api_url, "check", "--root-warn-days", "10")
        assert code == 0 and out.splitlines()[1:] == ["no findings"]
        code, out, _ = await tulle(cp.api_url, "check")
        assert code == 0 and out.splitlines()[1].startswith("WARNING  RootExpiresSoon")


async def test_check_warns_of_a_proxy_certificate_not_renewed_then_errs_once_expired() -> None:
    """A proxy that never renews (a raw stream client) with 3 s certificates: past 2 s its
    certificate is past 2/3 of its lifetime (warning), past 3 s expired (error, exit 1); the
    expiry is in `tulle get proxies` too."""
    from tests.support.controlplane import authenticated

    async with running_control_plane(cert_ttl=dt.timedelta(seconds=3)) as cp:
        hello = await authenticated(cp.api_url, Hello(
            workload=WorkloadInfo(name="stuck", namespace=NS, address="127.0.0.1"),
            api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED)))
        reader, writer = await open_stream(cp.stream_port)
        try:
            writer.write(encode(hello))
            assert await reader.read(65536)  # the certificate: admitted

            async def codes() -> list[str]:
                code, out, _ = await tulle(cp.api_url, "check", "-o", "json")
                findings = json.loads(out)["findings"]
                found = [f["code"] for f in findings]
                assert code == (1 if "CertExpired" in found else 0)
                assert all(f.get("hint") for f in findings if f["code"].startswith("Cert"))
                # (the raw client never ACKs: it is also ProxyNotInSync, not the point here)
                return [c for c in found if c.startswith("Cert")]

            async def past_renewal() -> bool:
                return await codes() == ["CertPastRenewal"]

            async def expired() -> bool:
                return await codes() == ["CertExpired"]

            await eventually(past_renewal, timeout=10, interval=0.2)
            await eventually(expired, timeout=10, interval=0.2)
            code, out, _ = await tulle(cp.api_url, "get", "proxies", "-n", NS)
            assert "stuck" in out and "Z" in out.splitlines()[1]  # the expiry, in UTC
        finally:
            writer.close()


async def test_a_ca_from_files_is_not_rotated_by_the_command(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = _ca_files(tmp_path, _root(key), key, name="files")
    async with running_control_plane(ca_cert=str(cert_path), ca_key=str(key_path)) as cp:
        st = await _get(cp.api_url, "/api/v1/ca")
        assert st["rotatable"] is False and st["stage"] == "idle"
        code, _, err = await tulle(cp.api_url, "ca", "rotate")
        assert code == 1
        assert "comes from --ca-cert/--ca-key files" in err and "replace the files" in err
        assert cp.ca is not None and cp.ca.cert == _root_of(cert_path)


def _root_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


async def test_check_tells_to_replace_the_files_of_an_operators_ca(tmp_path: Path) -> None:
    """A CA from --ca-cert/--ca-key is not rotated by `tulle ca rotate` (it refuses: "replace
    the files"); `tulle check` says so in its hint instead of sending the operator there."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = _ca_files(tmp_path, _root(key), key, name="files")  # 20 days left
    async with running_control_plane(ca_cert=str(cert_path), ca_key=str(key_path)) as cp:
        code, out, _ = await tulle(cp.api_url, "check", "-o", "json")
        assert code == 0, out
        [f] = json.loads(out)["findings"]
        assert (f["severity"], f["code"]) == ("warning", "RootExpiresSoon")
        assert f["hint"].startswith("replace the --ca-cert / --ca-key files"), f
        assert "tulle ca rotate" not in f["message"]
        code, out, _ = await tulle(cp.api_url, "check")
        assert "hint: replace the --ca-cert / --ca-key files" in out
        code, _, err = await tulle(cp.api_url, "ca", "rotate")
        assert code != 0 and "replace the files" in err  # what the hint spares the operator


async def test_a_fresh_certificate_presented_again_is_not_past_renewal() -> None:
    """A proxy reconnecting with the 60 s certificate it was just given: `tulle check` once
    read its lifetime from the backdated notBefore (6 min, of which 5 already used) and
    warned CertPastRenewal at once."""
    from tests.support.controlplane import issue_token

    from tulle.proxyconfig.stream import Certificate

    async with running_control_plane(cert_ttl=dt.timedelta(seconds=60)) as cp:
        w = WorkloadInfo(name="fresh-0", namespace=NS, address="127.0.0.1")
        key = WorkloadKey()
        token = await issue_token(cp.api_url, w)
        got = await first_answer(cp.stream_port, Hello(
            workload=w, api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED),
            token=token, csr=key.csr(NS, "fresh-0")))
        assert isinstance(got, Certificate), got
        now = int(time.time())  # noqa: TID251 - wall clock: the proof names a moment
        reader, writer = await open_stream(cp.stream_port)
        try:
            writer.write(encode(Hello(
                workload=w, api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED),
                certificate=got.cert_chain, proof_time=now, proof=key.proof(NS, "fresh-0", now))))
            assert await reader.read(65536)  # admitted by its certificate

            async def seen() -> bool:
                body = await _get(cp.api_url, "/api/v1/proxies")
                return any(p.get("name") == "fresh-0" and p.get("connected")
                           for p in body["items"])

            await eventually(seen, timeout=5, interval=0.1)
            code, out, _ = await tulle(cp.api_url, "check", "-o", "json")
            found = [f["code"] for f in json.loads(out)["findings"]]
            assert "CertPastRenewal" not in found and "CertExpired" not in found, found
        finally:
            writer.close()


async def test_a_new_intermediate_under_the_same_root_keeps_every_proxy_admitted(
        tmp_path: Path) -> None:
    """The operator's CA is replaced as the hint says: new files (an intermediate under the
    same root) and a restart.  A proxy's certificate from the intermediate before still
    chains to the trusted root, so its next hello is admitted (every proxy was refused)."""
    from tests.support.controlplane import issue_token

    from tulle.proxyconfig.stream import Certificate, Snapshot

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = operator_root(root_key, cn="operator root")

    def intermediate(cn: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issued(cn, root, root_key, key, ca=True)
        cert_path, key_path = _ca_files(tmp_path, cert, key, name=cn)
        cert_path.write_bytes(cert_path.read_bytes() + root.public_bytes(
            serialization.Encoding.PEM))
        return cert_path, key_path

    w = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1")
    key = WorkloadKey()
    c1, k1 = intermediate("int-1")
    async with running_control_plane(ca_cert=str(c1), ca_key=str(k1)) as cp:
        token = await issue_token(cp.api_url, w)
        got = await first_answer(cp.stream_port, Hello(
            workload=w, api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED),
            token=token, csr=key.csr(NS, "web-0")))
        assert isinstance(got, Certificate), got
    c2, k2 = intermediate("int-2")
    async with running_control_plane(ca_cert=str(c2), ca_key=str(k2)) as cp:
        now = int(time.time())  # noqa: TID251 - wall clock: the proof names a moment
        answer = await first_answer(cp.stream_port, Hello(
            workload=w, api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED),
            certificate=got.cert_chain, proof_time=now, proof=key.proof(NS, "web-0", now)))
        assert not isinstance(answer, Error), answer  # admitted (its first answer: the bundle)
        assert isinstance(answer, (Snapshot, Certificate, TrustUpdate)), answer
