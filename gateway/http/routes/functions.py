"""``/functions`` (the function registry) and ``/conditions/test`` (try a CEL expression).

A function is listed with its JSON Schemas, retry policy and live runners;
``live`` is false when no runner serving it is alive (it is unserved).
"""

from __future__ import annotations

from fastapi import APIRouter, Path

from autostep import registry
from autostep.conditions import try_expression
from autostep.db import unit_of_work
from autostep.exceptions import NotFoundError
from autostep.gateway.http.deps import Database
from autostep.gateway.http.problems import problem_responses
from autostep.gateway.http.schemas import ConditionTest, ConditionVerdict, FunctionOut

__all__ = ["router"]

router = APIRouter()


@router.get("/functions", tags=["functions"], responses=problem_responses(422))
def list_functions(db: Database) -> list[FunctionOut]:
    """Every function in the registry, by name."""
    with unit_of_work(db) as session:
        return [FunctionOut.model_validate(f) for f in registry.list_functions(session)]


@router.get("/functions/{name}", tags=["functions"], responses=problem_responses(404, 422))
def get_function(db: Database, name: str = Path(max_length=100)) -> FunctionOut:
    with unit_of_work(db) as session:
        for function in registry.list_functions(session):
            if function["name"] == name:
                return FunctionOut.model_validate(function)
    raise NotFoundError(f"no function {name!r} in the registry: no runner has served it lately")


@router.post(
    "/conditions/test", tags=["conditions"], responses=problem_responses(400, 413, 415, 422)
)
def test_condition(body: ConditionTest) -> ConditionVerdict:
    """Compile a CEL expression and evaluate it over ``sample``; errors come back as ``error``."""
    return ConditionVerdict.model_validate(try_expression(body.expression, body.sample))
