"""`tulle apply` of what the routing audit found (ADR 0101): a route regular expression whose
match time grows with the square of the subject, and path modifiers the proxy cannot send,
are stored but warned about at apply with the field path and the reason (the same conditions
the status gets), and `--strict` refuses them whole.  Through a real control plane and the
real CLI."""

from __future__ import annotations

from typing import Any

from tests.integration.controlplane.test_cli_routing import docs, http_route, service
from tests.support.cli import tulle
from tests.support.controlplane import running_control_plane


def route_with(rules: list[dict[str, Any]], name: str = "hostile") -> dict[str, Any]:
    route = http_route(name, "gateway.networking.k8s.io/v1")
    route["spec"]["rules"] = rules
    return route


QUADRATIC = [
    {"matches": [{"path": {"type": "RegularExpression", "value": "/.*a[^y]{0,65535}y"}}],
     "backendRefs": [{"name": "web", "port": 80}]},
    {"matches": [{"headers": [{"type": "RegularExpression", "name": "x-a",
                               "value": "a*a{0,65535}"}]}],
     "backendRefs": [{"name": "web", "port": 80}]},
    {"matches": [{"queryParams": [{"type": "RegularExpression", "name": "q",
                                   "value": "(?-s:.*x.*)"}]}],
     "backendRefs": [{"name": "web", "port": 80}]},
]


async def test_apply_warns_of_a_quadratic_route_regex_with_its_field_path() -> None:
    async with running_control_plane() as cp:
        code, out, err = await tulle(cp.api_url, "apply", "-f", "-",
                                     stdin=docs(service("web"), route_with(QUADRATIC)))
        assert code == 0, err
        assert "httproute/hostile -n shop created" in out
        warning = next(line for line in err.splitlines() if "httproute/hostile" in line)
        assert "PartiallyInvalid=True" in warning
        for path in ("rules[0].matches[0].path.value", "rules[1].matches[0].headers[0].value",
                     "rules[2].matches[0].queryParams[0].value"):
            assert f"{path}: regular expression refused: a repetition that may backtrack" \
                in warning, (path, warning)

        code, _, err = await tulle(cp.api_url, "apply", "--strict", "-f", "-",
                                   stdin=docs(route_with(QUADRATIC, "stricter")))
        assert code == 1 and "nothing was applied" in err, err
        code, _, err = await tulle(cp.api_url, "get", "httproute", "stricter", "-n", "shop")
        assert code == 1 and "not found" in err
