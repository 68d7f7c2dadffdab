"""Pure polars transforms from validated source tables to feature-view frames (no Dagster here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from mlops_assets.features.views import DELAY_WINDOWS, DEPARTURE_WINDOWS

LOCAL_TZ = "America/New_York"
DELAYED_MINUTES = 15
ARRIVAL_REPORTING_MARGIN = timedelta(minutes=60)
PLANE_REGISTRY_VALID_FROM = datetime(2013, 1, 1, tzinfo=UTC)
REQUEST_COLUMNS = ("carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure", "distance")


def flight_events(flights: pl.DataFrame, lead: timedelta) -> pl.DataFrame:
    """Add the times that matter: scheduled departure, prediction time, departure and arrival observed.

    `time_hour` is the scheduled departure hour in UTC; `minute` completes it. A flight's arrival
    is treated as known `ARRIVAL_REPORTING_MARGIN` after wheels-on (departure + air time), which
    covers taxi-in and reporting; cancelled and diverted flights never produce an arrival event.
    """
    sched = pl.col("time_hour") + pl.duration(minutes=pl.col("minute"))
    departed = pl.col("scheduled_departure") + pl.duration(minutes=pl.col("dep_delay"))
    arrived = (
        pl.col("departed_at") + pl.duration(minutes=pl.col("air_time")) + ARRIVAL_REPORTING_MARGIN
    )
    return (
        flights.with_columns(scheduled_departure=sched)
        .with_columns(prediction_time=pl.col("scheduled_departure") - lead, departed_at=departed)
        .with_columns(
            arrival_observed_at=pl.when(pl.col("arr_delay").is_not_null()).then(arrived),
        )
    )


def request_features(requests: pl.DataFrame) -> pl.DataFrame:
    """Features known from the booking itself; shared by training and serving so they cannot skew."""
    local = pl.col("scheduled_departure").dt.convert_time_zone(LOCAL_TZ)
    return requests.with_columns(
        sched_hour=local.dt.hour().cast(pl.Int32),
        day_of_week=local.dt.weekday().cast(pl.Int32),
        distance=pl.col("distance").cast(pl.Float64),
    )


def weather_features(weather: pl.DataFrame) -> pl.DataFrame:
    """Hourly observations plus 3-hour trailing aggregates, keyed by origin and observation time."""
    base = (
        weather.rename({"time_hour": "observed_at"})
        .unique(subset=["origin", "observed_at"], keep="last")
        .sort("origin", "observed_at")
    )
    trailing = base.rolling("observed_at", period="3h", group_by="origin").agg(
        precip_3h=pl.col("precip").sum(),
        wind_speed_max_3h=pl.col("wind_speed").max(),
        visib_min_3h=pl.col("visib").min(),
    )
    cols = ["origin", "observed_at", "temp", "dewp", "humid", "wind_dir", "wind_speed",
            "wind_gust", "precip", "pressure", "visib"]
    return base.select(cols).join(trailing, on=["origin", "observed_at"], how="left")


def plane_features(planes: pl.DataFrame, as_of_year: int = 2013) -> pl.DataFrame:
    """Static aircraft attributes; valid from the registry snapshot date."""
    return planes.select(
        "tailnum",
        valid_from=pl.lit(PLANE_REGISTRY_VALID_FROM).dt.cast_time_unit("us"),
        plane_age=(as_of_year - pl.col("year")).cast(pl.Float64),
        seats=pl.col("seats").cast(pl.Float64),
        engines=pl.col("engines").cast(pl.Float64),
        plane_type=pl.col("type"),
        engine_type=pl.col("engine"),
        manufacturer=pl.col("manufacturer"),
    ).unique(subset=["tailnum"], keep="last")


def _trailing_stats(
    events: pl.DataFrame, keys: list[str], ts: str, value: str, prefix: str,
    windows: tuple[str, ...], names: tuple[str, str, str],
) -> pl.DataFrame:
    """Rolling mean, share above the delay threshold and count per key over each window.

    Rows sharing a key and timestamp get identical statistics (the window is closed on the right,
    so it includes them all); one row per (key, timestamp) is kept.
    """
    mean_name, share_name, count_name = names
    ordered = events.select(*keys, ts, value).drop_nulls([ts, value]).sort(*keys, ts)
    result: pl.DataFrame | None = None
    for window in windows:
        stats = ordered.rolling(ts, period=window, group_by=keys).agg(
            pl.col(value).mean().alias(f"{prefix}_{mean_name}_{window}"),
            (pl.col(value) > DELAYED_MINUTES).mean().alias(f"{prefix}_{share_name}_{window}"),
            pl.len().cast(pl.Float64).alias(f"{prefix}_{count_name}_{window}"),
        ).unique(subset=[*keys, ts], keep="last")
        result = stats if result is None else result.join(stats, on=[*keys, ts], how="left")
    assert result is not None
    return result.sort(ts)


def arrival_delay_stats(events: pl.DataFrame, keys: list[str], prefix: str) -> pl.DataFrame:
    """Trailing arrival-delay statistics per key, timestamped when each arrival was observed."""
    stats = _trailing_stats(
        events, keys, "arrival_observed_at", "arr_delay", prefix, DELAY_WINDOWS,
        ("arr_delay_mean", "delayed_share", "arrivals"),
    )
    return stats.rename({"arrival_observed_at": "observed_at"})


def departure_delay_stats(events: pl.DataFrame) -> pl.DataFrame:
    """Departure delays at each origin over the last hours, timestamped at actual departure."""
    return _trailing_stats(
        events, ["origin"], "departed_at", "dep_delay", "origin", DEPARTURE_WINDOWS,
        ("dep_delay_mean", "dep_delayed_share", "departures"),
    )


def with_event_month(df: pl.DataFrame, ts: str) -> pl.DataFrame:
    """Add the month of the event time, the partition column of the offline store."""
    return df.with_columns(month=pl.col(ts).dt.strftime("%Y-%m"))


def delay_views(events: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The four trailing-delay views from one frame of flight events, by view name."""
    return {
        "route_delay_stats": arrival_delay_stats(events, ["origin", "dest"], "route"),
        "carrier_delay_stats": arrival_delay_stats(events, ["carrier"], "carrier"),
        "origin_delay_stats": arrival_delay_stats(events, ["origin"], "origin"),
        "origin_departure_stats": departure_delay_stats(events),
    }


def feature_views(flights: pl.DataFrame, weather: pl.DataFrame, planes: pl.DataFrame,
                  lead: timedelta) -> dict[str, pl.DataFrame]:
    """All six views from the source tables (what the feature assets store), by view name."""
    return {"weather_features": weather_features(weather), "plane_features": plane_features(planes),
            **delay_views(flight_events(flights, lead))}
