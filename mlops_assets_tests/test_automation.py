"""Sensors, schedule and alerts evaluated through Dagster's own APIs on a real instance."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.alerts import AlertSink
from mlops_assets.automation.sensors import landing_folder_sensor, run_failure_alert
from mlops_assets.definitions import build_definitions
from mlops_assets.lake import Lake
from mlops_assets.resources import LakeResource
from mlops_assets.settings import DATA_DIR


def evaluate(lake: Lake, instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, instance=instance,
                                      resources={"lake": LakeResource(state_dir=str(lake.root), data_dir=str(DATA_DIR))})
    return landing_folder_sensor(context)


def test_each_landed_file_starts_one_run_and_never_twice(lake: Lake, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    assert evaluate(lake, instance, None).run_requests == []
    may = tmp_path / "may.parquet"
    lake.embedded_month("flights", "2013-05").write_parquet(may)
    lake.land(may, "flights", "2013-05")
    first = evaluate(lake, instance, None)
    [request] = first.run_requests
    assert request.partition_key == "2013-05-01" and request.run_key.startswith("flights/2013-05/")
    assert evaluate(lake, instance, first.cursor).run_requests == []
    lake.land(may, "flights", "2013-05")
    restarted = evaluate(lake, dg.DagsterInstance.ephemeral(), first.cursor)
    assert restarted.run_requests == []
    lake.embedded_month("flights", "2013-05").head(100).write_parquet(may)
    lake.land(may, "flights", "2013-05")
    [redelivery] = evaluate(lake, instance, restarted.cursor).run_requests
    assert redelivery.run_key != request.run_key


def test_schedule_and_sensors_are_registered_and_running_by_default() -> None:
    defs = build_definitions()
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
        dagster_event=failure, resources={"alerts": AlertSink(path=str(tmp_path / "alerts.jsonl"))},
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
