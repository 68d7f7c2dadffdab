"""Request bodies built from the project's `request.fields`: one instance, alone or in a batch.

Strict JSON types (a number is not a string, an integer field refuses 1.5), unknown fields refused,
ranges, domains (the message lists the allowed values), patterns (the message shows an example,
never the regex) and lengths from the project file. A naive datetime is local time of the field's
`time_zone` and becomes aware on parsing; a local time that does not exist there is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from mlops_assets.features.request_features import localize
from mlops_assets.project.spec import Project, RequestFieldSpec

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2101, 1, 1, tzinfo=UTC)
PYTHON_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "datetime": datetime,
                                 "date": date}
RESERVED = frozenset({"explain", "instances"})


def _in_domain(allowed: tuple[str, ...], members: frozenset[str], value: object) -> object:
    if value is not None and str(value) not in members:
        raise ValueError(f"must be one of {', '.join(repr(a) for a in allowed)}")
    return value


def _matches(fullmatch: Callable[[str], object], example: object, value: object) -> object:
    if value is not None and not fullmatch(str(value)):
        hint = f"; e.g. {example!r}" if example is not None else ""
        raise ValueError(f"has an unexpected format{hint}")
    return value


def _aware(zone_name: str, value: object) -> object:
    """A naive datetime gets the field's zone; the instant must be a real local time within range."""
    if not isinstance(value, datetime):
        return value
    moment = value if value.tzinfo is not None else localize(value, zone_name)
    if moment is None:
        raise ValueError(f"this local time does not exist in {zone_name} (clocks moved forward)")
    if not EARLIEST <= moment < LATEST:
        raise ValueError("must be between 1900-01-01 and 2100-12-31")
    return moment


def _field(name: str, spec: RequestFieldSpec) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of one request field."""
    constraints: dict[str, Any] = {"description": spec.description or None}
    if spec.example is not None:
        constraints["examples"] = [spec.example]
    validators: list[Any] = []
    if spec.type in {"int", "float"}:
        constraints.update(ge=spec.min, le=spec.max, gt=spec.gt)
        if spec.type == "float":
            constraints["allow_inf_nan"] = False
    if spec.type == "str":
        constraints["max_length"] = spec.max_length
        if spec.pattern:
            validators.append(AfterValidator(partial(_matches, re.compile(spec.pattern).fullmatch, spec.example)))
            constraints["json_schema_extra"] = {"pattern": spec.pattern}
    if spec.domain:
        validators.append(AfterValidator(partial(_in_domain, tuple(spec.domain), frozenset(spec.domain))))
        constraints["json_schema_extra"] = {"enum": list(spec.domain)}
    if spec.type == "datetime":
        validators.append(AfterValidator(partial(_aware, spec.time_zone or "UTC")))
    annotation: Any = Annotated[PYTHON_TYPES[spec.type], *validators] if validators else PYTHON_TYPES[spec.type]
    if not spec.required:
        return annotation | None, Field(None, **constraints)
    return annotation, Field(..., **constraints)


@dataclass(frozen=True)
class RequestModels:
    """The generated models: an instance, the single-prediction body and the batch body."""

    instance: type[BaseModel]
    single: type[BaseModel]
    batch: type[BaseModel]


def model_name(project: Project) -> str:
    return "".join(part.capitalize() for part in project.name.split("_")) + "Request"


def request_models(project: Project, max_batch: int) -> RequestModels:
    """Pydantic models for the project's request (names and types exactly as declared)."""
    clash = sorted(RESERVED & set(project.request.fields))
    if clash:
        raise ValueError(f"request fields may not be named {clash}: the service uses those names")
    fields = {name: _field(name, spec) for name, spec in project.request.fields.items()}
    example = project.request.example or {n: s.example for n, s in project.request.fields.items()
                                          if s.example is not None}
    strict = {"strict": True, "extra": "forbid", "frozen": True}
    instance = create_model(
        model_name(project), __config__=ConfigDict(**strict, json_schema_extra={"examples": [example]}),
        __doc__=f"One instance of {project.name}: {project.description.strip()}", **fields)
    single = create_model(
        f"{model_name(project)}Body", __base__=instance,
        __doc__="One instance to score, optionally asking for an explanation.",
        explain=(bool, Field(False, description="add the top TreeSHAP contributions")))
    batch = create_model(
        f"{model_name(project)}Batch", __config__=ConfigDict(**strict),
        __doc__=f"Up to {max_batch} instances, answered in order.",
        instances=(list[instance], Field(..., min_length=1, max_length=max_batch)),  # type: ignore[valid-type]
        explain=(bool, False))
    return RequestModels(instance, single, batch)


def openapi_body(schema: dict[str, Any]) -> dict[str, Any]:
    """Request-body documentation for routes that parse the body themselves (OpenAPI only)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def batch_schema(models: RequestModels, limit: int) -> dict[str, Any]:
    """The batch body with the instance schema inlined (no $defs for FastAPI to resolve)."""
    return {"type": "object", "required": ["instances"], "title": models.batch.__name__,
            "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": limit,
                                         "items": models.instance.model_json_schema()},
                           "explain": {"type": "boolean", "default": False}}}
