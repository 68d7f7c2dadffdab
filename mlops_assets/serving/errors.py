"""Client errors that name the bad field and nothing else: no schema, no input echo, no traceback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse

MAX_PROBLEMS = 20
SOURCES = ("query", "body", "header", "path")
FRIENDLY = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "datetime_type": "must be an ISO 8601 date-time string",
    "datetime_parsing": "must be an ISO 8601 date-time, e.g. 2013-06-01T17:30:00-04:00",
    "datetime_from_date_parsing": "must be an ISO 8601 date-time, e.g. 2013-06-01T17:30:00-04:00",
    "finite_number": "must be a finite number",
    "too_short": "must not be empty",
}


class ClientError(Exception):
    """A request the service refuses, with its HTTP status and the field-level problems."""

    def __init__(self, status: int, problems: list[dict[str, str]]) -> None:
        super().__init__(f"{status}: {problems}")
        self.status = status
        self.problems = problems


NAME_CHARS = 40


def field_name(loc: Sequence[str | int], prefix: str = "") -> str:
    """('instances', 3, 'distance') -> 'instances[3].distance'; the whole body is 'body'. A name is cut
    to 40 characters: an unknown field's name is the client's input, never echoed in full."""
    name = prefix
    for part in loc:
        text = str(part)[:NAME_CHARS]
        name += f"[{part}]" if isinstance(part, int) else (f".{text}" if name else text)
    return name or "body"


def problem_text(error: Mapping[str, Any]) -> str:
    """Pydantic's message for the error type, minus its 'Value error, ' prefix and any input."""
    if error["type"] in FRIENDLY:
        return FRIENDLY[error["type"]]
    return str(error["msg"]).removeprefix("Value error, ")


def problems_of(errors: Sequence[Mapping[str, Any]], prefix: str = "") -> list[dict[str, str]]:
    """One entry per bad field (capped, with a count of the rest): what and where, never the value.

    Takes pydantic's or FastAPI's error list; FastAPI's leading 'query'/'body'/'header' is dropped.
    """
    found = []
    for error in errors:
        loc = list(error["loc"])
        if loc and loc[0] in SOURCES:
            loc = loc[1:]
        found.append({"field": field_name(loc, prefix), "problem": problem_text(error)})
    if len(found) > MAX_PROBLEMS:
        found = [
            *found[:MAX_PROBLEMS],
            {"field": "body", "problem": f"and {len(found) - MAX_PROBLEMS} more problems"},
        ]
    return found


def body_problem(problem: str) -> list[dict[str, str]]:
    return [{"field": "body", "problem": problem}]


def error_response(status: int, detail: list[dict[str, str]] | str, request_id: str) -> JSONResponse:
    """The single error shape of the service: {"detail": [fields] or a message, "request_id": ...}."""
    return JSONResponse({"detail": detail, "request_id": request_id}, status_code=status)
