"""Deliveries end to end through real Dagster runs: every landed file accounted for, nothing lost.

Each run here ingests only the flights asset (the landed period's downstream is tested in
test_continuous_training); the ledger, the blobs, the quarantine and the alerts are real files.
"""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from mlops_assets.alerts import AlertSink
from mlops_assets.automation.sensors import run_failure_alert
from mlops_assets.cli import main
from mlops_assets.definitions import build_definitions
from mlops_assets.ingestion.deliveries import DELIVERY_TAG, Delivery
from mlops_assets.lake import Lake
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR

PROJECT_FILE = PROJECTS_DIR / "flights" / "project.yaml"
MAY = "2013-05"


@pytest.fixture()
def resources(lake: Lake) -> dict:
    return {"lake": LakeResource(state_dir=str(lake.root), data_dir=str(DATA_DIR)),
            "project": ProjectResource(path=str(PROJECT_FILE)),
            "alerts": AlertSink(path=str(lake.root / "alerts.jsonl"), webhook_url="")}


@pytest.fixture()
def defs(resources: dict) -> dg.Definitions:
    return build_definitions(PROJECT_FILE, resources)


def may(rows: int) -> pl.DataFrame:
    return pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") == 5).head(rows).collect()


def ingest(defs: dg.Definitions, delivery: Delivery) -> dg.ExecuteInProcessResult:
    """The landed period's run, as the sensor requests it, cut to the ingestion step."""
    return defs.resolve_job_def("landed_period_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key=f"{delivery.period}-01", raise_on_error=False,
        asset_selection=[dg.AssetKey(delivery.source)], tags={DELIVERY_TAG: str(delivery.id)})


def test_a_then_b_then_a_again_reingests_a_and_keeps_every_version(lake: Lake, defs: dg.Definitions,
                                                                   resources: dict, tmp_path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.csv"
    may(300).write_parquet(a)
    may(200).with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(b)
    first = lake.deliveries.add(a, "flights", MAY, "test")
    assert ingest(defs, first).success
    second = lake.deliveries.add(b, "flights", MAY, "test")
    assert ingest(defs, second).success
    assert lake.read_batches("flights", [MAY]).height == 200
    third = lake.deliveries.add(a, "flights", MAY, "test")
    assert third.id != first.id and third.sha256 == first.sha256 and third.blob == first.blob
    assert ingest(defs, third).success
    assert lake.read_batches("flights", [MAY]).height == 300
    statuses = [(d.name, d.status, d.reason) for d in lake.deliveries.all()]
    assert statuses == [(first.name, "superseded", f"superseded by {second.name}"),
                        (second.name, "superseded", f"superseded by {third.name}"), (third.name, "ingested", "")]
    assert first.blob.exists() and second.blob.exists() and second.blob.suffix == ".csv"


def test_the_same_bytes_as_csv_and_as_parquet_are_two_deliveries_with_two_files(lake: Lake, tmp_path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "empty.parquet").write_bytes(b"")
    as_csv = lake.deliveries.add(tmp_path / "empty.csv", "flights", MAY, "test")
    as_parquet = lake.deliveries.add(tmp_path / "empty.parquet", "flights", MAY, "test")
    assert as_csv.sha256 == as_parquet.sha256 and as_csv.blob != as_parquet.blob
    assert as_csv.blob.exists() and as_parquet.blob.exists() and as_csv.id != as_parquet.id


def test_an_untagged_rerun_ingests_the_current_delivery_never_the_embedded_data(
        lake: Lake, defs: dg.Definitions, resources: dict, tmp_path) -> None:
    may(300).write_parquet(tmp_path / "a.parquet")
    delivery = lake.deliveries.add(tmp_path / "a.parquet", "flights", MAY, "test")
    assert ingest(defs, delivery).success
    rerun = defs.resolve_job_def("ingestion_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), partition_key=f"{MAY}-01", raise_on_error=False,
        asset_selection=[dg.AssetKey("flights")])
    assert rerun.success and lake.read_batches("flights", [MAY]).height == 300


def test_shuffled_columns_and_csv_beside_parquet_read_back_together(lake: Lake, defs: dg.Definitions,
                                                                   resources: dict, tmp_path) -> None:
    june = pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") == 6).head(100).collect()
    june.select(reversed(june.columns)).with_columns(
        pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(tmp_path / "june.csv")
    may(100).write_parquet(tmp_path / "may.parquet")
    for path, period in ((tmp_path / "may.parquet", MAY), (tmp_path / "june.csv", "2013-06")):
        assert ingest(defs, lake.deliveries.add(path, "flights", period, "test")).success
    both = lake.read_batches("flights")
    assert both.height == 200 and both.columns == may(1).columns
    assert both.schema["time_hour"] == pl.Datetime("us", "UTC")


def test_a_failed_delivery_is_retried_by_command(lake: Lake, defs: dg.Definitions, resources: dict, tmp_path,
                                                 monkeypatch, capsys) -> None:
    """A transient failure (the warehouse folder cannot be written) leaves the delivery failed, not lost."""
    monkeypatch.setenv("MLOPS_STATE_DIR", str(lake.root))
    may(100).write_parquet(tmp_path / "may.parquet")
    delivery = lake.deliveries.add(tmp_path / "may.parquet", "flights", MAY, "test")
    obstacle = lake.root / "warehouse" / "flights"
    obstacle.parent.mkdir(parents=True)
    obstacle.write_text("not a folder")
    assert not ingest(defs, delivery).success
    failed = lake.deliveries.get(delivery.id)
    assert failed.status == "failed" and "NotADirectoryError" in failed.reason
    obstacle.unlink()
    assert main(["retry", delivery.name]) == 0
    assert "pending again (attempt 2)" in capsys.readouterr().out
    sensor = defs.resolve_sensor_def("landing_folder_sensor")
    [request] = sensor(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources=resources)).run_requests
    assert request.run_key.endswith(f"{delivery.name}.1")
    assert ingest(defs, lake.deliveries.get(delivery.id)).success
    assert lake.deliveries.get(delivery.id).status == "ingested"


def test_a_run_failing_elsewhere_marks_its_pending_delivery_failed_and_names_it(lake: Lake, resources: dict,
                                                                                tmp_path) -> None:
    may(10).write_parquet(tmp_path / "may.parquet")
    delivery = lake.deliveries.add(tmp_path / "may.parquet", "flights", MAY, "test")

    @dg.op
    def explode() -> None:
        raise dg.Failure(description="executor lost")

    @dg.job(tags={DELIVERY_TAG: str(delivery.id)})
    def doomed() -> None:
        explode()

    instance = dg.DagsterInstance.ephemeral()
    result = doomed.execute_in_process(instance=instance, raise_on_error=False)
    [entry] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    run_failure_alert(dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=entry.dagster_event, resources=resources).for_run_failure())
    assert lake.deliveries.get(delivery.id).status == "failed"
    [alert] = resources["alerts"].read()
    assert delivery.name in alert["message"] and "may.parquet" in alert["message"] and "retry" in alert["message"]


def test_a_sensor_tick_that_cannot_read_the_ledger_raises_an_alert(lake: Lake, defs: dg.Definitions,
                                                                   resources: dict) -> None:
    lake.deliveries.path.parent.mkdir(parents=True)
    lake.deliveries.path.write_bytes(b"this is not a database" * 100)
    sensor = defs.resolve_sensor_def("landing_folder_sensor")
    with pytest.raises(Exception, match="not a database"):
        sensor(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), resources=resources))
    [alert] = resources["alerts"].read()
    assert alert["source"] == "sensor:landing_folder_sensor" and "not a database" in alert["message"]
