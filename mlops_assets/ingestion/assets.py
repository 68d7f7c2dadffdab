"""Ingestion: each declared source as an asset, periodic ones partitioned by the project's periods.

Each asset validates its batch (suites generated from the declared schema) before writing it; a
hard failure quarantines the batch, fails the blocking check and the step, and leaves the last
good data where it was.
"""


from collections.abc import Iterator

import dagster as dg
import polars as pl

from mlops_assets.ingestion.batches import Batch, load_period, load_reference, quarantine, rejection_message
from mlops_assets.metadata import frame_metadata
from mlops_assets.partitions import period_bounds, period_label, period_partitions
from mlops_assets.project.spec import Project
from mlops_assets.resources import LakeResource, ProjectResource

VALID = "batch_is_valid"
QUALITY = "batch_quality"
GROUP = "ingestion"


def _check_specs(table: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(VALID, asset=table, blocking=True,
                          description="Hard expectations (GX) from the declared schema: columns, types, keys, "
                                      "ranges, domains, uniqueness, rules, period."),
        dg.AssetCheckSpec(QUALITY, asset=table,
                          description="Soft expectations (GX): null shares and rare outliers; warns only."),
    ]


def _check_results(table: str, batches: list[Batch]) -> list[dg.AssetCheckResult]:
    hard = [f"{b.report.batch_name}: {f.description}" for b in batches for f in b.report.hard_failures]
    soft = [f"{b.report.batch_name}: {f.description}" for b in batches for f in b.report.soft_failures]
    report_md = "\n\n".join(b.report.to_markdown() for b in batches)
    return [
        dg.AssetCheckResult(asset_key=table, check_name=VALID, passed=not hard, description="; ".join(hard) or None,
                            metadata={"failures": len(hard), "report": dg.MetadataValue.md(report_md)}),
        dg.AssetCheckResult(asset_key=table, check_name=QUALITY, passed=not soft,
                            severity=dg.AssetCheckSeverity.WARN, description="; ".join(soft) or None,
                            metadata={"warnings": dg.MetadataValue.json(soft)}),
    ]


def _ingest(context: dg.AssetExecutionContext, lake: LakeResource, table: str, batches: list[Batch]) -> Iterator:
    """Write every batch, or none: a range with one rejected period writes nothing and fails."""
    store = lake.get()
    checks = _check_results(table, batches)
    rejected = [(b, quarantine(store, b)) for b in batches if not b.report.passed]
    if rejected:
        yield from checks
        raise dg.Failure(description=rejection_message(rejected),
                         metadata={"quarantine": dg.MetadataValue.json([str(p) for _, p in rejected])})
    paths = [str(store.write_batch(table, b.frame, b.period)) for b in batches if b.frame is not None]
    combined = pl.concat([b.frame for b in batches if b.frame is not None], how="vertical_relaxed")
    context.log.info(f"{table}: wrote {len(paths)} validated batch(es)")
    yield dg.MaterializeResult(metadata={
        **frame_metadata(combined),
        "sources": dg.MetadataValue.json({b.report.batch_name: b.origin for b in batches}),
        "paths": dg.MetadataValue.json(paths),
        "expectations_evaluated": sum(b.report.evaluated for b in batches),
    }, check_results=checks)


def _periodic_asset(project: Project, table: str) -> dg.AssetsDefinition:
    """One run per period in a backfill (bad periods fail alone); an explicit range run is all-or-nothing."""
    granularity, zone = project.granularity, project.sources[table].time_zone

    @dg.asset(name=table, group_name=GROUP, partitions_def=period_partitions(project),
              backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1), check_specs=_check_specs(table),
              kinds={"polars", "parquet"}, description=project.sources[table].description or None)
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource) -> Iterator:
        loaded, store = project.get(), lake.get()
        batches = [load_period(store, loaded, table, period_label(pk, granularity), *period_bounds(pk, granularity, zone))
                   for pk in context.partition_keys]
        yield from _ingest(context, lake, table, batches)

    return _asset


def _reference_asset(project: Project, table: str) -> dg.AssetsDefinition:
    @dg.asset(name=table, group_name=GROUP, check_specs=_check_specs(table), kinds={"polars", "parquet"},
              description=project.sources[table].description or f"Reference table {table}, validated.")
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource) -> Iterator:
        yield from _ingest(context, lake, table, [load_reference(lake.get(), project.get(), table)])

    return _asset


def ingestion_assets(project: Project) -> list[dg.AssetsDefinition]:
    return [_periodic_asset(project, t) if s.kind == "periodic" else _reference_asset(project, t)
            for t, s in project.sources.items()]
