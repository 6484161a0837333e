"""`tulle explain KIND[.FIELD]`: fields, types and docs come from the models themselves."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from tulle.cli.explain.command import explain_cmd
from tulle.cli.explain_schema import explain_kind


def test_a_kind_lists_its_top_level_fields() -> None:
    out = explain_kind("svc")
    assert out.startswith("KIND:     Service\nVERSION:  mesh.tulle.dev/v1alpha1\n")
    assert "  spec\t<ServiceSpec>" in out and "  metadata\t<ObjectMeta>" in out


def test_a_field_path_shows_its_type_doc_and_subfields() -> None:
    out = explain_kind("svc.spec")
    assert "FIELD:    spec <ServiceSpec>" in out
    assert "  ports\t<[]ServicePort> -required-" in out
    assert "  selector\t<map[string]string>" in out
    assert "Workloads whose labels include all of these" in out  # the attribute docstring
    leaf = explain_kind("workload.spec.adminPort")
    assert "FIELD:    adminPort <integer>" in leaf and "FIELDS:" not in leaf
    assert "--admin-port" in leaf


@pytest.mark.parametrize(("path", "says"), [
    ("nosuchkind", "nosuchkind"),
    ("svc.spec.nope", "field 'spec.nope' does not exist in Service (at spec: ports, selector"),
    ("workload.spec.adminPort.x", "has no fields"),
])
def test_unknown_kinds_and_fields_are_usage_errors(path: str, says: str) -> None:
    with pytest.raises(click.UsageError) as exc:
        explain_kind(path)
    assert says in str(exc.value)


def test_the_command_takes_a_kind_or_a_request_not_both() -> None:
    r = CliRunner().invoke(explain_cmd, ["httproute.spec"])
    assert r.exit_code == 0 and "FIELD:    spec <HTTPRouteSpec>" in r.output
    r = CliRunner().invoke(explain_cmd, ["svc", "--from", "web"])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(explain_cmd, [])
    assert r.exit_code == 2 and "--from WORKLOAD and --to SERVICE" in r.output
