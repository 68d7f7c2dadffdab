"""Sensors, schedule and alerts evaluated through Dagster's own APIs on a real instance."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlops_assets.alerts import AlertSink
from mlops_assets.automation.sensors import run_failure_alert
from mlops_assets.definitions import build_definitions
from mlops_assets.ingestion.deliveries import DELIVERY_TAG
from mlops_assets.lake import Lake
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR


def resources(lake: Lake, project: str = "flights") -> dict:
    return {"lake": LakeResource(state_dir=str(lake.root), data_dir=str(DATA_DIR)),
            "project": ProjectResource(path=str(PROJECTS_DIR / project / "project.yaml")),
            "alerts": AlertSink(path=str(lake.root / "alerts.jsonl"), webhook_url="")}


def evaluate(lake: Lake, instance: dg.DagsterInstance, project: str = "flights") -> dg.SensorResult:
    sensor = build_definitions(PROJECTS_DIR / project / "project.yaml").resolve_sensor_def("landing_folder_sensor")
    return sensor(dg.build_sensor_context(instance=instance, resources=resources(lake, project)))


def may_2013() -> pl.DataFrame:
    return pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") == 5).collect()


def test_each_delivery_gets_its_own_run_key_and_a_relanding_is_a_new_delivery(lake: Lake, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert evaluate(lake, instance).run_requests == []
    may = tmp_path / "may.parquet"
    may_2013().write_parquet(may)
    first = lake.deliveries.add(may, "flights", "2013-05", "test")
    [request] = evaluate(lake, instance).run_requests
    assert request.partition_key == "2013-05-01" and request.tags[DELIVERY_TAG] == str(first.id)
    assert request.asset_selection[0] == dg.AssetKey("flights")
    assert dg.AssetKey("weather") not in request.asset_selection  # only the delivered source is ingested
    assert dg.AssetKey("champion_model") in request.asset_selection
    assert [r.run_key for r in evaluate(lake, instance).run_requests] == [request.run_key]  # same key: no rerun
    lake.deliveries.mark_ingested(first, "run-1")
    assert evaluate(lake, instance).run_requests == []
    again = lake.deliveries.add(may, "flights", "2013-05", "test")  # the same bytes landed again
    [redelivery] = evaluate(lake, instance).run_requests
    assert redelivery.run_key != request.run_key and redelivery.tags[DELIVERY_TAG] == str(again.id)


def test_inbox_files_become_deliveries_and_a_bad_one_is_rejected_alone(lake: Lake, tmp_path: Path) -> None:
    """A misnamed file, a period outside the calendar and a file in an unknown folder are each rejected
    with an alert and a quarantine copy; the good file still gets its run and the tick does not fail."""
    inbox = lake.landing_dir
    for relative in ("flights/2013-05.parquet", "flights/nov.csv", "flights/2012-12.csv", "flights/2013-13.csv",
                     "lanes/2013-05.csv"):
        (inbox / relative).parent.mkdir(parents=True, exist_ok=True)
        may_2013().head(50).write_parquet(inbox / relative) if relative.endswith("parquet") else (
            inbox / relative).write_text("a,b\n1,2\n")
    result = evaluate(lake, dg.DagsterInstance.ephemeral())
    [request] = result.run_requests
    assert request.partition_key == "2013-05-01"
    assert not any(inbox.rglob("*.*")), "the inbox is emptied: every file is a delivery now"
    by_name = {(d.source, d.original_name): d for d in lake.deliveries.all()}
    assert by_name["flights", "2013-05.parquet"].status == "pending"
    reasons = {name: by_name[src, name].reason for src, name in by_name if by_name[src, name].status == "rejected"}
    assert "is not <period>.csv" in reasons["nov.csv"]
    assert "outside the project's calendar" in reasons["2012-12.csv"]
    assert "is not a month" in reasons["2013-13.csv"]
    assert "no periodic source" in reasons["2013-05.csv"]
    alerts = AlertSink(path=str(lake.root / "alerts.jsonl")).read()
    assert len(alerts) == 4 and all(a["severity"] == "ERROR" and Path(a["details"]["quarantine"]).is_dir()
                                    for a in alerts)


def test_the_weather_project_lands_its_own_source(lake: Lake, tmp_path: Path) -> None:
    june = tmp_path / "june.csv"
    pl.read_csv(PROJECTS_DIR / "weather" / "data" / "weather.csv").head(30).write_csv(june)
    lake.deliveries.add(june, "weather", "2015-06", "test")
    [request] = evaluate(lake, dg.DagsterInstance.ephemeral(), project="weather").run_requests
    assert request.partition_key == "2015-06-01" and request.job_name in (None, "landed_period_job")


def test_schedule_and_sensors_are_registered_and_running_by_default() -> None:
    defs = build_definitions(PROJECTS_DIR / "flights" / "project.yaml")
    schedule = defs.resolve_schedule_def("retraining_schedule")
    assert schedule.job_name == "continuous_training_job" and schedule.cron_schedule == "0 6 1 * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    for name in ("landing_folder_sensor", "run_failure_alert"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


@dg.op
def explode() -> None:
    raise dg.Failure(description="boom")


@dg.job
def failing_job() -> None:
    explode()


def test_failed_run_becomes_an_error_alert(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    [entry] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    failure = entry.dagster_event
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=failure, resources={"alerts": AlertSink(path=str(tmp_path / "alerts.jsonl")),
                                          "lake": LakeResource(state_dir=str(tmp_path / "state"))},
    ).for_run_failure()
    run_failure_alert(context)
    [alert] = AlertSink(path=str(tmp_path / "alerts.jsonl")).read()
    assert alert["severity"] == "ERROR" and result.run_id in alert["message"] and "failing_job" in alert["source"]


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture()
def webhook() -> str:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts"
    server.shutdown()


def test_alert_is_logged_and_posted_to_the_webhook(tmp_path: Path, webhook: str) -> None:
    sink = AlertSink(path=str(tmp_path / "alerts.jsonl"), webhook_url=webhook)
    alert = sink.send("WARN", "drift_report", "3 features drifted", {"features": ["temp"]})
    assert alert["webhook"] == "delivered"
    assert _Receiver.received[-1]["message"] == "3 features drifted"
    assert sink.read()[-1]["details"] == {"features": ["temp"]}


def test_unreachable_webhook_is_recorded_not_hidden(tmp_path: Path) -> None:
    sink = AlertSink(path=str(tmp_path / "alerts.jsonl"), webhook_url="http://127.0.0.1:9/none", timeout_seconds=1)
    assert sink.send("ERROR", "test", "x")["webhook"].startswith("failed")
    with pytest.raises(ValueError, match="severity"):
        sink.send("INFO", "test", "x")


def _land(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=partition))


REPORTS = ("drift_report", "skew_report", "model_performance", "ab_test_report")


def _requested(result: dg.EvaluateAutomationConditionsResult) -> dict[str, set[str]]:
    """Requested partitions per report (reports with none left out)."""
    requested = {asset: set(result.get_requested_partitions(dg.AssetKey(asset))) for asset in REPORTS}
    return {asset: partitions for asset, partitions in requested.items() if partitions}


def test_monitoring_reports_refresh_for_the_month_whose_log_or_labels_land(tmp_path: Path) -> None:
    """Under the daemon (`monitoring_automation`, running by default) a month's reports follow its
    prediction log and labels, for any month; a retrain alone re-runs none of them."""
    defs = build_definitions(PROJECTS_DIR / "flights" / "project.yaml")
    views = [k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()
             if defs.resolve_asset_graph().get(k).group_name == "features" and k.to_user_string() != "online_store"]
    sensor = defs.get_repository_def().get_sensor_def("monitoring_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    instance = dg.DagsterInstance.ephemeral()
    for asset in ("training_set", *views):
        _land(instance, asset)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert _requested(result) == {}, "nothing served yet: every report waits for its month's log"

    _land(instance, "prediction_log", "2013-05-01")
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {"drift_report": {"2013-05-01"}, "skew_report": {"2013-05-01"}}

    _land(instance, "ground_truth", "2013-05-01")
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {"model_performance": {"2013-05-01"}, "ab_test_report": {"2013-05-01"}}

    for asset in REPORTS:
        _land(instance, asset, "2013-05-01")
    _land(instance, "training_set")
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {}, "a retrain must not re-run every month's reports"

    _land(instance, "prediction_log", "2013-06-01")
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert _requested(result) == {"drift_report": {"2013-06-01"}, "skew_report": {"2013-06-01"}}
