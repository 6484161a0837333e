"""Error paths and messages: pydantic's `loc` rendered as the YAML path a person wrote."""

from __future__ import annotations

from typing import Annotated

import pydantic
import pytest

from tulle.api.errors import FieldError, ValidationError, field_error, from_pydantic, render_path
from tulle.api.fields import IntOrPortName
from tulle.api.meta import Model


@pytest.mark.parametrize(
    ("segments", "rendered"),
    [
        (("spec", "rules", 0, "matches", 1, "path", "value"), "spec.rules[0].matches[1].path.value"),
        (("metadata", "labels", "app.kubernetes.io/name"), 'metadata.labels["app.kubernetes.io/name"]'),
        ((0, "name"), "[0].name"),
        ((), ""),
    ],
)
def test_render_path(segments: tuple[str | int, ...], rendered: str) -> None:
    assert render_path(segments) == rendered


class _Inner(Model):
    port: IntOrPortName
    value: Annotated[int, pydantic.Field(ge=0, le=10)] | None = None

    @pydantic.model_validator(mode="after")
    def _rule(self) -> _Inner:
        if self.value == 7:
            raise field_error(("value",), "seven is not allowed")
        return self


class _Outer(Model):
    items: list[_Inner]


def _errors(data: object) -> list[tuple[str, str]]:
    with pytest.raises(pydantic.ValidationError) as info:
        _Outer.model_validate(data)
    return [(e.path, e.message) for e in from_pydantic(info.value)]


def test_union_and_validator_segments_are_stripped() -> None:
    assert _errors({"items": [{"port": 1.5}]}) == [
        ("items[0].port", "must be a port number or a port name, got 1.5")
    ]


def test_model_validator_errors_land_on_the_named_field() -> None:
    assert _errors({"items": [{"port": 80}, {"port": 80, "value": 7}]}) == [
        ("items[1].value", "seven is not allowed")
    ]


def test_messages_for_common_pydantic_errors() -> None:
    assert _errors({"items": [{"value": 11, "extra": 1}], "more": 2}) == [
        ("items[0].port", "required"),
        ("items[0].value", "must be <= 10, got 11"),
        ("items[0].extra", "unknown field"),
        ("more", "unknown field"),
    ]
    assert _errors({"items": "x"}) == [("items", 'must be a list, got "x"')]


def test_validation_error_lists_every_error() -> None:
    err = ValidationError([FieldError("a.b", "bad"), FieldError("", "worse")])
    assert err.pairs() == [("a.b", "bad"), ("", "worse")]
    assert str(err) == "a.b: bad\n<root>: worse"
