"""The loop, proven on a real Dagster instance through the sensors' own evaluation APIs.

A month lands -> ingested and validated -> predictions replayed through the service -> labels
land -> drift, skew and performance computed -> monitors call for retraining -> challenger
judged against the champion -> promoted or rejected. A bad month stops at validation and alerts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.automation.retraining import RetrainState, decide
from mlops_assets.automation.sensors import (
    landing_folder_sensor,
    monitor_retraining_sensor,
    run_failure_alert,
)
from mlops_assets.monitoring.replay import replay_month
from mlops_assets.registry import registry
from mlops_assets.serving.config import from_env
from mlops_assets_tests.pipeline_env import PipelineEnv

MODEL = "flights_arrival_delay"
MONITORS = ["prediction_log", "ground_truth", "drift_report", "skew_report", "model_performance", "ab_test_report"]


def sensor_context(env: PipelineEnv, cursor: str | None) -> dg.SensorEvaluationContext:
    return dg.build_sensor_context(cursor=cursor, instance=env.instance, resources=env.resources)


def launch(env: PipelineEnv, job: str, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """What the daemon does with a RunRequest, in process."""
    tags = {**request.tags, **({"dagster/partition": request.partition_key} if request.partition_key else {})}
    return env.run(job, tags=tags)


def land(env: PipelineEnv, tmp: Path, month: str, broken: bool = False) -> None:
    lake = env.resources["lake"].get()
    batch = lake.embedded_month("flights", month)
    (batch.drop("carrier") if broken else batch).write_parquet(tmp / f"{month}.parquet")
    lake.land(tmp / f"{month}.parquet", "flights", month)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> PipelineEnv:
    root = tmp_path_factory.mktemp("loop")
    platform = PipelineEnv(root, root / "task.yaml", dg.DagsterInstance.ephemeral())
    platform.write_task(**{"monitoring": {"drift_warn_share": 0.1, "drift_error_share": 0.2,
                                          "retrain_cooldown_hours": 6}})
    assert platform.ingest("2013-01", "2013-04").success
    assert platform.run("continuous_training_job").success
    return platform


def test_month_lands_is_served_monitored_and_retraining_follows(env: PipelineEnv, tmp_path: Path) -> None:
    client = env.resources["mlflow_tracking"].client()
    land(env, tmp_path, "2013-05")
    landing = landing_folder_sensor(sensor_context(env, None))
    [request] = landing.run_requests
    assert launch(env, "landed_month_job", request).success
    lake = env.resources["lake"].get()
    assert "2013-05" in lake.available_months("flights")

    state = lake.root
    config = from_env(state_dir=state, online_store_path=state / "replay.db", task_path=env.task_file,
                      tracking_uri=env.resources["mlflow_tracking"].tracking_uri)
    replayed = replay_month(lake, "2013-05", config, env.resources["task"].get())
    assert replayed.failures == 0 and replayed.requests == lake.read_batches("flights", ["2013-05"]).height
    monitors = env.defs().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=env.instance, partition_key="2013-05-01", asset_selection=[dg.AssetKey(a) for a in MONITORS])
    assert monitors.success
    served = lake.read_batches("prediction_log", ["2013-05"])
    assert served.height == replayed.requests
    alerts = env.resources["alerts"].read()
    assert {"monitor:drift_report"} <= {a["source"] for a in alerts}

    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    retrain = monitor_retraining_sensor(sensor_context(env, None))
    [retrain_request] = retrain.run_requests
    assert retrain_request.tags["mlops/trigger"] == "monitors"
    champion_before = registry.alias_version(client, MODEL, registry.CHAMPION)
    retrained = launch(env, "continuous_training_job", retrain_request)
    newest = str(versions_before + 1)
    tags = client.get_model_version(MODEL, newest).tags
    champion = registry.alias_version(client, MODEL, registry.CHAMPION)
    promoted = tags["blessed"] == "true" and tags.get("infra_valid") == "true"
    assert retrained.success == promoted
    assert champion == (newest if promoted else champion_before)

    env.resources["alerts"].send("ERROR", "monitor:drift_report", "drift again")
    again = monitor_retraining_sensor(sensor_context(env, retrain.cursor))
    assert again.run_requests == [] and "cool-down" in again.skip_reason.skip_message


def test_bad_month_stops_at_validation_and_alerts_champion_unchanged(env: PipelineEnv, tmp_path: Path) -> None:
    client = env.resources["mlflow_tracking"].client()
    champion = registry.alias_version(client, MODEL, registry.CHAMPION)
    seen = {r.run_key for r in landing_folder_sensor(sensor_context(env, None)).run_requests}
    land(env, tmp_path, "2013-06", broken=True)
    fresh = [r for r in landing_folder_sensor(sensor_context(env, None)).run_requests if r.run_key not in seen]
    [request] = fresh
    result = launch(env, "landed_month_job", request)
    assert not result.success
    [entry] = env.instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    run_failure_alert(dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=env.instance, dagster_run=result.dagster_run,
        dagster_event=entry.dagster_event, resources=env.resources).for_run_failure())
    assert env.resources["alerts"].read()[-1]["source"] == "run:landed_month_job"
    assert registry.alias_version(client, MODEL, registry.CHAMPION) == champion
    assert "2013-06" not in env.resources["lake"].get().available_months("flights")


def test_retraining_decision_cooldown_and_severity() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    warn = {"at": "2026-01-01T11:00:00+00:00", "severity": "WARN", "source": "monitor:drift_report", "message": "w"}
    error = {**warn, "severity": "ERROR", "at": "2026-01-01T11:30:00+00:00", "message": "e"}
    other = {**error, "source": "monitor:skew_report"}
    assert not decide([warn, other], RetrainState(), now, "ERROR", timedelta(hours=6)).retrain
    first = decide([warn, error], RetrainState(), now, "ERROR", timedelta(hours=6))
    assert first.retrain and first.reason == "e"
    later = {**error, "at": "2026-01-01T13:00:00+00:00"}
    assert not decide([later], first.state, now + timedelta(hours=1), "ERROR", timedelta(hours=6)).retrain
    assert decide([{**later, "at": "2026-01-01T19:00:00+00:00"}], first.state, now + timedelta(hours=7),
                  "ERROR", timedelta(hours=6)).retrain
