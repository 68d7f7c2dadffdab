"""Automation under the daemon: landed files, periodic retraining, failed runs -> alerts."""

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import dagster as dg

from mlops_assets.alerts import AlertSink
from mlops_assets.automation.landing import PeriodRun, collect_inbox, plan_runs
from mlops_assets.automation.retraining import RetrainState, decide
from mlops_assets.ingestion.deliveries import DELIVERY_TAG, run_delivery_ids
from mlops_assets.ingestion.intake import calendar_key, reject
from mlops_assets.lake import Lake
from mlops_assets.project.loading import LoadedProject
from mlops_assets.resources import LakeResource, ProjectResource

RETRAIN_CRON = os.environ.get("MLOPS_RETRAIN_CRON", "0 6 1 * *")


def landing_sensor(downstream: list[dg.AssetKey]) -> dg.SensorDefinition:
    """The landing sensor; each run ingests only the delivered sources, then `downstream` (features ... registry)."""

    @dg.sensor(name="landing_folder_sensor", job_name="landed_period_job", minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="One run per period with pending deliveries (run key = the deliveries and attempt); "
                           "inbox files become deliveries first. A delivery that cannot be placed is rejected alone.")
    def _sensor(context: dg.SensorEvaluationContext, lake: LakeResource, project: ProjectResource,
                alerts: AlertSink) -> dg.SensorResult:
        try:
            return _landing_tick(lake.get(), project.get(), alerts, downstream)
        except Exception as exc:
            alerts.send("ERROR", "sensor:landing_folder_sensor", f"landing sensor tick failed: {exc}")
            raise

    return _sensor


def landing_request(run: PeriodRun, downstream: list[dg.AssetKey]) -> dg.RunRequest:
    """The run for one period's deliveries: only the delivered sources are ingested, then `downstream`."""
    return dg.RunRequest(
        run_key=run.run_key, partition_key=run.partition_key,
        asset_selection=[dg.AssetKey(s) for s in run.sources] + downstream,
        tags={DELIVERY_TAG: ",".join(str(d.id) for d in run.deliveries), "mlops/sources": ",".join(run.sources),
              "mlops/files": ", ".join(d.original_name for d in run.deliveries)[:200]})


def _landing_tick(store: Lake, loaded: LoadedProject, alerts: AlertSink,
                  downstream: list[dg.AssetKey]) -> dg.SensorResult:
    spec, ledger = loaded.spec, store.deliveries
    for delivery in collect_inbox(store.landing_dir, ledger, tuple(spec.periodic_sources)):
        if delivery.status == "rejected":
            reject(store, delivery, delivery.reason, alerts.send)
    runs, refused = plan_runs(ledger.pending(), lambda period: calendar_key(spec, period))
    for delivery, reason in refused:
        reject(store, delivery, reason, alerts.send)
    requests = [landing_request(run, downstream) for run in runs]
    if not requests:
        return dg.SensorResult(skip_reason="no pending deliveries")
    return dg.SensorResult(run_requests=requests)


retraining_schedule = dg.ScheduleDefinition(
    name="retraining_schedule", job_name="continuous_training_job", cron_schedule=RETRAIN_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Periodic retraining (monthly by default; MLOPS_RETRAIN_CRON to change).",
)


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, monitor_all_code_locations=False,
                       description="Every failed run becomes an ERROR alert (alert log and webhook).")
def run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertSink, lake: LakeResource) -> None:
    run = context.dagster_run
    message = context.failure_event.message or "no message"
    ledger = lake.get().deliveries
    retryable = [d for d in run_delivery_ids(dict(run.tags)) if ledger.mark_failed(d, run.run_id, message)]
    named = "; ".join(ledger.get(d).describe() + f" is failed: `mlops-assets retry {ledger.get(d).name}`"
                      for d in retryable)
    alerts.send("ERROR", f"run:{run.job_name}", f"run {run.run_id} of {run.job_name} failed: {message}"
                + (f" ({named})" if named else ""), {"run_id": run.run_id, "tags": dict(run.tags)})


@dg.sensor(job_name="continuous_training_job", minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Retrains when drift or live-performance checks raise alerts; one run per cool-down.")
def monitor_retraining_sensor(context: dg.SensorEvaluationContext, alerts: AlertSink,
                              project: ProjectResource) -> dg.SensorResult:
    config = project.get().spec.monitoring
    state = RetrainState(**json.loads(context.cursor)) if context.cursor else RetrainState()
    decision = decide(alerts.read(), state, datetime.now(UTC), config.retrain_on,
                      timedelta(hours=config.retrain_cooldown_hours))
    cursor = json.dumps(asdict(decision.state))
    if not decision.retrain:
        return dg.SensorResult(skip_reason=decision.reason, cursor=cursor)
    request = dg.RunRequest(run_key=f"monitor-retrain-{decision.state.last_trigger}",
                            tags={"mlops/trigger": "monitors", "mlops/reason": decision.reason[:200]})
    return dg.SensorResult(run_requests=[request], cursor=cursor)
