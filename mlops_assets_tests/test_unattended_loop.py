"""The loop, proven on a real Dagster instance through the sensors' own evaluation APIs, on the
second example project (daily weather, regression) so it runs in seconds; flights takes the same path.

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
    monitor_retraining_sensor,
    run_failure_alert,
)
from mlops_assets.ingestion.batches import embedded_period
from mlops_assets.monitoring.replay import replay_period
from mlops_assets.partitions import period_bounds
from mlops_assets.registry import registry
from mlops_assets.serving.config import from_env
from mlops_assets_tests.pipeline_env import PipelineEnv

MODEL = "daily_max_temperature"
MONITORS = ["prediction_log", "ground_truth", "drift_report", "skew_report", "model_performance", "ab_test_report"]


def sensor_context(env: PipelineEnv, cursor: str | None) -> dg.SensorEvaluationContext:
    return dg.build_sensor_context(cursor=cursor, instance=env.instance, resources=env.resources)


def launch(env: PipelineEnv, job: str, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """What the daemon does with a RunRequest, in process."""
    tags = {**request.tags, **({"dagster/partition": request.partition_key} if request.partition_key else {})}
    return env.defs().resolve_job_def(job).execute_in_process(
        instance=env.instance, tags=tags, raise_on_error=False, asset_selection=request.asset_selection)


def landing_tick(env: PipelineEnv) -> dg.SensorResult:
    return env.defs().resolve_sensor_def("landing_folder_sensor")(sensor_context(env, None))


def land(env: PipelineEnv, tmp: Path, month: str, broken: bool = False) -> None:
    lake, project = env.resources["lake"].get(), env.resources["project"].get()
    batch = embedded_period(project, "weather", *period_bounds(f"{month}-01", "month"))
    target = lake.landing_dir / "weather" / f"{month}.parquet"  # the upstream system drops it in the inbox
    target.parent.mkdir(parents=True, exist_ok=True)
    (batch.drop("wind") if broken else batch).write_parquet(target)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> PipelineEnv:
    root = tmp_path_factory.mktemp("loop")
    platform = PipelineEnv(root, root / "project.yaml", dg.DagsterInstance.ephemeral())
    platform.write_project("weather", monitoring={"drift_warn_share": 0.01, "drift_error_share": 0.02,
                                                  "metric_drop_warn": 0.0, "metric_drop_error": 0.0,
                                                  "retrain_on": "WARN", "retrain_cooldown_hours": 6})
    assert platform.ingest("2012-01", "2015-05").success
    assert platform.run("continuous_training_job").success
    return platform


def test_month_lands_is_served_monitored_and_retraining_follows(env: PipelineEnv, tmp_path: Path) -> None:
    client = env.resources["mlflow_tracking"].client()
    land(env, tmp_path, "2015-06")
    [request] = landing_tick(env).run_requests
    assert launch(env, "landed_period_job", request).success
    lake = env.resources["lake"].get()
    assert "2015-06" in lake.available_periods("weather")

    config = from_env(state_dir=lake.root, project_path=env.project_file,
                      tracking_uri=env.resources["mlflow_tracking"].tracking_uri)
    replayed = replay_period(lake, env.resources["project"].get(), "2015-06-01", config)
    assert replayed.failures == 0 and replayed.requests == lake.read_batches("weather", ["2015-06"]).height == 60
    assert sum(replayed.events.values()) > 0  # each day's observations were pushed before the next day was predicted
    monitors = env.defs().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=env.instance, partition_key="2015-06-01", asset_selection=[dg.AssetKey(a) for a in MONITORS])
    assert monitors.success
    drift_metadata = monitors.asset_materializations_for_node("drift_report")[0].metadata
    assert drift_metadata["drift_plot"].value.startswith("![feature drift](data:image/png;base64,")
    report_run = drift_metadata["evidently_report_in_mlflow"].value.rsplit("/", 1)[-1]
    assert {a.path for a in client.list_artifacts(report_run, "drift")} >= {"drift/2015-06.html",
                                                                            "drift/2015-06_severity.png"}
    served = lake.read_batches("prediction_log", ["2015-06"])
    assert served.height == replayed.requests
    skew = monitors.asset_materializations_for_node("skew_report")[0].metadata
    assert skew["max_mismatch_rate"].value == 0.0  # served features are exactly the training features
    alerts = env.resources["alerts"].read()
    assert {a["source"] for a in alerts} & {"monitor:drift_report", "monitor:model_performance"}

    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    retrain = monitor_retraining_sensor(sensor_context(env, None))
    [retrain_request] = retrain.run_requests
    assert retrain_request.tags["mlops/trigger"] == "monitors"
    champion_before = registry.alias_version(client, MODEL, registry.CHAMPION)
    retrained = launch(env, "continuous_training_job", retrain_request)
    registered = retrained.asset_materializations_for_node("registered_model_version")[0].metadata
    champion = registry.alias_version(client, MODEL, registry.CHAMPION)
    if "new_version" in registered:  # the events pushed while serving were already in the training set
        assert retrained.success and champion == champion_before
        assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before
    else:
        newest = str(versions_before + 1)
        tags = client.get_model_version(MODEL, newest).tags
        promoted = tags["blessed"] == "true" and tags.get("infra_valid") == "true"
        assert retrained.success == promoted
        assert champion == (newest if promoted else champion_before)

    env.resources["alerts"].send("ERROR", "monitor:drift_report", "drift again")
    again = monitor_retraining_sensor(sensor_context(env, retrain.cursor))
    assert again.run_requests == [] and "cool-down" in again.skip_reason.skip_message


def test_bad_month_stops_at_validation_and_alerts_champion_unchanged(env: PipelineEnv, tmp_path: Path) -> None:
    client = env.resources["mlflow_tracking"].client()
    champion = registry.alias_version(client, MODEL, registry.CHAMPION)
    land(env, tmp_path, "2015-07", broken=True)
    [request] = landing_tick(env).run_requests
    result = launch(env, "landed_period_job", request)
    assert not result.success
    [entry] = env.instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    run_failure_alert(dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=env.instance, dagster_run=result.dagster_run,
        dagster_event=entry.dagster_event, resources=env.resources).for_run_failure())
    alerts = env.resources["alerts"].read()
    assert alerts[-1]["source"] == "run:landed_period_job"
    [rejected] = [a for a in alerts if a["source"] == "delivery:weather"]
    assert "2015-07.parquet" in rejected["message"] and "wind" in rejected["message"]
    assert registry.alias_version(client, MODEL, registry.CHAMPION) == champion
    lake = env.resources["lake"].get()
    assert "2015-07" not in lake.available_periods("weather")
    assert [d.status for d in lake.deliveries.all(period="2015-07")] == ["rejected"]
    assert landing_tick(env).run_requests == [], "a rejected delivery is not retried by itself"


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


def test_batch_scores_and_a_served_answer_through_the_generated_request_schema(env: PipelineEnv) -> None:
    from fastapi.testclient import TestClient

    from mlops_assets.serving.app import create_app

    result = env.run("batch_scoring_job", tags={"dagster/partition": "2015-05-01"})
    assert result.success
    lake = env.resources["lake"].get()
    scored = lake.read_batches("batch_predictions", ["2015-05"])
    assert scored.height == 62 and scored["prediction"].is_between(-40, 50).all()
    champion = registry.alias_version(env.resources["mlflow_tracking"].client(), MODEL, registry.CHAMPION)
    assert scored["model_version"].unique().to_list() == [champion]

    config = from_env(state_dir=lake.root, project_path=env.project_file,
                      online_store_path=lake.root / "online.db",
                      tracking_uri=env.resources["mlflow_tracking"].tracking_uri)
    with TestClient(create_app(config)) as client:
        answer = client.post("/v1/predict", json={"location": "Seattle", "day_start": "2015-05-20T00:00:00Z"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert -40 < body["prediction"] < 50 and body["model"]["version"] == champion
        assert body["missing_features"] == [] and body["feature_freshness"]["daily_weather"] >= 0
        refused = client.post("/v1/predict", json={"location": "Paris", "day_start": "2015-05-20T00:00:00Z"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "location"
        missing = client.post("/v1/predict", json={"day_start": "2015-05-20T00:00:00Z"})
        assert missing.status_code == 422 and "location" in missing.text
        schema = client.get("/openapi.json").json()
        assert "Seattle" in str(schema) and "day_start" in str(schema)
