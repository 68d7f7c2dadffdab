"""Periods, defined once per project: deliveries, monitoring and batch scoring share them.

Open-ended time windows: a project declares where its history starts, and the calendar runs on
to the current period, so next month's delivery has a partition to land in without a code
change. Chosen over dynamic partitions because time windows keep backfill ranges, the UI's
calendar and per-period automation, and a delivery outside the calendar is refused at `land`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from mlops_assets.project.spec import Granularity, Project

CRON = {"day": "0 0 * * *", "week": "0 0 * * 1", "month": "0 0 1 * *"}
KEY_FORMAT = "%Y-%m-%d"


def period_partitions(project: Project) -> dg.TimeWindowPartitionsDefinition:
    """The project's periods from its `start` to the current one (end_offset=1: the running period too)."""
    start = project.start if len(project.start) == 10 else f"{project.start}-01"
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=CRON[project.granularity], start=start, fmt=KEY_FORMAT, timezone="UTC", end_offset=1,
    )


def _add_month(moment: datetime) -> datetime:
    return moment.replace(year=moment.year + moment.month // 12, month=moment.month % 12 + 1)


def period_bounds(partition_key: str, granularity: Granularity, zone: str = "UTC") -> tuple[datetime, datetime]:
    """[start, end) of the period a partition key names, on the calendar of `zone` (aware datetimes)."""
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    start = datetime.strptime(partition_key[:10], KEY_FORMAT)
    if granularity == "day":
        end = start + timedelta(days=1)
    elif granularity == "week":
        end = start + timedelta(days=7)
    else:
        end = _add_month(start)
    return start.replace(tzinfo=tz), end.replace(tzinfo=tz)


def period_label(partition_key: str, granularity: Granularity) -> str:
    """The human label used in file names and messages: 2013-03 (month), 2013-03-04 (day, week)."""
    return partition_key[:7] if granularity == "month" else partition_key[:10]


def period_key(label: str, granularity: Granularity) -> str:
    """A label (2013-03 or 2013-03-04) back to its partition key; ValueError when it is not a period start."""
    key = f"{label}-01" if granularity == "month" and len(label) == 7 else label
    try:
        start = datetime.strptime(key, KEY_FORMAT)
    except ValueError:
        raise ValueError(f"{label} is not a {granularity}; write {'YYYY-MM' if granularity == 'month' else 'YYYY-MM-DD'}"
                         ) from None
    if granularity == "week" and start.weekday() != 0:
        raise ValueError(f"{label} is not a week start (weeks start on Monday)")
    if granularity == "month" and start.day != 1:
        raise ValueError(f"{label} is not a month; write YYYY-MM")
    return key


def example_period_bounds(project: Project, partition_key: str) -> tuple[datetime, datetime]:
    """A period of examples (served, scored, labelled) on the calendar of the examples' source, in UTC."""
    start, end = period_bounds(partition_key, project.granularity, project.sources[project.examples.source].time_zone)
    return start.astimezone(UTC), end.astimezone(UTC)
