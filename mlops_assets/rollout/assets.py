"""`rollout_step`: after a period's labels arrive, move the challenger's traffic share by the policy."""

import dagster as dg
import polars as pl

from mlops_assets.alerts import AlertSink
from mlops_assets.monitoring import ab_test
from mlops_assets.monitoring.assets import GROUP, refresh_on_new_data, served_log, served_with_labels
from mlops_assets.partitions import period_label, period_partitions
from mlops_assets.project.spec import Project
from mlops_assets.registry import registry
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.rollout.policy import decide_step
from mlops_assets.rollout.registry_steps import apply_step, current_share
from mlops_assets.tracking import MlflowResource


def challenger_error_rate(log: pl.DataFrame) -> float:
    """Share of the challenger arm's requests that failed on the server side."""
    if "arm" not in log.columns or "status" not in log.columns:
        return 0.0
    arm = log.filter(pl.col("arm") == "challenger")
    return arm.filter(pl.col("status") >= 500).height / arm.height if arm.height else 0.0


def rollout_assets(project: Project) -> list[dg.AssetsDefinition]:
    @dg.asset(group_name=GROUP, partitions_def=period_partitions(project), deps=["ab_test_report"],
              automation_condition=refresh_on_new_data(project), kinds={"mlflow"})
    def rollout_step(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                     mlflow_tracking: MlflowResource, alerts: AlertSink) -> dg.MaterializeResult:
        """While a rollout runs (`promotion: rollout`): widen, hold, roll back or promote the challenger."""
        store, spec = lake.get(), project.get().spec
        period = period_label(context.partition_key, spec.granularity)
        client = mlflow_tracking.client()
        share, version = current_share(client, spec.model_name), registry.alias_version(
            client, spec.model_name, registry.CHALLENGER)
        if share is None or version is None or share == 0:
            return dg.MaterializeResult(metadata={"action": "none", "reason": "no rollout is running"})
        report = ab_test.ab_test_report(served_with_labels(store, spec, period), spec, min_rows=spec.rollout.min_rows,
                                        alpha=1 - spec.rollout.confidence)
        step = decide_step(spec.rollout, share, report, challenger_error_rate(served_log(store, period)))
        event = apply_step(client, spec.model_name, version, step, context.run.run_id)
        if event is not None:
            alerts.send("ERROR" if step.action == "rollback" else "WARN", "rollout",
                        f"rollout of version {version} after {period}: {step.action} ({step.reason})",
                        {"version": version, "share": step.share, "action": step.action})
        return dg.MaterializeResult(metadata={
            "action": step.action, "share_before": share, "share_after": step.share, "reason": step.reason,
            "version": version, "ab_test": dg.MetadataValue.md(ab_test.ab_markdown(report)),
            "alias_history": dg.MetadataValue.md(registry.history_markdown(
                registry.alias_history(client, spec.model_name)))})

    return [rollout_step]
