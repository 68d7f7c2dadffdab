"""What becomes of each ingested batch: its delivery's status, its semantic report, holds and alerts.

No Dagster here; the ingestion asset calls these with the lake and the alert sink's `send`.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from mlops_assets.ingestion.batches import Batch
from mlops_assets.ingestion.deliveries import Delivery, DeliveryLedger
from mlops_assets.lake import Lake
from mlops_assets.partitions import period_bounds, period_key
from mlops_assets.project.spec import Project
from mlops_assets.validation.semantics import SemanticReport, semantic_report

Send = Callable[..., object]


def delivery_for(ledger: DeliveryLedger, named: list[int], source: str, period: str) -> Delivery | None:
    """The delivery the run names for this source and period, else the period's current (ingested) one."""
    for delivery_id in named:
        delivery = ledger.get(delivery_id)
        if (delivery.source, delivery.period) == (source, period):
            return delivery
    return ledger.current(source, period)


def mark_failed(store: Lake, named: list[int], source: str, run_id: str, reason: str) -> None:
    """An unexpected error while ingesting named deliveries: they become retryable, not lost."""
    for delivery_id in named:
        if store.deliveries.get(delivery_id).source == source:
            store.deliveries.mark_failed(delivery_id, run_id, reason)


def semantic_reports(store: Lake, project: Project, source: str, batches: list[Batch]) -> list[SemanticReport]:
    """Each batch against the stored periods before it (and earlier batches of the same run)."""
    spec = project.sources[source]
    history = spec.semantics.shift.history
    in_run: dict[str, pl.DataFrame] = {b.period: b.frame for b in batches if b.period and b.frame is not None}
    known = {*store.available_periods(source), *in_run}
    reports = []
    for batch in batches:
        period = str(batch.period)
        before = sorted(p for p in known if p < period)[-history:]
        earlier = [in_run[p] if p in in_run else store.read_batches(source, [p]) for p in before]
        bounds = period_bounds(period_key(period, project.granularity), project.granularity, spec.time_zone)
        reports.append(semantic_report(batch.report.batch_name, spec, spec.semantics, in_run[period], earlier, bounds))
    return reports


def batch_details(batch: Batch, folder: str = "") -> dict:
    delivery = batch.delivery
    return {"batch": batch.report.batch_name, "origin": batch.origin, "quarantine": folder,
            **({"delivery": delivery.name, "original_name": delivery.original_name, "sha256": delivery.sha256}
               if delivery else {})}


def record_outcome(store: Lake, send: Send, batch: Batch, report: SemanticReport | None, run_id: str) -> None:
    """Ingested: the delivery becomes current (the older one superseded); a shifted batch is held and alerted."""
    ledger, delivery = store.deliveries, batch.delivery
    if delivery is not None:
        ledger.mark_ingested(delivery, run_id)
    if report is None or batch.period is None:
        return
    if not report.held:
        ledger.release_period(batch.table, batch.period, f"replaced by {delivery.name if delivery else 'new data'}")
        return
    what = delivery.describe() if delivery else f"{batch.report.batch_name} from {batch.origin}"
    reason = "; ".join(report.findings)
    ledger.add_hold(batch.table, batch.period, delivery.id if delivery else None, reason, report.to_markdown(),
                    run_id)
    send("WARN", f"delivery:{batch.table}",
         f"{what} is valid but held: {reason}. It is ingested; challengers trained on it wait for approve_model "
         "while the champion keeps serving.", {**batch_details(batch), "semantics": report.to_dict()})
