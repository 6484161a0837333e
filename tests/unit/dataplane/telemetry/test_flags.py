"""Response flags in Envoy's spelling, from the raw flags a request's record carries."""

from __future__ import annotations

import pytest

from tulle.dataplane.telemetry import flags
from tulle.dataplane.telemetry.flags import (
    ENVOY_FLAGS,
    flag_details,
    response_flags,
    response_flags_long,
)


@pytest.mark.parametrize(("raw", "short"), [
    ("", "-"),
    ("UF", "UF"),
    ("UH", "UH"),
    ("NR", "NR"),
    ("UT", "UT"),
    ("DC", "DC"),
    ("UF,URX", "UF,URX"),
    ("URX,UF", "UF,URX"),       # Envoy's order, whatever order the code set them in
    ("UT,UO", "UT,UO"),
    ("UO,UT", "UT,UO"),
    ("UF,URX,URX", "UF,URX"),   # deduplicated
    ("OL", "OM"),               # the overload guard is Envoy's overload manager
    ("UB", "NC"),               # an unresolved backend: no cluster found
    ("RBAC", "-"),              # Envoy's RBAC filter sets no flag
    ("ZZ", "ZZ"),               # an unknown code is kept, not dropped
    ("ZZ,UF", "UF,ZZ"),
    (" UF , DC ", "UF,DC"),
])
def test_short(raw: str, short: str) -> None:
    assert response_flags(raw) == short


def test_long_names() -> None:
    assert response_flags_long("") == "-"
    assert response_flags_long("URX,UF") == "UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    assert response_flags_long("OL") == "OverloadManager"
    assert response_flags_long("ZZ") == "ZZ"


def test_details_name_tulle_codes() -> None:
    assert flag_details("") == ""
    assert flag_details("UF") == ""
    assert flag_details("RBAC") == "rbac_access_denied"
    assert flag_details("UB") == "backend_not_resolved"


def test_every_code_the_proxy_sets_is_an_envoy_code_or_mapped() -> None:
    # The codes the request path sets today (grep `flags = "` / UpstreamError(...)).
    raised = {"UF", "UC", "UO", "UT", "UPE", "UH", "NR", "NC", "DC", "DPE", "SI", "RL", "FI",
              "DI", "URX", "OL", "UB", "UR"}
    for code in raised:
        out = response_flags(code)
        assert set(out.split(",")) <= ENVOY_FLAGS, code


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flags, "_short", {"": "-"})
    for i in range(flags._CACHE_MAX * 2):
        assert response_flags(f"X{i}") == f"X{i}"
    assert len(flags._short) <= flags._CACHE_MAX
