"""The feature repository's schema, declared as data: entities, timestamps, features, TTLs.

Timestamps are the moment a value became *known*, never the moment it describes, so a
backward as-of join at the prediction time cannot see the future:
- weather: the observation hour (an hourly report is available at its hour);
- trailing delays: when the flight's arrival was observed (departure + delay + air time + a
  margin for taxi and reporting), so a same-day delay counts only once it could have been seen;
- departures at the origin: the actual departure moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta


@dataclass(frozen=True)
class FeatureView:
    """A named set of features of one entity, with the time they became known and a TTL."""

    name: str
    entity_keys: tuple[str, ...]
    timestamp_field: str
    features: tuple[str, ...]
    description: str
    ttl: timedelta | None
    tags: dict[str, str] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, str]:
        return {
            "entity keys": ", ".join(self.entity_keys),
            "event timestamp": self.timestamp_field,
            "ttl": str(self.ttl) if self.ttl else "none (static)",
            "features": ", ".join(self.features),
        }


def _delay_features(prefix: str, windows: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        f"{prefix}_{stat}_{w}" for w in windows for stat in ("arr_delay_mean", "delayed_share", "arrivals")
    )


DELAY_WINDOWS = ("7d", "28d")
DEPARTURE_WINDOWS = ("1h", "3h")

weather_view = FeatureView(
    name="weather_features",
    entity_keys=("origin",),
    timestamp_field="observed_at",
    features=(
        "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure",
        "visib", "precip_3h", "wind_speed_max_3h", "visib_min_3h",
    ),
    description="Hourly weather at the origin airport, latest report at or before prediction time.",
    ttl=timedelta(hours=3),
)

plane_view = FeatureView(
    name="plane_features",
    entity_keys=("tailnum",),
    timestamp_field="valid_from",
    features=("plane_age", "seats", "engines", "plane_type", "engine_type", "manufacturer"),
    description="Static aircraft attributes from the FAA registry, by tail number.",
    ttl=None,
)

route_delay_view = FeatureView(
    name="route_delay_stats",
    entity_keys=("origin", "dest"),
    timestamp_field="observed_at",
    features=_delay_features("route", DELAY_WINDOWS),
    description="Trailing arrival delays on the route, from flights already arrived.",
    ttl=timedelta(days=28),
)

carrier_delay_view = FeatureView(
    name="carrier_delay_stats",
    entity_keys=("carrier",),
    timestamp_field="observed_at",
    features=_delay_features("carrier", DELAY_WINDOWS),
    description="Trailing arrival delays of the carrier's NYC departures, from flights already arrived.",
    ttl=timedelta(days=28),
)

origin_delay_view = FeatureView(
    name="origin_delay_stats",
    entity_keys=("origin",),
    timestamp_field="observed_at",
    features=_delay_features("origin", DELAY_WINDOWS),
    description="Trailing arrival delays of flights from the origin airport, already arrived.",
    ttl=timedelta(days=28),
)

origin_departure_view = FeatureView(
    name="origin_departure_stats",
    entity_keys=("origin",),
    timestamp_field="departed_at",
    features=tuple(
        f"origin_{stat}_{w}" for w in DEPARTURE_WINDOWS
        for stat in ("dep_delay_mean", "dep_delayed_share", "departures")
    ),
    description="Departure delays at the origin in the last hours, from flights already departed.",
    ttl=timedelta(hours=6),
)

FEATURE_VIEWS: dict[str, FeatureView] = {
    v.name: v
    for v in (
        weather_view, plane_view, route_delay_view, carrier_delay_view, origin_delay_view,
        origin_departure_view,
    )
}
