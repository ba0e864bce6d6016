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
        ({"retries": -1}, "steps[0].retries"),
        ({"function": "bad name"}, "steps[0].function"),
        ({"colour": "red"}, "steps[0].colour"),
        ({"name": ""}, "steps[0].name"),
        ({"name": "a" * 101}, "steps[0].name"),
        ({"input": {"n": 3}}, "steps[0].input.n"),
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


def test_a_definition_that_is_not_a_mapping_is_named_as_a_whole() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition([{"name": "wf"}])  # type: ignore[arg-type]
    assert caught.value.field == "definition"


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


def _chain(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "wf", "steps": [{"function": "noop", **step} for step in steps]}


@pytest.mark.parametrize(
    ("steps", "field", "cycle"),
    [
        ([{"name": "a", "next": [{"to": "a"}]}], "steps[0].next[0].to", "a → a"),
        (
            [
                {"name": "start", "next": [{"to": "b"}]},
                {"name": "b", "next": [{"to": "c"}]},
                {"name": "c", "next": [{"to": "b"}]},
            ],
            "steps[1].next[0].to",
            "b → c → b",
        ),
        (
            [
                {"name": "a", "next": [{"to": "b", "when": "output.x > 1"}]},
                {"name": "b", "next": [{"to": "c"}]},
                {"name": "c", "next": [{"to": "b"}, {"to": "a", "when": "output.done"}]},
            ],
            "steps[1].next[0].to",
            "b → c → b",
        ),
    ],
)
def test_a_loop_without_any_condition_is_refused_naming_an_edge_and_the_cycle(
    steps: list[dict[str, Any]], field: str, cycle: str
) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(_chain(*steps))
    assert caught.value.field == field
    assert cycle in str(caught.value)


@pytest.mark.parametrize(
    "steps",
    [
        # The edge that loops has a condition: loop until it no longer holds.
        [
            {"name": "a", "next": [{"to": "b"}]},
            {"name": "b", "next": [{"to": "a", "when": "output.more"}]},
        ],
        # The loop's edges lack `when`, but a condition before them leaves it.
        [
            {"name": "a", "next": [{"to": "end", "when": "output.done"}, {"to": "b"}]},
            {"name": "b", "next": [{"to": "a"}]},
            {"name": "end"},
        ],
    ],
)
def test_a_loop_that_a_condition_can_end_is_allowed(steps: list[dict[str, Any]]) -> None:
    assert parse_definition(_chain(*steps)).start_step == "a"


@pytest.mark.parametrize(
    ("change", "field", "unknown"),
    [
        ({"next": [{"to": "b", "when": "outptu.n > 1"}]}, "steps[0].next[0].when", "outptu"),
        ({"next": [{"to": "b", "when": "prev.n > 1"}]}, "steps[0].next[0].when", "prev"),
        ({"input": {"n": "output.n"}}, "steps[0].input.n", "output"),
        ({"input": {"n": "item.n"}}, "steps[0].input.n", "item"),
        ({"input": {"n": "index"}}, "steps[0].input.n", "index"),
        ({"for_each": "item.list"}, "steps[0].for_each", "item"),
        ({"for_each": "output.list"}, "steps[0].for_each", "output"),
        # A macro's variable exists only inside it.
        ({"input": {"n": "input.l.all(x, x > 0) && x"}}, "steps[0].input.n", "x"),
        # A name in a string is not a macro.
        ({"input": {"n": "'l.all(x, 1)' == x"}}, "steps[0].input.n", "x"),
        ({"input": {"n": "input.l.map(x, x) + [x]"}}, "steps[0].input.n", "x"),
    ],
)
def test_an_expression_reading_a_variable_that_does_not_exist_there_is_refused(
    change: dict[str, Any], field: str, unknown: str
) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_definition(_definition(**change))
    assert caught.value.field == field
    assert f"unknown variable {unknown!r}" in str(caught.value)
    assert "the variables here are" in str(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        {"next": [{"to": "b", "when": "output.n > input.min"}]},
        {"next": [{"to": "b", "when": "output.items.all(x, x > 0)"}]},
        {"next": [{"to": "b", "when": "output.items.exists(i, i.ok)"}]},
        {"next": [{"to": "b", "when": "output.items.exists_one(e, e == 'a.b')"}]},
        {"next": [{"to": "b", "when": "size(output.items.map(m, m * 2)) > 0"}]},
        {"next": [{"to": "b", "when": "output.items.filter(f, f > 1) == []"}]},
        {"next": [{"to": "b", "when": "output.l.exists(e, e.all(f, f == input.v))"}]},
        {"input": {"n": "prev.n + input.n", "s": "'item' + \"index\""}},
        {"for_each": "prev.items", "input": {"n": "item.n", "i": "index", "p": "prev.k"}},
        {"for_each": "input.items.filter(x, x > 0)"},
        {"for_each": "input.items.map(x, {'x': x, 'y': input.x})"},
        {"input": {"s": "input.l.map(x, ')' + x)"}},
    ],
)
def test_expressions_over_the_variables_that_exist_and_macro_variables_are_accepted(
    change: dict[str, Any],
) -> None:
    parse_definition(_definition(**change))
