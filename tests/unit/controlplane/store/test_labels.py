"""Label selector parsing and matching (Kubernetes syntax)."""

from __future__ import annotations

import pytest

from tulle.controlplane.store.labels import SelectorError, compile_selector

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(("selector", "matches"), [
    ("app=web", True),
    ("app = web", True),
    ("app==web", True),
    ("app=api", False),
    ("app!=api", True),
    ("missing!=x", True),
    ("app in (api, web)", True),
    ("app in (api)", False),
    ("app notin (api)", True),
    ("missing notin (a,b)", True),
    ("missing in (a,b)", False),
    ("tier", True),
    ("!tier", False),
    ("!missing", True),
    ("app=web,env in (prod,staging),!missing", True),
    ("app=web,env=dev", False),
    ("", True),
])
def test_selector(selector: str, matches: bool) -> None:
    assert compile_selector(selector)(LABELS) is matches


@pytest.mark.parametrize("selector", ["app=web=x", "app in web", "=web", "app in (a", ",", "a b"])
def test_invalid_selectors_are_refused(selector: str) -> None:
    with pytest.raises(SelectorError, match="invalid label selector"):
        compile_selector(selector)


def test_mapping_means_equality() -> None:
    assert compile_selector({"app": "web", "env": "prod"})(LABELS)
    assert not compile_selector({"app": "web", "env": "dev"})(LABELS)
