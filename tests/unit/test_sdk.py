"""The @function decorator: typed signatures, validation and retry policy."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest
from pydantic import BaseModel

from autostep import PermanentError, StepContext, function
from autostep.sdk import MAX_BACKOFF, REGISTRY, RetryPolicy


class In(BaseModel):
    n: int


class Out(BaseModel):
    doubled: int


@function(name="unit_double", retries=5, backoff=0.5, timeout=3)
def double(inp: In) -> Out:
    return Out(doubled=inp.n * 2)


@function(name="unit_context")
def with_context(inp: In, ctx: StepContext) -> Out:
    return Out(doubled=ctx.attempt)


def returns_dict(inp: In, ctx: StepContext) -> dict[str, Any]:
    return {"doubled": ctx.attempt}


def _context() -> StepContext:
    return StepContext(
        job_id=MagicMock(), process_id=MagicMock(), step="s", attempt=4, session=MagicMock()
    )


def test_a_function_is_registered_with_its_models_and_policy() -> None:
    spec = REGISTRY["unit_double"]
    assert spec.input_model is In and spec.output_model is Out
    assert spec.policy == RetryPolicy(retries=5, backoff=0.5, timeout=3)
    assert spec.call({"n": 21}, _context()) == {"doubled": 42}


def test_a_function_may_take_its_step_context() -> None:
    assert REGISTRY["unit_context"].takes_context
    assert REGISTRY["unit_context"].call({"n": 1}, _context()) == {"doubled": 4}


def test_bad_input_is_a_permanent_error_naming_the_function() -> None:
    with pytest.raises(PermanentError, match="input of 'unit_double' is invalid"):
        REGISTRY["unit_double"].call({"n": "many"}, _context())


def test_annotations_must_be_pydantic_models() -> None:
    with pytest.raises(TypeError, match="return annotation must be a pydantic model"):
        function(name="unit_bad")(returns_dict)
    with pytest.raises(TypeError, match="takes \\(input\\) or \\(input, context\\)"):

        @function(name="unit_none")
        def nothing() -> Out:
            return Out(doubled=0)


def test_backoff_doubles_up_to_the_cap_and_steps_override_functions() -> None:
    policy = RetryPolicy(retries=3, backoff=2.0)
    assert [policy.delay(a) for a in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert policy.delay(30) == MAX_BACKOFF
    step = policy.override({"retries": 0, "backoff": None, "timeout": 9.0})
    assert step == RetryPolicy(retries=0, backoff=2.0, timeout=9.0)
