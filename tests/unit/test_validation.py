"""Limits and checks on what callers send: names, payload sizes, paging, RPC arguments."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import BaseModel

from autostep.exceptions import InvalidInput, NotFoundError, PermanentError
from autostep.nameko_runtime import log_expected_errors_in_one_line
from autostep.sdk import FunctionSpec, RetryPolicy, StepContext
from autostep.settings import get_settings
from autostep.validation import (
    Description,
    JobInput,
    Limit,
    Name,
    check,
    checked_arguments,
    field_path,
    payload_size,
)


@pytest.fixture
def payload_limit_100(monkeypatch: pytest.MonkeyPatch) -> int:
    """A limit of 100 bytes for one test."""
    monkeypatch.setattr(get_settings(), "max_payload_bytes", 100)
    return 100


def test_the_payload_limit_is_one_mebibyte_by_default() -> None:
    assert get_settings().max_payload_bytes == 1048576


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("", "at least 1 character"),
        ("a" * 101, "at most 100 characters"),
        ("two words", "only letters, digits, _ and -"),
        ("1st", "must start with a letter or _"),
        ("naïve", "only letters, digits, _ and -"),
        (7, "valid string"),
    ],
)
def test_a_bad_name_is_refused_naming_the_field(value: Any, complaint: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(Name, value, field="name")
    assert caught.value.field == "name"
    assert complaint in str(caught.value)
    assert str(caught.value).startswith("name: ")


def test_good_names_and_descriptions_pass() -> None:
    assert check(Name, "shop_2-eu", field="name") == "shop_2-eu"
    assert check(Name, "_" + "a" * 99, field="name") == "_" + "a" * 99
    assert check(Description, "d" * 2000, field="description") == "d" * 2000
    with pytest.raises(InvalidInput, match="description: String should have at most 2000"):
        check(Description, "d" * 2001, field="description")


@pytest.mark.parametrize(
    ("value", "kind"),
    [([1, 2], "an array"), ("{}", "a string"), (None, "null"), (3, "a number")],
)
def test_a_job_input_must_be_a_json_object(value: Any, kind: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(JobInput, value, field="input")
    assert caught.value.field == "input"
    assert str(caught.value) == f"input: must be a JSON object, not {kind}"


def test_a_job_input_over_the_limit_is_refused_with_both_sizes(payload_limit_100: int) -> None:
    fits = {"s": "x" * (100 - len('{"s":""}'))}
    too_big = {"s": "x" * (101 - len('{"s":""}'))}
    assert payload_size(fits) == 100 and payload_size(too_big) == 101

    assert check(JobInput, fits, field="input") == fits
    with pytest.raises(InvalidInput) as caught:
        check(JobInput, too_big, field="input")
    assert str(caught.value) == "input: is 101 bytes as JSON, more than the limit of 100 bytes"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"s": "a\x00b"}, "holds the character U+0000, which PostgreSQL cannot store"),
        ({"s": ["\\\x00"]}, "holds the character U+0000, which PostgreSQL cannot store"),
        ({"n": float("nan")}, "holds a NaN or infinite number, which JSON cannot store"),
        ({"n": [float("-inf")]}, "holds a NaN or infinite number, which JSON cannot store"),
        ({"o": object()}, "is not JSON data: Unable to serialize unknown type: <class 'object'>"),
    ],
)
def test_a_job_input_postgresql_cannot_store_is_refused_naming_why(
    value: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(JobInput, value, field="input")
    assert str(caught.value) == f"input: {problem}"


def test_text_that_only_looks_like_what_postgresql_refuses_passes() -> None:
    looks_alike = {"escaped": "\\u0000", "words": "NaN Infinity", "n": 1.5}
    assert check(JobInput, looks_alike, field="input") == looks_alike


def test_payload_size_is_compact_utf8_json() -> None:
    assert payload_size({"a": [1, 2], "b": "é"}) == len('{"a":[1,2],"b":"é"}'.encode())


class _In(BaseModel):
    size: int


class _Out(BaseModel):
    text: str


def _spec() -> FunctionSpec:
    def grow(inp: _In) -> _Out:
        return _Out(text="x" * inp.size)

    return FunctionSpec("grow", grow, _In, _Out, RetryPolicy(), takes_context=False)


def test_a_step_output_over_the_limit_fails_the_step_for_good(payload_limit_100: int) -> None:
    context: Any = StepContext(job_id=None, process_id=None, step="s", attempt=1, session=None)  # type: ignore[arg-type]
    room = 100 - len('{"text":""}')

    assert _spec().call({"size": room}, context) == {"text": "x" * room}
    with pytest.raises(PermanentError) as caught:
        _spec().call({"size": room + 1}, context)
    assert str(caught.value) == (
        "output of 'grow': is 101 bytes as JSON, more than the limit of 100 bytes"
    )


@pytest.mark.parametrize(("value", "accepted"), [(1, True), (500, True), (0, False), (501, False)])
def test_a_listing_limit_is_between_1_and_500(value: int, accepted: bool) -> None:
    if accepted:
        assert check(Limit, value, field="limit") == value
    else:
        with pytest.raises(InvalidInput, match=r"^limit: "):
            check(Limit, value, field="limit")


def test_a_listing_limit_must_be_a_whole_number() -> None:
    for value in (True, "5", 2.0):
        with pytest.raises(InvalidInput, match=r"^limit: "):
            check(Limit, value, field="limit")


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("steps", 1, "next", 0, "when"), "steps[1].next[0].when"),
        (("steps", 0, "input", "n"), "steps[0].input.n"),
        (("name",), "name"),
        ((), ""),
    ],
)
def test_field_paths_have_one_style(loc: tuple[int | str, ...], path: str) -> None:
    assert field_path(loc) == path


def test_checked_arguments_refuse_a_bad_argument_naming_it_before_the_body_runs() -> None:
    calls: list[Any] = []

    @checked_arguments
    def create(name: Name, input: JobInput | None = None, limit: Limit = 50) -> str:
        calls.append((name, input, limit))
        return name

    assert create("shop", {"n": 1}, limit=3) == "shop"
    with pytest.raises(InvalidInput) as caught:
        create("shop", [1])  # type: ignore[arg-type]
    assert caught.value.field == "input"
    with pytest.raises(InvalidInput) as caught:
        create("shop", limit=-1)
    assert caught.value.field == "limit"
    with pytest.raises(InvalidInput) as caught:
        create("")
    assert caught.value.field == "name"
    assert calls == [("shop", {"n": 1}, 3)]


def _nameko_logs(caplog: pytest.LogCaptureFixture, exc: Exception) -> logging.LogRecord:
    """Log ``exc`` as nameko does for an entrypoint's expected exception."""
    log_expected_errors_in_one_line()
    logger = logging.getLogger("nameko.containers")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nameko.containers"):
        try:
            raise exc
        except Exception as raised:
            logger.warning("(expected) error handling worker %s: %s", "ctx", raised, exc_info=True)
    [record] = caplog.records
    return record


@pytest.mark.parametrize(
    "exc",
    [NotFoundError("no job 1"), InvalidInput("must be a JSON object", field="input")],
)
def test_nameko_logs_a_caller_error_in_one_line(
    caplog: pytest.LogCaptureFixture, exc: Exception
) -> None:
    record = _nameko_logs(caplog, exc)
    assert record.exc_info is None
    assert "\n" not in caplog.text.strip()
    assert str(exc) in caplog.text


def test_nameko_keeps_the_traceback_of_an_unexpected_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = _nameko_logs(caplog, ValueError("boom"))
    assert record.exc_info is not None
    assert "Traceback" in caplog.text
