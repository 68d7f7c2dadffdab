"""Taking a delivery in: arguments checked before anything changes, refusals kept and told.

Shared by `mlops-assets land`, the landing sensor and the ingestion assets, so the CLI and the
daemon accept, refuse and alert in the same words.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlops_assets.ingestion.deliveries import SUFFIXES, Delivery
from mlops_assets.lake import Lake
from mlops_assets.partitions import period_key, period_partitions
from mlops_assets.project.spec import Project
from mlops_assets.validation.reporting import single_failure_report

Send = Callable[..., object]


def calendar_key(project: Project, period: str) -> str:
    """The partition key of a period label; ValueError saying why when it names no period of the calendar."""
    shape = "YYYY-MM" if project.granularity == "month" else "YYYY-MM-DD"
    try:
        key = period_key(period, project.granularity)
    except ValueError:
        raise ValueError(f"period {period!r} is not a {project.granularity} ({shape})") from None
    if not period_partitions(project).has_partition_key(key):
        raise ValueError(f"period {period} is outside the project's calendar ({project.start} to the current period)")
    return key


def check_landing(project: Project, path: Path, source: str, period: str) -> str:
    """Every argument of a landing, checked before a byte is copied; returns the partition key."""
    if source not in project.periodic_sources:
        raise ValueError(f"--table {source!r}: the project {project.name!r} declares no periodic source of that "
                         f"name (periodic sources: {', '.join(project.periodic_sources)})")
    key = calendar_key(project, period)
    if not path.is_file():
        raise ValueError(f"{path}: not a readable .csv or .parquet file (missing, or a directory)")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: a {path.suffix or 'suffix-less'} file; deliver .csv or .parquet")
    return key


def reject(store: Lake, delivery: Delivery, reason: str, send: Send, run_id: str = "") -> str:
    """A delivery the platform cannot take: quarantined with a report, recorded, alerted; nothing else stops."""
    report = single_failure_report(delivery.source, f"{delivery.source} {delivery.period}", "delivery_is_placeable",
                                   reason)
    folder = store.quarantine(delivery.source, f"{delivery.period}-{delivery.name}", report.to_dict(),
                              report.to_markdown(), source_file=delivery.blob, original_name=delivery.original_name)
    store.deliveries.mark_rejected(delivery.id, run_id, reason, str(folder))
    send("ERROR", f"delivery:{delivery.source}", rejection_alert(delivery, reason, str(folder)),
         {"delivery": delivery.name, "sha256": delivery.sha256, "original_name": delivery.original_name,
          "quarantine": str(folder)})
    return str(folder)


def rejection_alert(delivery: Delivery, reason: str, folder: str) -> str:
    return (f"{delivery.describe()} rejected: {reason}. Kept in {folder}; the current data is unchanged. "
            f"Fix the file and land it again, or `mlops-assets discard {delivery.name}`.")
