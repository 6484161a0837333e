"""`tulle control-plane run --ca-cert/--ca-key` with files it cannot use: one `Error:` line on
stderr naming the option and the reason, exit status 2 (a bad option), no traceback (audit: a
key file others could read ended a ~50-line traceback).  The real CLI, as a process."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.support.certs import operator_root, write_ca_files
from tests.support.cli import PYTHONPATH, TULLE
from tests.support.proxy import free_port

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _cert(key: PrivateKey, *, ca: bool = True) -> x509.Certificate:
    return operator_root(key, ca=ca)


def _files(tmp: Path, name: str, cert: x509.Certificate, key: PrivateKey,
           mode: int = 0o600) -> tuple[str, str]:
    cert_path, key_path = write_ca_files(tmp, cert, key, mode, name)
    return str(cert_path), str(key_path)


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(what, the CA options, the reason the one line must give)."""
    p256, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    p384, rsa_key = ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537,
                                                                                       2048)
    cert, key = _files(tmp, "open", _cert(p256), p256, 0o644)
    cases = [("mode 0644", [cert, key], f"--ca-key {key}: mode 0644 lets others read it; "
                                        f"chmod 600 it")]
    for what, c, k, reason in (
            ("RSA key", _cert(rsa_key), rsa_key,
             "the key is not an ECDSA key (RSA); the mesh uses ECDSA P-256"),
            ("P-384 key", _cert(p384), p384, "the CA key is secp384r1; the mesh uses ECDSA P-256"),
            ("mismatched key", _cert(p256), other, "the CA key does not match the CA certificate"),
            ("not a CA", _cert(p256, ca=False), p256,
             "the CA certificate is not a CA (basicConstraints CA:TRUE missing)")):
        cert, key = _files(tmp, what.replace(" ", "-"), c, k)
        cases.append((what, [cert, key], f"--ca-cert {cert} / --ca-key {key}: {reason}"))
    cert, key = _files(tmp, "good", _cert(p256), p256)
    missing = str(tmp / "missing.pem")
    cases += [("missing key file", [cert, missing], f"--ca-key {missing}: No such file"),
              ("missing cert file", [missing, key], f"--ca-cert {missing}: No such file"),
              ("key without cert", ["", key], "give both --ca-cert and --ca-key, or neither")]
    return cases


async def _start(tmp: Path, ca_cert: str, ca_key: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        TULLE, "control-plane", "run", "--store", f"sqlite:{tmp}/cp-{free_port()}.db",
        "--api-port", str(free_port()), "--stream-port", str(free_port()),
        "--ca-cert", ca_cert, "--ca-key", ca_key,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **PYTHONPATH},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:  # it started after all: the test fails, nothing is left
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_unusable_ca_files_are_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    results = await asyncio.gather(*(_start(tmp_path, *files) for _, files, _ in cases))
    for (what, _, reason), (code, out, err) in zip(cases, results, strict=True):
        assert "Traceback" not in out + err, (what, err)
        assert code == 2, (what, code, err)
        assert out == "", (what, out)
        assert err.splitlines() == [err.strip()] and err.startswith("Error: "), (what, err)
        assert reason in err, (what, err)
        assert "PRIVATE KEY" not in err



async def test_a_damaged_ca_record_in_the_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """The files are checked before start; the CA the first start kept in the store is read
    later.  A damaged record there (a restore gone wrong) is one line too, naming the remedy
    and never the key."""
    db = tmp_path / "cp.db"
    api = free_port()
    args = [TULLE, "control-plane", "run", "--store", f"sqlite:{db}", "--api-port", str(api),
            "--stream-port", str(free_port()), "--admin-token-file", str(tmp_path / "admin")]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **PYTHONPATH}
    first = await asyncio.create_subprocess_exec(*args, env=env,
                                                 stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.DEVNULL)
    try:  # the first start makes the CA and keeps it in the store
        for _ in range(300):
            try:
                async with aiohttp.ClientSession() as s, s.get(
                        f"http://127.0.0.1:{api}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the first control plane never became ready")
    finally:
        first.terminate()
        await first.wait()
    with sqlite3.connect(db) as c:
        (obj,) = c.execute("select object from resources where kind = "
                           "'InternalCertificateAuthority'").fetchone()
        doc = json.loads(obj)
        doc["spec"]["keyPem"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        c.execute("update resources set object = ? where kind = "
                  "'InternalCertificateAuthority'", (json.dumps(doc),))
    proc = await asyncio.create_subprocess_exec(*args, env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 1 and "Traceback" not in text, text
    assert text.splitlines() == [text.strip()], text
    assert text.startswith("Error: the stored CA: the key is not an unencrypted PEM private key")
    assert "restore the store from a backup" in text and "AAAA" not in text
