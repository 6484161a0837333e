"""A real proxy's agent against a *newer* control plane, played by a raw stream server: a config
section the proxy cannot take is a NACK with its path, the stream stays up (no reconnect) and
the last good config keeps serving; a section marked optional is dropped and the config taken."""

from __future__ import annotations

from tests.support.newer_cp import agent_on_v1, config, get

from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import Ack, Nack, Pong


async def test_an_unknown_section_is_nacked_with_its_path_and_the_stream_stays_up(
        origin: int) -> None:
    async with agent_on_v1(origin) as a:
        cp, proxy, agent, listen = a.cp, a.proxy, a.agent, a.listen
        (hello,) = cp.hellos
        assert hello.protocol == 2 and hello.features == list(SUPPORTED)
        assert hello.api_versions == ["proxy.tulle.dev/v1alpha1"]
        assert (await get(f"http://127.0.0.1:{listen}/echo"))[0] == 200

        # A newer control plane's section this proxy does not know: NACK with the path.
        v2 = config("v2", listen, origin, prefix="/only")
        v2["settings"]["retry_budget"] = {"percent": 20}
        v2["listeners"][0]["quic"] = []
        nack = await cp.send({"type": "snapshot", "version": "v2", "config": v2})
        assert isinstance(nack, Nack) and nack.version == "v2"
        assert nack.paths == ["settings.retry_budget", "listeners[0].quic"]
        assert "settings.retry_budget: unknown field" in nack.reason

        # The same in a delta: the resource is named.
        delta = {"version": "v3", "base_version": "v1", "listeners": {"upsert": [
            dict(config("v3", listen, origin, prefix="/only")["listeners"][0], zone="a")]}}
        nack = await cp.send({"type": "delta", "delta": delta})
        assert isinstance(nack, Nack) and nack.version == "v3"
        assert nack.paths == ["listeners[name=in].zone"]

        # The stream is still up (same connection answers a ping) and v1 still serves.
        assert await cp.send({"type": "ping"}) == Pong()
        assert cp.connections == 1
        assert proxy.config is not None and proxy.config.version == "v1"
        status, _ = await get(f"http://127.0.0.1:{listen}/echo")
        assert status == 200  # v2's /only route never took effect

        # Marked optional by the control plane: dropped, recorded, and the config is taken.
        ok = await cp.send({"type": "snapshot", "version": "v4", "config": v2,
                            "optional": ["settings.retry_budget", "listeners[].quic"]})
        assert ok == Ack(version="v4")
        assert agent.last_ignored == ["settings.retry_budget", "listeners[0].quic"]
        assert "no route" in (await get(f"http://127.0.0.1:{listen}/echo"))[1]
        assert cp.connections == 1


async def test_a_tls_setting_naming_a_missing_identity_is_nacked_with_its_path(
        origin: int) -> None:
    async with agent_on_v1(origin) as a:
        v2 = config("v2", a.listen, origin)
        v2["listeners"][0]["filter_chains"] = [{
            "name": "mtls", "match": {"transport": "tls"}, "route_table": "rt",
            "tls": {"identity": "spiffe-web", "trust_bundle": "mesh"}}]
        nack = await a.cp.send({"type": "snapshot", "version": "v2", "config": v2})
        assert isinstance(nack, Nack) and nack.version == "v2"
        assert nack.paths == ["listeners[0].filter_chains[0].tls.identity",
                              "listeners[0].filter_chains[0].tls.trust_bundle"]
        assert "no identity named 'spiffe-web'" in nack.reason
        assert await a.cp.send({"type": "ping"}) == Pong()  # the stream stays up
        assert a.proxy.config is not None and a.proxy.config.version == "v1"
