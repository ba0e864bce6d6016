"""Workflow definitions are validated completely, with errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from autostep.conditions import try_expression
from autostep.definitions import parse_definition
from autostep.exceptions import ConditionError, DefinitionError


def _definition(**step: Any) -> dict[str, Any]:
    first = {"name": "a", "function": "noop", "next": [{"to": "b"}], **step}
    return {"name": "wf", "steps": [first, {"name": "b", "function": "noop"}]}


def test_a_valid_definition_parses_with_its_start_and_transitions() -> None:
    definition = parse_definition(
        _definition(next=[{"to": "b", "when": "output.x > 1"}, {"to": "b"}])
    )
    assert definition.start_step == "a"
    assert [t.to for t in definition.step("a").next] == ["b", "b"]
    assert definition.step("a").next[0].when == "output.x > 1"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"next": [{"to": "b", "when": "output.x >"}]}, "steps[0].next[0].when"),
        ({"next": [{"to": "nowhere"}]}, "steps[0].next[0].to"),
        ({"for_each": "input.items["}, "steps[0].for_each"),
        ({"input": {"n": "1 +"}}, "steps[0].input.n"),
        ({"retries": -1}, "steps.0.retries"),
        ({"function": "bad name"}, "steps.0.function"),
        ({"colour": "red"}, "steps.0.colour"),
    ],
)
def test_a_bad_definition_is_rejected_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(_definition(**change))
    assert caught.value.field == field
    assert field in str(caught.value)


def test_a_bad_condition_is_a_condition_error() -> None:
    with pytest.raises(ConditionError, match="Syntax error"):
        parse_definition(_definition(next=[{"to": "b", "when": "output.x >"}]))


def test_duplicate_step_names_and_a_missing_start_are_rejected() -> None:
    twice = {"name": "wf", "steps": [{"name": "a", "function": "f"}] * 2}
    with pytest.raises(DefinitionError) as caught:
        parse_definition(twice)
    assert caught.value.field == "steps[1].name"
    with pytest.raises(DefinitionError) as caught:
        parse_definition({**_definition(), "start": "zz"})
    assert caught.value.field == "start"


def test_an_empty_workflow_is_rejected() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition({"name": "wf", "steps": []})
    assert caught.value.field == "steps"


def test_try_expression_reports_results_and_errors() -> None:
    sample = {"output": {"status": 200, "items": [1, 2, 3]}, "input": {"min": 2}}
    assert try_expression("output.status == 200 && size(output.items) > input.min", sample) == {
        "ok": True,
        "result": True,
    }
    missing = try_expression("output.nope > 1", sample)
    assert missing["ok"] is False and "nope" in missing["error"]
    broken = try_expression("output.status ==", sample)
    assert broken["ok"] is False and "Syntax error" in broken["error"]
