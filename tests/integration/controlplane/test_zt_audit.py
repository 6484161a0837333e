"""Zero-trust attack audit (identity, mTLS, authorization): a real control plane and real
proxies on loopback, attacked as a process that has taken over one workload would.

Each test here failed on the defect it names when it was written (see the docstrings); it
passes once the defect is fixed.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.integration.controlplane.test_authorization import tcp_echo
from tests.integration.controlplane.test_mtls import (
    NS,
    SERVER_ADDR,
    _answers,
    apply_db_and_its_client,
    mesh_doc,
    running_mesh,
    workload,
)
from tests.integration.controlplane.test_negotiation import RawProxy
from tests.support.certs import issued, operator_root, write_ca_files
from tests.support.controlplane import (
    apply,
    eventually,
    first_answer,
    issue_token,
    running_control_plane,
    subscribe,
)
from tests.support.proxy import free_port

from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import Certificate, Error, Hello, WorkloadInfo

PEM = serialization.Encoding.PEM
FOREIGN_TD = "staging.example"


class Corp:
    """An operator's root with two CAs under it: `prod`, given to this mesh's control plane
    as `--ca-cert` (as ADR 0091 advises: an intermediate under the operator's root), and
    `other`, a sibling CA of another team's mesh (trust domain `staging.example`)."""

    def __init__(self, tmp: Path) -> None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = operator_root(root_key, cn="corp root")
        prod_key = ec.generate_private_key(ec.SECP256R1())
        prod = issued("mesh-prod", self.root, root_key, prod_key, ca=True)
        self.cert_file, self.key_file = write_ca_files(tmp, prod, prod_key, name="prod")
        self.cert_file.write_bytes(self.cert_file.read_bytes() + self.root.public_bytes(PEM))
        self.other_key = ec.generate_private_key(ec.SECP256R1())
        self.other = issued("other-team", self.root, root_key, self.other_key, ca=True)

    def foreign_svid(self, key: WorkloadKey, workload: str, ns: str, sa: str) -> str:
        """A certificate chain from the sibling CA, SPIFFE ID in the foreign trust domain,
        CN = the workload (the shape of a mesh SVID)."""
        leaf = issued(workload, self.other, self.other_key, key._key, ca=False,
                      uri=f"spiffe://{FOREIGN_TD}/ns/{ns}/sa/{sa}")
        return leaf.public_bytes(PEM).decode() + self.other.public_bytes(PEM).decode()


async def test_a_sibling_cas_certificate_of_another_trust_domain_is_not_admitted_or_signed(
        tmp_path: Path) -> None:
    """DEFECT: with an operator CA (an intermediate under the operator's root), the stream
    admits a hello proven by *any* certificate that chains to that root -- here one from a
    sibling CA of another mesh, whose SPIFFE ID names trust domain `staging.example` -- as
    workload shop/api-0, sends it api-0's snapshot, and has this mesh's CA sign its CSR for
    `spiffe://staging.example/ns/shop/sa/api`: the mesh's CA issues an identity outside its
    own trust domain, to a peer that never held a credential of this mesh.

    Expected: a certificate whose SPIFFE ID is not in the mesh's trust domain (nor an alias)
    proves no workload of this mesh; the hello is refused and nothing is signed.  SPIFFE
    (X509-SVID, trust domains): an SVID is validated with the bundle of the trust domain
    its ID names, and a signing authority issues identities of its own trust domain."""
    corp = Corp(tmp_path)
    key = WorkloadKey()
    chain = corp.foreign_svid(key, "api-0", NS, "api")
    async with running_control_plane(ca_cert=str(corp.cert_file),
                                     ca_key=str(corp.key_file)) as cp:
        status, body = await apply(cp.api_url, workload("api-0", "api", SERVER_ADDR, [],
                                                        app="api"))
        assert status == 200, body
        w = WorkloadInfo(name="api-0", namespace=NS, address=SERVER_ADDR,
                         service_account="api", labels={"app": "api"})
        now = int(time.time())  # noqa: TID251 - wall clock: the proof names a moment
        answer = await first_answer(cp.stream_port, Hello(
            workload=w, api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED),
            certificate=chain, proof_time=now, proof=key.proof(NS, "api-0", now),
            csr=key.csr(NS, "api-0")))
        if isinstance(answer, Certificate):
            signed = x509.load_pem_x509_certificates(answer.cert_chain.encode())[0]
            sans = signed.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(
                    x509.UniformResourceIdentifier)
            pytest.fail(f"the mesh's CA ({signed.issuer.rfc4514_string()}) signed {sans} for "
                        f"a hello proven by another trust domain's certificate")
        assert isinstance(answer, Error), answer
        assert "trust domain staging.example" in answer.reason, answer
        # The same certificate while the mesh lists its trust domain as an alias (a
        # migration, ADR 0087): still this mesh's, admitted.
        status, body = await apply(cp.api_url, {
            "apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": {"trustDomainAliases": ["staging.example"]}})
        assert status == 200, body

        async def admitted() -> bool:
            now = int(time.time())  # noqa: TID251
            got = await first_answer(cp.stream_port, Hello(
                workload=w, api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED),
                certificate=chain, proof_time=now, proof=key.proof(NS, "api-0", now)))
            return not isinstance(got, Error)
        await eventually(admitted, timeout=10)


async def test_a_foreign_trust_domain_svid_does_not_pass_a_service_account_rule(
        tmp_path: Path) -> None:
    """DEFECT: with an operator CA, a STRICT opaque TCP port whose policy allows only
    `serviceAccounts: [shop/dbc]` relays a client whose certificate comes from a sibling CA
    under the operator's root and names `spiffe://staging.example/ns/shop/sa/dbc`: the
    inbound side verifies the chain against the root alone (never the SPIFFE ID's trust
    domain), and the authorization engine compares only the namespace and account parsed from
    the ID (`filters/authz.Peer.parse` drops the trust domain).  The control: the same port
    relays the genuine shop/dbc SVID this mesh signed.

    Expected: an identity of a trust domain the mesh does not accept (not its own, not an
    alias) never matches `namespaces` / `serviceAccounts` rules -- ADR 0087 already reports
    such identities as never matching (`RulesMatchable=False`, `ForeignTrustDomain`) -- so the
    connection is refused (or the handshake is); nothing reaches the application."""
    corp = Corp(tmp_path)
    inbound = free_port()
    async with tcp_echo() as origin, running_control_plane(
            ca_cert=str(corp.cert_file), ca_key=str(corp.key_file)) as cp:
        await apply_db_and_its_client(cp.api_url, inbound, origin)
        server = await subscribe([cp.stream_port], WorkloadInfo(
            name="db-0", namespace=NS, address=SERVER_ADDR), cache_dir=tmp_path)
        genuine_key = WorkloadKey()
        who_ = WorkloadInfo(name="dbc-0", namespace=NS, address="127.0.0.10")
        raw = await RawProxy.connect(cp.stream_port, Hello(
            workload=who_, token=await issue_token(cp.api_url, who_),
            csr=genuine_key.csr(NS, "dbc-0")))
        try:
            cert = await raw.next()
            assert isinstance(cert, Certificate), cert

            def client_ctx(name: str, chain: str, key: WorkloadKey) -> ssl.SSLContext:
                (tmp_path / f"{name}.pem").write_text(chain)
                (tmp_path / f"{name}.key").write_text(key.pem())
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
                ctx.load_verify_locations(cadata="".join(cert.trust_bundle))
                ctx.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
                ctx.set_alpn_protocols(["tulle-tcp"])
                return ctx

            async def echoed(ctx: ssl.SSLContext) -> bytes:
                try:
                    r, w = await asyncio.open_connection(SERVER_ADDR, inbound, ssl=ctx)
                except (OSError, ssl.SSLError):
                    return b""
                try:
                    w.write(b"ping")
                    await w.drain()
                    return await asyncio.wait_for(r.read(4), 5)
                except (ConnectionError, OSError, TimeoutError):
                    return b""
                finally:
                    w.close()

            genuine = client_ctx("dbc", cert.cert_chain, genuine_key)

            async def genuine_echoed() -> bool:
                return await echoed(genuine) == b"ping"

            await eventually(genuine_echoed, timeout=15)  # the control
            foreign_key = WorkloadKey()
            foreign = client_ctx("foreign", corp.foreign_svid(foreign_key, "dbc-0", NS, "dbc"),
                                 foreign_key)
            got = await echoed(foreign)
            decisions = "\n".join(
                line for line in server.server.metrics.registry.render().splitlines()
                if line.startswith("tulle_proxy_authz_decisions_total{"))
            assert got == b"", (
                f"spiffe://{FOREIGN_TD}/ns/shop/sa/dbc was relayed to the application under "
                f"`serviceAccounts: [shop/dbc]`; decisions:\n{decisions}")
        finally:
            raw.close()
            await server.stop()


FORGED_XFCC = ("By=spiffe://cluster.local/ns/shop/sa/api;"
               "URI=spiffe://cluster.local/ns/shop/sa/admin")
FORGED_CLIENT_CERT = ":MIIBforgedcertificate=:"


async def test_a_client_cannot_hand_the_application_a_forged_client_identity_header(
        tmp_path: Path) -> None:
    """DEFECT: the server's sidecar passes `x-forwarded-client-cert` and RFC 9440's
    `client-cert` / `client-cert-chain` to the application exactly as the client wrote them,
    from a plaintext client on a PERMISSIVE port as from a mesh peer over mTLS (whose
    verified identity is shop/a, while the header claims shop/admin).  An application that
    reads the caller's identity from these headers -- what Envoy-based meshes hand it -- is
    told whatever the caller likes.

    Expected: an inbound proxy never forwards these headers as received: Envoy's default
    (`forward_client_cert_details: SANITIZE`) removes XFCC, or sets it from the verified
    certificate (SANITIZE_SET); RFC 9440 section 3 says a TLS-terminating proxy must remove
    any `Client-Cert` / `Client-Cert-Chain` the client sent."""
    async with running_mesh(tmp_path, mesh_doc("PERMISSIVE")) as m:
        await eventually(lambda: _answers(m), timeout=15)
        forged = {"x-forwarded-client-cert": FORGED_XFCC, "client-cert": FORGED_CLIENT_CERT,
                  "client-cert-chain": FORGED_CLIENT_CERT}
        port = m.clients["a"][1]
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/who", headers={"Host": "api", **forged}) as r:
            assert r.status == 200
            via_mtls = (await r.json())["headers"]
        # plaintext, straight at the PERMISSIVE inbound port
        r2, w2 = await asyncio.open_connection(SERVER_ADDR, m.inbound)
        try:
            w2.write(b"GET /who HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
                     + b"".join(f"{k}: {v}\r\n".encode() for k, v in forged.items())
                     + b"\r\n")
            raw = await asyncio.wait_for(r2.read(), 5)
        finally:
            w2.close()
        assert raw.startswith(b"HTTP/1.1 200")
        via_plaintext = json.loads(raw.split(b"\r\n\r\n", 1)[1])["headers"]
        for how, seen in (("mTLS (verified shop/a)", via_mtls), ("plaintext", via_plaintext)):
            assert "sa/admin" not in seen.get("x-forwarded-client-cert", ""), (how, seen)
            assert seen.get("client-cert") != FORGED_CLIENT_CERT, (how, seen)
            assert seen.get("client-cert-chain") != FORGED_CLIENT_CERT, (how, seen)
        # What the proxy tells instead (ADR 0096): the verified peer, and nothing unverified.
        assert via_mtls.get("x-forwarded-client-cert", "").startswith("URI=spiffe://")
        assert via_mtls["x-forwarded-client-cert"].endswith("/ns/shop/sa/a"), via_mtls
        assert "x-forwarded-client-cert" not in via_plaintext, via_plaintext
        assert "client-cert" not in via_plaintext and "client-cert" not in via_mtls


pytestmark = pytest.mark.timeout(60)
