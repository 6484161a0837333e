"""metadata rules shared by every kind: names, namespaces, labels, annotations, conditions."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.api.support import Errors, with_

from tulle.api import parse

WORKLOAD: dict[str, Any] = {
    "apiVersion": "mesh.tulle.dev/v1alpha1",
    "kind": "Workload",
    "metadata": {"name": "web-1"},
    "spec": {"address": "10.0.0.1"},
}


def test_namespace_defaults_to_default() -> None:
    assert parse(WORKLOAD).metadata.namespace == "default"


@pytest.mark.parametrize("name", ["web", "web-1", "a.b.c", "x" * 253, "0start"])
def test_valid_names(name: str, errors: Errors) -> None:
    assert errors(with_(WORKLOAD, "metadata.name", name)) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "Web",
            "must be a DNS-1123 subdomain (lowercase letters, digits, "
            '"-" and ".", alphanumeric at both ends), '
            'got "Web"',
        ),
        (
            "-web",
            "must be a DNS-1123 subdomain (lowercase letters, digits, "
            '"-" and ".", alphanumeric at both ends), '
            'got "-web"',
        ),
        ("", "must not be empty"),
        ("x" * 254, "must be at most 253 characters, got 254"),
    ],
)
def test_invalid_names(name: str, message: str, errors: Errors) -> None:
    assert errors(with_(WORKLOAD, "metadata.name", name)) == [("metadata.name", message)]


def test_name_error_is_reported_with_spec_errors(errors: Errors) -> None:
    doc = with_(with_(WORKLOAD, "metadata.name", "Bad"), "spec.address", "nope")
    assert [p for p, _ in errors(doc)] == ["metadata.name", "spec.address"]


def test_namespace_must_be_a_label(errors: Errors) -> None:
    assert errors(with_(WORKLOAD, "metadata.namespace", "a.b")) == [
        (
            "metadata.namespace",
            "must be a DNS-1123 label (lowercase letters, digits and "
            '"-", alphanumeric at both ends), got "a.b"',
        )
    ]


def test_labels_and_annotations(errors: Errors) -> None:
    good = with_(WORKLOAD, "metadata.labels", {"app.kubernetes.io/name": "web", "tier": "", "v": "1.0_a"})
    good = with_(good, "metadata.annotations", {"example.com/note": "anything at all: {}"})
    assert errors(good) == []
    bad = with_(WORKLOAD, "metadata.labels", {"app": "has space"})
    assert errors(bad) == [
        (
            "metadata.labels.app",
            "label value \"has space\" must be empty or at most 63 letters, digits, '-', '_' or '.', "
            "alphanumeric at both ends",
        )
    ]
    bad_key = with_(WORKLOAD, "metadata.annotations", {"Bad_Prefix/x": "1"})
    [(path, message)] = errors(bad_key)
    assert path == 'metadata.annotations["Bad_Prefix/x"]'
    assert message.startswith('prefix of "Bad_Prefix/x" must be a DNS-1123 subdomain')


def test_system_fields_are_accepted() -> None:
    doc = with_(
        WORKLOAD,
        "metadata",
        {
            "name": "web-1",
            "resourceVersion": "42",
            "uid": "6f1c",
            "generation": 3,
            "creationTimestamp": "2026-01-02T03:04:05Z",
        },
    )
    meta = parse(doc).metadata
    assert (meta.resourceVersion, meta.generation, meta.creationTimestamp.year) == ("42", 3, 2026)  # type: ignore[union-attr]


CONDITION = {
    "type": "Ready",
    "status": "True",
    "reason": "WorkloadRegistered",
    "message": "",
    "lastTransitionTime": "2026-01-02T03:04:05Z",
    "observedGeneration": 1,
}


def test_status_conditions(errors: Errors) -> None:
    doc = with_(WORKLOAD, "status", {"conditions": [CONDITION]})
    assert errors(doc) == []
    assert errors(with_(WORKLOAD, "status", {"conditions": [{**CONDITION, "status": "Yes"}]})) == [
        ("status.conditions[0].status", 'must be "True", "False" or "Unknown", got "Yes"')
    ]
    assert errors(with_(WORKLOAD, "status", {"conditions": [{**CONDITION, "reason": "no spaces"}]})) == [
        ("status.conditions[0].reason", 'must be a CamelCase reason such as NoSuchService, got "no spaces"')
    ]
    assert errors(with_(WORKLOAD, "status", {"conditions": [CONDITION, CONDITION]})) == [
        ("status.conditions[1].type", 'duplicate condition type "Ready"')
    ]
    no_time = {k: v for k, v in CONDITION.items() if k != "lastTransitionTime"}
    assert errors(with_(WORKLOAD, "status", {"conditions": [no_time]})) == [
        ("status.conditions[0].lastTransitionTime", "required")
    ]


def test_to_dict_round_trips() -> None:
    res = parse(WORKLOAD)
    again = parse(res.to_dict())
    assert again == res
    assert "status" not in res.to_dict()
