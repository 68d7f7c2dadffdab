"""Ingestion: monthly deliveries of flights and weather, and the reference tables.

Each asset validates its batch before writing it; a hard failure quarantines the batch, fails
the blocking check and the step, and leaves the last good data where it was.
"""


from collections.abc import Iterator

import dagster as dg
import polars as pl

from mlops_assets.ingestion.batches import Batch, load_month, load_reference, quarantine, rejection_message
from mlops_assets.metadata import frame_metadata
from mlops_assets.partitions import month_of, monthly_partitions
from mlops_assets.resources import LakeResource

VALID = "batch_is_valid"
QUALITY = "batch_quality"
MONTHLY_TABLES = ("flights", "weather")
REFERENCE_TABLES = ("planes", "airlines", "airports")


def _check_specs(table: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(VALID, asset=table, blocking=True,
                          description="Hard expectations (GX): schema, keys, ranges, domains, uniqueness."),
        dg.AssetCheckSpec(QUALITY, asset=table,
                          description="Soft expectations (GX): null shares and rare outliers; warns only."),
    ]


def _check_results(table: str, batches: list[Batch]) -> list[dg.AssetCheckResult]:
    hard = [f"{b.report.batch_name}: {f.description}" for b in batches for f in b.report.hard_failures]
    soft = [f"{b.report.batch_name}: {f.description}" for b in batches for f in b.report.soft_failures]
    report_md = "\n\n".join(b.report.to_markdown() for b in batches)
    return [
        dg.AssetCheckResult(
            asset_key=table, check_name=VALID, passed=not hard,
            description="; ".join(hard) or None,
            metadata={"failures": len(hard), "report": dg.MetadataValue.md(report_md)},
        ),
        dg.AssetCheckResult(
            asset_key=table, check_name=QUALITY, passed=not soft, severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(soft) or None, metadata={"warnings": dg.MetadataValue.json(soft)},
        ),
    ]


def _ingest(context: dg.AssetExecutionContext, lake: LakeResource, table: str, batches: list[Batch]) -> Iterator:
    """Write every batch, or none: a range with one rejected month writes nothing and fails."""
    store = lake.get()
    checks = _check_results(table, batches)
    rejected = [(b, quarantine(store, b)) for b in batches if not b.report.passed]
    if rejected:
        yield from checks
        raise dg.Failure(
            description=rejection_message(rejected),
            metadata={"quarantine": dg.MetadataValue.json([str(p) for _, p in rejected])},
        )
    paths = [str(store.write_batch(table, b.frame, b.month)) for b in batches if b.frame is not None]
    combined = pl.concat([b.frame for b in batches if b.frame is not None], how="vertical_relaxed")
    context.log.info(f"{table}: wrote {len(paths)} validated batch(es)")
    yield dg.MaterializeResult(
        metadata={
            **frame_metadata(combined),
            "sources": dg.MetadataValue.json({b.report.batch_name: b.source for b in batches}),
            "paths": dg.MetadataValue.json(paths),
            "expectations_evaluated": sum(b.report.evaluated for b in batches),
        },
        check_results=checks,
    )


def _monthly_asset(table: str, description: str) -> dg.AssetsDefinition:
    """One run per month in a backfill: months land in parallel (bounded by the run queue) and a
    bad month fails alone; an explicit range run (`mlops-assets run`) stays all-or-nothing."""

    @dg.asset(
        name=table, group_name="ingestion", partitions_def=monthly_partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1), check_specs=_check_specs(table),
        kinds={"polars", "parquet"}, description=description,
    )
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource) -> Iterator:
        batches = [load_month(lake.get(), table, month_of(pk)) for pk in context.partition_keys]
        yield from _ingest(context, lake, table, batches)

    return _asset


def _reference_asset(table: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=table, group_name="ingestion", check_specs=_check_specs(table),
        kinds={"polars", "parquet"}, description=f"Reference table {table}, validated.",
    )
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource) -> Iterator:
        yield from _ingest(context, lake, table, [load_reference(lake.get(), table)])

    return _asset


flights = _monthly_asset("flights", "Flights departing NYC, one validated batch per month.")
weather = _monthly_asset("weather", "Hourly weather at EWR, JFK and LGA, one validated batch per month.")
reference_tables = [_reference_asset(t) for t in REFERENCE_TABLES]
ingestion_assets = [flights, weather, *reference_tables]
