"""Automation under the daemon: landed files, periodic retraining, failed runs -> alerts."""

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import dagster as dg

from mlops_assets.alerts import AlertSink
from mlops_assets.automation.landing import landed_files, new_files
from mlops_assets.automation.retraining import RetrainState, decide
from mlops_assets.partitions import period_key
from mlops_assets.resources import LakeResource, ProjectResource

SEEN_LIMIT = 1000
RETRAIN_CRON = os.environ.get("MLOPS_RETRAIN_CRON", "0 6 1 * *")


@dg.sensor(job_name="landed_period_job", minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="One run per new file in the landing folder (run key = content identity).")
def landing_folder_sensor(context: dg.SensorEvaluationContext, lake: LakeResource,
                          project: ProjectResource) -> dg.SensorResult:
    spec = project.get().spec
    seen = set(json.loads(context.cursor)["seen"]) if context.cursor else set()
    fresh = new_files(landed_files(lake.get().landing_dir, tuple(spec.periodic_sources)), seen)
    requests = [
        dg.RunRequest(run_key=f.identity, partition_key=period_key(f.month, spec.granularity),
                      tags={"mlops/landed_file": str(f.path), "mlops/table": f.table})
        for f in fresh
    ]
    remembered = (sorted(seen) + [f.identity for f in fresh])[-SEEN_LIMIT:]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps({"seen": remembered}))


retraining_schedule = dg.ScheduleDefinition(
    name="retraining_schedule", job_name="continuous_training_job", cron_schedule=RETRAIN_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Periodic retraining (monthly by default; MLOPS_RETRAIN_CRON to change).",
)


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING, monitor_all_code_locations=False,
                       description="Every failed run becomes an ERROR alert (alert log and webhook).")
def run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertSink) -> None:
    run = context.dagster_run
    alerts.send("ERROR", f"run:{run.job_name}", f"run {run.run_id} of {run.job_name} failed: "
                f"{context.failure_event.message}", {"run_id": run.run_id, "tags": dict(run.tags)})


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
