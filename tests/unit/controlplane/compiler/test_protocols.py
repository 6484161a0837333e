"""A port's protocol: a recognised appProtocol, then the port name, then the caller's default."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.controlplane.compiler.protocols import port_protocol


@pytest.mark.parametrize(("port", "expected"), [
    ({"appProtocol": "http"}, "http1"),
    ({"appProtocol": "HTTP"}, "http1"),
    ({"appProtocol": "kubernetes.io/h2c"}, "http2"),
    ({"appProtocol": "h2c"}, "http2"),
    ({"appProtocol": "grpc"}, "http2"),
    ({"appProtocol": "tcp"}, "tcp"),
    ({"appProtocol": "https"}, "tcp"),  # the application's own TLS: opaque to the proxy
    ({"appProtocol": "kubernetes.io/wss"}, "tcp"),
    ({"name": "http"}, "http1"),
    ({"name": "http-web"}, "http1"),
    ({"name": "http2-api"}, "http2"),
    ({"name": "grpc"}, "http2"),
    ({"name": "grpc-web-ui"}, "http1"),  # the longest prefix wins
    ({"name": "tcp-db"}, "tcp"),
    ({"name": "tls-x"}, "tcp"),
    ({"name": "http", "appProtocol": "tcp"}, "tcp"),  # appProtocol before the name
    ({"name": "tcp", "appProtocol": "http"}, "http1"),
    ({"name": "http-x", "appProtocol": "example.com/custom"}, "http1"),  # unknown: name decides
    ({"name": "httpd"}, "DEFAULT"),  # neither `http` nor `http-...`
    ({"name": "web"}, "DEFAULT"),
    ({"appProtocol": "example.com/custom"}, "DEFAULT"),
    ({}, "DEFAULT"),
])
def test_port_protocol_precedence(port: dict[str, Any], expected: str) -> None:
    assert port_protocol({"port": 1, **port}, "DEFAULT") == expected
