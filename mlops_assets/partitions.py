"""Partitions, defined once: the upstream system delivers one month at a time."""

import dagster as dg

monthly_partitions = dg.MonthlyPartitionsDefinition(start_date="2013-01-01", end_date="2014-01-01")


def month_of(partition_key: str) -> str:
    """'2013-03-01' -> '2013-03', the month label used in file names and messages."""
    return partition_key[:7]
