"""CEL expressions: transition conditions, input mappings and fan-out lists.

The condition service as a library (conditions decide which step comes
next, and users try them before saving): expressions are compiled
when a workflow version is saved (a bad one, or one reading a variable that
does not exist where it is used, is rejected there, naming the step or
transition: :func:`check_variables`) and evaluated by the engine after each
step. CEL is
side-effect free and cannot reach the host, so no Python ``eval`` is ever
used on user text. The ``conditions`` RPC in the gateway wraps
:func:`try_expression` so a client can test an expression on a sample.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import lru_cache
from typing import Any

import cel

from autostep.exceptions import ConditionError, PermanentError

__all__ = [
    "CONDITION_VARIABLES",
    "FAN_OUT_VARIABLES",
    "FOR_EACH_VARIABLES",
    "INPUT_VARIABLES",
    "check_variables",
    "compile_expression",
    "evaluate",
    "evaluate_condition",
    "macro_variables",
    "try_expression",
    "unknown_variables",
]

#: The variables a transition's ``when`` sees.
CONDITION_VARIABLES = ("output", "input")
#: The variables a step's ``input`` mapping sees ...
INPUT_VARIABLES = ("input", "prev")
#: ... and, in a fan-out step (``for_each`` set), these too.
FAN_OUT_VARIABLES = ("item", "index")
#: The variables ``for_each`` sees.
FOR_EACH_VARIABLES = ("input", "prev")

#: The macros that bind a variable of their own: ``items.all(x, x > 0)``.
_MACROS = ("all", "exists", "exists_one", "map", "filter")
#: A string literal (any quotes; raw and bytes prefixes need no care) or a
#: ``//`` comment: skipped when looking for macro variables.
_LITERAL_OR_COMMENT = re.compile(
    r"'''.*?'''"
    r'|""".*?"""'
    r"|'(?:\\.|[^'\\\n])*'"
    r'|"(?:\\.|[^"\\\n])*"'
    r"|//[^\n]*",
    re.DOTALL,
)
#: ``.all(x,`` and the like: a macro call and the variable it binds.
_MACRO_VARIABLE = re.compile(
    r"\.\s*(?:" + "|".join(_MACROS) + r")\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,"
)


@lru_cache(maxsize=4096)
def compile_expression(source: str, *, field: str = "expression") -> Any:
    """Compile ``source`` or raise :class:`ConditionError` naming ``field``."""
    if not source.strip():
        raise ConditionError("expression is empty", field=field)
    try:
        return cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        raise ConditionError(str(exc).splitlines()[0], field=field) from exc


def macro_variables(source: str) -> set[str]:
    """The names that macros in ``source`` bind (the ``x`` of ``items.all(x, x > 0)``)."""
    return {name for name, _ in _macro_scopes(_code_only(source))}


def unknown_variables(source: str, known: Collection[str]) -> list[str]:
    """The top-level variables ``source`` reads that are neither ``known`` nor macro-bound.

    The CEL binding lists an expression's variables, the ones macros bind
    among them. A macro's variable is told apart by a scan of the source
    (string literals and comments blanked out): it is known inside the
    parentheses of its macro call, and unknown if read anywhere else.
    """
    variables = compile_expression(source).variables()
    code = _code_only(source)
    scopes = _macro_scopes(code)
    bound = {name for name, _ in scopes}
    return [
        name
        for name in variables
        if name not in known and (name not in bound or _read_outside(name, code, scopes))
    ]


def _code_only(source: str) -> str:
    """``source`` with string literals and comments blanked (positions kept)."""
    return _LITERAL_OR_COMMENT.sub(lambda found: " " * len(found.group()), source)


def _macro_scopes(code: str) -> list[tuple[str, range]]:
    """Each macro call's variable and the span of its parentheses."""
    scopes = []
    for found in _MACRO_VARIABLE.finditer(code):
        opening = code.index("(", found.start())
        depth = 0
        for end in range(opening, len(code)):
            depth += {"(": 1, ")": -1}.get(code[end], 0)
            if depth == 0:
                break
        scopes.append((found.group(1), range(opening, end + 1)))
    return scopes


def _read_outside(name: str, code: str, scopes: list[tuple[str, range]]) -> bool:
    """Whether ``name`` is read as a variable outside every macro that binds it."""
    for found in re.finditer(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", code):
        before = code[: found.start()].rstrip()
        if before.endswith("."):
            continue  # a field: ``output.x``
        inside = any(found.start() in span for bound, span in scopes if bound == name)
        if not inside:
            return True
    return False


def check_variables(source: str, known: Collection[str], *, field: str) -> None:
    """Compile ``source`` and refuse variables other than ``known``, naming ``field``."""
    compile_expression(source, field=field)
    unknown = unknown_variables(source, known)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise ConditionError(
            f"unknown variable{plural} {names}; the variables here are {', '.join(known)}",
            field=field,
        )


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
