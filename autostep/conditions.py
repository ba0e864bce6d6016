"""CEL expressions: transition conditions, input mappings and fan-out lists.

The condition service as a library (conditions decide which step comes
next, and users try them before saving): expressions are compiled
when a workflow version is saved (a bad one is rejected there, naming the
step or transition) and evaluated by the engine after each step. CEL is
side-effect free and cannot reach the host, so no Python ``eval`` is ever
used on user text. The ``conditions`` RPC in the gateway wraps
:func:`try_expression` so a client can test an expression on a sample.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cel

from autostep.exceptions import ConditionError, PermanentError

__all__ = ["compile_expression", "evaluate", "evaluate_condition", "try_expression"]

#: The variables a condition sees; a mapping or fan-out also sees ``prev``,
#: ``item`` and ``index``.
CONDITION_VARIABLES = ("output", "input")


@lru_cache(maxsize=4096)
def compile_expression(source: str, *, field: str = "expression") -> Any:
    """Compile ``source`` or raise :class:`ConditionError` naming ``field``."""
    if not source.strip():
        raise ConditionError("expression is empty", field=field)
    try:
        return cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        raise ConditionError(str(exc).splitlines()[0], field=field) from exc


def evaluate(source: str, variables: dict[str, Any], *, field: str) -> Any:
    """Evaluate ``source`` over ``variables``; an error fails the step for good.

    A missing key, a type clash or a division by zero in user data is not
    something a retry fixes, so it raises :class:`PermanentError`.
    """
    try:
        program = compile_expression(source, field=field)
    except ConditionError as exc:
        raise PermanentError(str(exc)) from exc
    try:
        return program.execute(variables)
    except Exception as exc:  # the CEL binding raises KeyError, TypeError, ...
        raise PermanentError(f"{field}: {type(exc).__name__}: {exc}") from exc


def evaluate_condition(source: str, variables: dict[str, Any], *, field: str) -> bool:
    """A condition must give a boolean; anything else is a permanent error."""
    result = evaluate(source, variables, field=field)
    if not isinstance(result, bool):
        raise PermanentError(f"{field}: condition gave {type(result).__name__}, not a bool")
    return result


def try_expression(source: str, sample: dict[str, Any]) -> dict[str, Any]:
    """Compile and run ``source`` over ``sample``; report instead of raising."""
    try:
        compile_expression(source)
        return {"ok": True, "result": evaluate(source, sample, field="expression")}
    except (ConditionError, PermanentError) as exc:
        return {"ok": False, "error": str(exc)}
