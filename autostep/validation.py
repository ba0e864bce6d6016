"""Limits and checks on what callers send, applied before any SQL runs.

The boundaries (the ``workflows`` RPC service, the CLI) validate their
arguments with :func:`checked_arguments`, from the types declared here; the
core functions they call (:func:`autostep.catalog.create_project`,
:func:`autostep.queries.list_jobs`, :func:`autostep.runs.start_job`) check the
same values again with :func:`check`, so a bad value is refused with an
:class:`~autostep.exceptions.InvalidInput` naming its field, whoever calls,
and nothing is half-written. Field paths have one style everywhere:
``steps[1].next[0].when`` (:func:`field_path`).

Payloads (a job's input, a step's output, a workflow definition) are limited
to ``AUTOSTEP_MAX_PAYLOAD_BYTES`` (1 MiB by default), measured as compact
JSON, and may not hold what PostgreSQL's ``jsonb`` refuses (U+0000, NaN).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar, get_type_hints

from pydantic import Field, PlainValidator, StringConstraints, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, PydanticSerializationError, to_json

from autostep.exceptions import InvalidInput
from autostep.settings import get_settings

__all__ = [
    "NAME_PATTERN",
    "NAME_RULE",
    "Description",
    "JobInput",
    "Limit",
    "Name",
    "Reference",
    "VersionNumber",
    "check",
    "check_payload",
    "checked_arguments",
    "field_path",
    "invalid_input",
    "payload_problem",
    "payload_size",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Names of projects, workflows and steps: a letter or ``_`` first, then
#: letters, digits, ``_`` and ``-``; 100 characters at most.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"

#: The name of a project, workflow or step.
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NAME_PATTERN)]
#: A free-text description.
Description = Annotated[str, StringConstraints(max_length=2000)]
#: Something looked up by name or id (a project, a workflow, a job).
Reference = Annotated[str, StringConstraints(min_length=1, max_length=200)]
#: A workflow version number.
VersionNumber = Annotated[int, Field(strict=True, ge=1)]
#: How many rows a listing returns.
Limit = Annotated[int, Field(strict=True, ge=1, le=500)]

#: ``\u0000`` in JSON text that is an escaped NUL (not an escaped backslash before ``u0000``).
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

#: What :data:`NAME_PATTERN` asks, in words, for error messages.
NAME_RULE = "must start with a letter or _ and use only letters, digits, _ and -"
_NAME_RULE = NAME_RULE


def _json_object_within_limit(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "json_object", "must be a JSON object, not {kind}", {"kind": _json_kind(value)}
        )
    problem = payload_problem(value)
    if problem is not None:
        raise PydanticCustomError("payload", "{problem}", {"problem": problem})
    return value


def _json_kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "an array"
    return kinds.get(type(value), type(value).__name__)


#: A job's input: a JSON object of at most ``max_payload_bytes``.
JobInput = Annotated[dict[str, Any], PlainValidator(_json_object_within_limit)]


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``("steps", 1, "next", 0, "when")`` as ``steps[1].next[0].when``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def invalid_input(
    exc: ValidationError,
    prefix: str = "",
    kind: type[InvalidInput] = InvalidInput,
    whole: str = "input",
) -> InvalidInput:
    """The first error of ``exc`` as an :class:`InvalidInput` (or ``kind``) naming its field.

    ``prefix`` goes before the error's path; ``whole`` names the value when
    the error is about all of it.
    """
    error = exc.errors(include_url=False)[0]
    message = error["msg"]
    if error["type"] == "string_pattern_mismatch" and error["ctx"]["pattern"] == NAME_PATTERN:
        message = _NAME_RULE
    field = field_path(error["loc"], prefix) or whole
    return kind(message, field=field)


@functools.lru_cache(maxsize=64)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def check(annotation: Any, value: Any, *, field: str) -> Any:
    """``value`` validated as ``annotation``, or :class:`InvalidInput` naming ``field``."""
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError as exc:
        raise invalid_input(exc, field) from None


def checked_arguments(func: F) -> F:
    """Validate a call's arguments against ``func``'s annotations first.

    For entrypoints (RPC methods): a bad argument raises
    :class:`InvalidInput` naming the parameter (``input``, ``limit``) or a
    path inside it, before the body runs. Unannotated parameters and ``Any``
    pass as they are.
    """
    signature = inspect.signature(func)
    hints = get_type_hints(func, include_extras=True)
    checked = {
        name: _adapter(hints[name])
        for name in signature.parameters
        if name in hints and hints[name] is not Any
    }

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name, adapter in checked.items():
            if name in bound.arguments:
                try:
                    bound.arguments[name] = adapter.validate_python(bound.arguments[name])
                except ValidationError as exc:
                    raise invalid_input(exc, name) from None
        return func(*bound.args, **bound.kwargs)

    call.__signature__ = signature  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


def payload_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON."""
    return len(to_json(value))


def payload_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as a payload (a job's input, a step's output), or None.

    It is larger than ``max_payload_bytes`` as compact JSON, or not JSON
    data, or holds what PostgreSQL's ``jsonb`` refuses: a NaN or infinite
    number, the character U+0000.
    """
    try:
        data = to_json(value)
    except PydanticSerializationError as exc:
        return f"is not JSON data: {exc}"
    limit = get_settings().max_payload_bytes
    if len(data) > limit:
        return f"is {len(data)} bytes as JSON, more than the limit of {limit} bytes"
    if (b"NaN" in data or b"Infinity" in data) and data != to_json(value, inf_nan_mode="null"):
        return "holds a NaN or infinite number, which JSON cannot store"
    if b"\\u0000" in data and _ESCAPED_NUL.search(data):
        return "holds the character U+0000, which PostgreSQL cannot store"
    return None


def check_payload(value: Any, *, field: str) -> None:
    """Refuse ``value`` as :func:`payload_problem` does: :class:`InvalidInput` naming ``field``."""
    problem = payload_problem(value)
    if problem is not None:
        raise InvalidInput(problem, field=field)
