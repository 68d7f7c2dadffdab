"""Typed request bodies: a flight as known at scheduling time, alone or in a batch.

Strict JSON types (a number is not a string, a flight number is an integer). Airports are checked
against what the service can answer for: origins EWR/JFK/LGA; destinations from the validation
context (airports table plus the online store's route keys), so an unknown code is a 422, not a
silent missing value.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mlops_assets.serving.features import SERVED_ORIGINS, as_aware

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2101, 1, 1, tzinfo=UTC)
DESTINATIONS = "destinations"


class FlightRequest(BaseModel):
    """One scheduled flight; `scheduled_departure` without a zone is New York local time."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", description="IATA carrier code, e.g. 'UA'")
    flight: int = Field(ge=1, le=9999, description="flight number")
    tailnum: str | None = Field(None, pattern=r"^[A-Z0-9]{2,8}$", description="tail number, e.g. 'N14228'")
    origin: str = Field(description="EWR, JFK or LGA")
    dest: str = Field(pattern=r"^[A-Z0-9]{3}$", description="FAA code of the destination airport")
    scheduled_departure: datetime = Field(description="ISO 8601; naive = America/New_York local time")
    distance: float = Field(gt=0, le=20_000, allow_inf_nan=False, description="great-circle miles")

    @field_validator("origin")
    @classmethod
    def _served_origin(cls, value: str) -> str:
        if value not in SERVED_ORIGINS:
            raise ValueError(
                f"unknown origin airport; this service predicts departures from {sorted(SERVED_ORIGINS)}"
            )
        return value

    @field_validator("dest")
    @classmethod
    def _known_destination(cls, value: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get(DESTINATIONS)
        if known is not None and value not in known:
            raise ValueError(
                "unknown destination airport (not in the airports table nor in any served route)"
            )
        return value

    @field_validator("scheduled_departure")
    @classmethod
    def _plausible_date(cls, value: datetime) -> datetime:
        if not EARLIEST <= as_aware(value) < LATEST:
            raise ValueError("scheduled departure must be between 2000-01-01 and 2100-12-31")
        return value


class PredictRequest(FlightRequest):
    """The single-prediction body: a flight, optionally asking for an explanation."""

    explain: bool = False


class BatchRequest(BaseModel):
    """Several flights scored in one call (up to the configured maximum)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    instances: list[FlightRequest] = Field(min_length=1)
    explain: bool = False


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """Request-body documentation for routes that parse the body themselves (OpenAPI only)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
