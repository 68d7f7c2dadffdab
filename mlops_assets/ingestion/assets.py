"""Ingestion: each declared source as an asset, periodic ones partitioned by the project's periods.

Each asset validates its batch (suites generated from the declared schema) before writing it; a
hard failure quarantines the batch, fails the blocking check and the step, and leaves the last
good data where it was.
"""


from collections.abc import Iterator

import dagster as dg
import polars as pl

from mlops_assets.alerts import AlertSink
from mlops_assets.ingestion.batches import (
    Batch,
    failure_reasons,
    load_periods,
    load_reference,
    quarantine,
    rejection_message,
)
from mlops_assets.ingestion.deliveries import run_delivery_ids
from mlops_assets.ingestion.outcomes import (
    batch_details,
    delivery_for,
    mark_failed,
    record_outcome,
    semantic_reports,
)
from mlops_assets.lake import Lake
from mlops_assets.metadata import frame_metadata
from mlops_assets.partitions import period_bounds, period_label, period_partitions
from mlops_assets.project.spec import Project
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.validation.semantics import SemanticReport

VALID = "batch_is_valid"
QUALITY = "batch_quality"
GROUP = "ingestion"


SEMANTICS = "batch_semantics"


def _check_specs(table: str, periodic: bool) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(VALID, asset=table, blocking=True,
                          description="Hard expectations (GX) from the declared schema: columns, types, keys, "
                                      "ranges, domains, uniqueness, rules, period."),
        dg.AssetCheckSpec(QUALITY, asset=table,
                          description="Soft expectations (GX): null shares and rare outliers; warns only."),
    ]
    if periodic:
        specs.append(dg.AssetCheckSpec(
            SEMANTICS, asset=table,
            description="Against earlier periods: timestamps agree with calendar columns, completeness, and a "
                        "distribution shift calibrated on earlier periods. A finding holds promotion for approval."))
    return specs


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


def _semantic_result(table: str, reports: list[SemanticReport]) -> dg.AssetCheckResult:
    findings = [f"{r.batch_name}: {f}" for r in reports for f in r.findings]
    return dg.AssetCheckResult(
        asset_key=table, check_name=SEMANTICS, passed=not findings, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(findings)[:2000] or None,
        metadata={"held": len([r for r in reports if r.held]),
                  "report": dg.MetadataValue.md("\n\n".join(r.to_markdown() for r in reports))})


def _ingest(context: dg.AssetExecutionContext, store: Lake, alerts: AlertSink, spec: Project, table: str,
            batches: list[Batch]) -> Iterator:
    """Write every batch, or none: a range with one rejected period writes nothing and fails."""
    run_id, ledger = context.run.run_id, store.deliveries
    checks = _check_results(table, batches)
    rejected = [(b, quarantine(store, b)) for b in batches if not b.report.passed]
    if rejected:
        for batch, folder in rejected:
            if batch.delivery is not None:
                ledger.mark_rejected(batch.delivery.id, run_id, failure_reasons(batch), str(folder))
            alerts.send("ERROR", f"delivery:{table}", rejection_message([(batch, folder)]),
                        batch_details(batch, str(folder)))
        yield from checks
        raise dg.Failure(description=rejection_message(rejected),
                         metadata={"quarantine": dg.MetadataValue.json([str(p) for _, p in rejected])})
    semantics = semantic_reports(store, spec, table, batches) if spec.sources[table].kind == "periodic" else []
    paths = [str(store.write_batch(table, b.frame, b.period)) for b in batches if b.frame is not None]
    for batch, report in zip(batches, semantics or [None] * len(batches), strict=True):
        record_outcome(store, alerts.send, batch, report, run_id)
    combined = pl.concat([b.frame for b in batches if b.frame is not None], how="vertical_relaxed")
    context.log.info(f"{table}: wrote {len(paths)} validated batch(es)")
    yield dg.MaterializeResult(metadata={
        **frame_metadata(combined),
        "sources": dg.MetadataValue.json({b.report.batch_name: b.origin for b in batches}),
        "deliveries": dg.MetadataValue.json({b.report.batch_name: b.delivery.name for b in batches if b.delivery}),
        "paths": dg.MetadataValue.json(paths),
        "expectations_evaluated": sum(b.report.evaluated for b in batches),
        "held_for_approval": [r.batch_name for r in semantics if r.held],
    }, check_results=[*checks, *([_semantic_result(table, semantics)] if semantics else [])])


def _periodic_asset(project: Project, table: str) -> dg.AssetsDefinition:
    """One run per period in a backfill (bad periods fail alone); an explicit range run is all-or-nothing."""
    granularity, zone = project.granularity, project.sources[table].time_zone

    @dg.asset(name=table, group_name=GROUP, partitions_def=period_partitions(project),
              backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
              check_specs=_check_specs(table, periodic=True),
              kinds={"polars", "parquet"}, description=project.sources[table].description or None)
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
               alerts: AlertSink) -> Iterator:
        loaded, store = project.get(), lake.get()
        named = run_delivery_ids(dict(context.run.tags))
        try:
            periods = []
            for key in context.partition_keys:
                label = period_label(key, granularity)
                periods.append((label, *period_bounds(key, granularity, zone),
                                delivery_for(store.deliveries, named, table, label)))
            batches = load_periods(loaded, table, periods)
            yield from _ingest(context, store, alerts, loaded.spec, table, batches)
        except Exception as exc:
            if not isinstance(exc, dg.Failure):
                mark_failed(store, named, table, context.run.run_id, f"{type(exc).__name__}: {exc}")
            raise

    return _asset


def _reference_asset(project: Project, table: str) -> dg.AssetsDefinition:
    @dg.asset(name=table, group_name=GROUP, check_specs=_check_specs(table, periodic=False),
              kinds={"polars", "parquet"},
              description=project.sources[table].description or f"Reference table {table}, validated.")
    def _asset(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
               alerts: AlertSink) -> Iterator:
        loaded = project.get()
        yield from _ingest(context, lake.get(), alerts, loaded.spec, table, [load_reference(loaded, table)])

    return _asset


def ingestion_assets(project: Project) -> list[dg.AssetsDefinition]:
    return [_periodic_asset(project, t) if s.kind == "periodic" else _reference_asset(project, t)
            for t, s in project.sources.items()]
