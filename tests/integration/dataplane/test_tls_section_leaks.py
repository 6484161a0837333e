"""Key material pasted where public material goes.  A "bundle" PEM (certificate and key in
one file) is a common thing to paste into `cert_chain_pem`; `/config_dump` shows certificate
chains and CAs in full (they are public), so a key inside one would be served by the admin
endpoint.  Such a section is refused by path, without quoting it, and the proxy keeps its
last good config."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest
from tests.integration.dataplane.test_filter_chains import identity, origins, two_origin_config
from tests.support.proxy import running_proxy

from tulle.proxyconfig import ConfigError

__all__ = ["origins"]  # the fixture, used by name


async def test_a_private_key_in_a_public_pem_is_refused_and_never_dumped(
        origins: dict[str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = identity(tmp_path, "localhost")
    secret = good["private_key_pem"].splitlines()[1]
    chains = [{"name": "t", "match": {"transport": "tls"}, "tls": {"identity": "localhost"},
               "route_table": "rt-a"}]
    cfg = two_origin_config(origins, chains, [good])
    async with running_proxy(cfg, admin=True) as p:
        bundle = dict(good, cert_chain_pem=good["cert_chain_pem"] + good["private_key_pem"])
        cfg["identities"] = [bundle]
        cfg["trust_bundles"] = [{"name": "mesh", "ca_pems": [
            good["private_key_pem"] + good["cert_chain_pem"]]}]
        with pytest.raises(ConfigError) as err:
            await p.apply(cfg)
        assert [str(e) for e in err.value.errors] == [
            "identities[0].cert_chain_pem: must not hold a private key (it would be shown as "
            "public material): put the key in private_key_pem",
            "trust_bundles[0].ca_pems[0]: must not hold a private key (it would be shown as "
            "public material)",
        ]
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{p.admin_port}/config_dump") as r:
            dump = await r.text()
        assert secret not in dump and '"private_key_pem": "<redacted>"' in dump
    assert secret not in "\n".join(r.getMessage() for r in caplog.records)
