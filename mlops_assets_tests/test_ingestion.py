"""Ingestion through Dagster: good months land, every kind of bad batch is blocked and kept."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlops_assets.alerts import AlertSink
from mlops_assets.features.assets import feature_assets
from mlops_assets.ingestion.assets import ingestion_assets
from mlops_assets.ingestion.deliveries import DELIVERY_TAG, Delivery
from mlops_assets.lake import Lake
from mlops_assets.project.loading import load_project
from mlops_assets.resources import LakeResource, OnlineStoreResource, ProjectResource
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR

MONTH = "2013-03"
PROJECT = load_project(PROJECTS_DIR / "flights")
SOURCES = {a.key.to_user_string(): a for a in ingestion_assets(PROJECT.spec)}
flights, weather = SOURCES["flights"], SOURCES["weather"]
flights_views = next(a for a in feature_assets(PROJECT.spec) if "route_delay_stats" in
                     {k.to_user_string() for k in a.keys})


def embedded_month(month: str) -> pl.DataFrame:
    year, mon = (int(p) for p in month.split("-"))
    return pl.scan_parquet(DATA_DIR / "flights.parquet").filter(
        (pl.col("year") == year) & (pl.col("month") == mon)).collect()


@pytest.fixture()
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def materialize(lake: Lake, instance: dg.DagsterInstance, assets: list, partition: str = MONTH,
                delivery: Delivery | None = None):
    """Materialize in process; a run for a delivery is tagged with it, as the landing sensor does."""
    return dg.materialize(
        assets, partition_key=f"{partition}-01", instance=instance, raise_on_error=False,
        tags={DELIVERY_TAG: str(delivery.id)} if delivery else None,
        resources={"lake": LakeResource(state_dir=str(lake.root), data_dir=str(DATA_DIR)),
                   "project": ProjectResource(path=str(PROJECT.path)),
                   "online": OnlineStoreResource(path=str(lake.root / "online.db")),
                   "alerts": AlertSink(path=str(lake.root / "alerts.jsonl"), webhook_url="")},
    )


def land(lake: Lake, path: Path, period: str = MONTH, table: str = "flights") -> Delivery:
    return lake.deliveries.add(path, table, period, landed_by="test")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    evals = [e.event_specific_data for e in result.all_events
             if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return {e.check_name: e.passed for e in evals}


def test_good_month_is_validated_and_written(lake: Lake, instance: dg.DagsterInstance) -> None:
    result = materialize(lake, instance, [flights])
    assert result.success
    assert check_evaluations(result)["batch_is_valid"] is True
    written = pl.read_parquet(lake.batch_path("flights", MONTH))
    assert written.height == embedded_month(MONTH).height > 20_000
    meta = result.asset_materializations_for_node("flights")[0].metadata
    assert meta["dagster/row_count"].value == written.height


def _month(lake: Lake) -> pl.DataFrame:
    return embedded_month(MONTH).head(2000)


def _write_csv(df: pl.DataFrame, path: Path) -> None:
    df.with_columns(pl.col("time_hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(path, null_value="NA")


def missing_column(lake: Lake, path: Path) -> str:
    _month(lake).drop("distance").write_parquet(path.with_suffix(".parquet"))
    return "distance"


def text_in_numeric(lake: Lake, path: Path) -> str:
    df = _month(lake).with_columns(pl.col("dep_delay").cast(pl.String))
    _write_csv(df.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("late"))
                               .otherwise(pl.col("dep_delay")).alias("dep_delay")), path.with_suffix(".csv"))
    return "dep_delay"


def null_keys(lake: Lake, path: Path) -> str:
    df = _month(lake).with_columns(pl.when(pl.int_range(pl.len()) < 5).then(None)
                                   .otherwise(pl.col("carrier")).alias("carrier"))
    df.write_parquet(path.with_suffix(".parquet"))
    return "carrier"


def out_of_range(lake: Lake, path: Path) -> str:
    df = _month(lake).with_columns(pl.when(pl.int_range(pl.len()) == 7).then(99_999)
                                   .otherwise(pl.col("distance")).alias("distance"))
    df.write_parquet(path.with_suffix(".parquet"))
    return "distance"


def duplicated_rows(lake: Lake, path: Path) -> str:
    df = _month(lake)
    pl.concat([df, df.head(10)]).write_parquet(path.with_suffix(".parquet"))
    return "flight"


def empty_file(lake: Lake, path: Path) -> str:
    _month(lake).head(0).write_parquet(path.with_suffix(".parquet"))
    return "row"


def truncated_file(lake: Lake, path: Path) -> str:
    target = path.with_suffix(".parquet")
    _month(lake).write_parquet(target)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return "readable"


def wrong_month(lake: Lake, path: Path) -> str:
    embedded_month("2013-04").head(2000).write_parquet(path.with_suffix(".parquet"))
    return "2013-03"


BAD_BATCHES: dict[str, Callable[[Lake, Path], str]] = {
    f.__name__: f for f in (missing_column, text_in_numeric, null_keys, out_of_range, duplicated_rows,
                            empty_file, truncated_file, wrong_month)
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batch_is_blocked_quarantined_and_never_replaces_good_data(
    case: str, lake: Lake, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    assert materialize(lake, instance, [flights]).success
    good = lake.batch_path("flights", MONTH)
    before = digest(good)

    delivered = tmp_path / f"delivery_{case}"
    needle = BAD_BATCHES[case](lake, delivered)
    source = next(tmp_path.glob(f"delivery_{case}.*"))
    landed = land(lake, source)

    result = materialize(lake, instance, [flights], delivery=landed)
    assert not result.success
    assert check_evaluations(result)["batch_is_valid"] is False
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error_display_string
    assert f"flights {MONTH}" in message and landed.name in message and source.name in message and needle in message
    assert digest(good) == before

    [kept] = list((lake.quarantine_dir / "flights").iterdir())
    assert (kept / source.name).read_bytes() == source.read_bytes() == landed.blob.read_bytes()
    report = json.loads((kept / "report.json").read_text())
    assert report["failures"] and needle in (kept / "report.md").read_text()
    assert report["lineage"]["sha256"] == landed.sha256 and report["lineage"]["original_path"] == str(source)
    recorded = lake.deliveries.get(landed.id)
    assert recorded.status == "rejected" and needle in recorded.reason and recorded.quarantine == str(kept)
    [alert] = AlertSink(path=str(lake.root / "alerts.jsonl")).read()
    assert alert["details"]["sha256"] == landed.sha256 and alert["details"]["quarantine"] == str(kept)
    assert source.name in alert["message"] and needle in alert["message"]


def test_failed_validation_blocks_downstream_in_the_same_run(lake: Lake, instance: dg.DagsterInstance,
                                                              tmp_path: Path) -> None:
    assert materialize(lake, instance, [flights]).success
    out_of_range(lake, tmp_path / "bad")
    result = materialize(lake, instance, [flights, flights_views], delivery=land(lake, tmp_path / "bad.parquet"))
    assert not result.success
    assert not (lake.offline_store_dir / "route_delay_stats").exists()


def test_partition_range_runs_in_one_step_and_is_all_or_nothing(lake: Lake, instance: dg.DagsterInstance,
                                                                tmp_path: Path) -> None:
    missing_column(lake, tmp_path / "bad")
    bad = land(lake, tmp_path / "bad.parquet", "2013-02")
    defs = dg.Definitions(
        assets=[flights], jobs=[dg.define_asset_job("range", selection=[flights])],
        resources={"lake": LakeResource(state_dir=str(lake.root), data_dir=str(DATA_DIR)),
                   "project": ProjectResource(path=str(PROJECT.path)),
                   "alerts": AlertSink(path=str(lake.root / "alerts.jsonl"), webhook_url="")},
    )
    tags = {"dagster/asset_partition_range_start": "2013-01-01", "dagster/asset_partition_range_end": "2013-02-01",
            DELIVERY_TAG: str(bad.id)}
    result = defs.resolve_job_def("range").execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert not result.success
    assert lake.available_periods("flights") == []


def test_soft_failure_warns_but_the_batch_is_kept(lake: Lake, instance: dg.DagsterInstance) -> None:
    """Real February weather has one impossible wind reading (1048 mph): a WARN, not a block."""
    result = materialize(lake, instance, [weather], partition="2013-02")
    assert result.success
    evaluations = {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
                   if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert evaluations["batch_is_valid"].passed
    assert not evaluations["batch_quality"].passed
    assert evaluations["batch_quality"].severity == dg.AssetCheckSeverity.WARN
    assert "wind_speed" in evaluations["batch_quality"].description
    assert lake.batch_path("weather", "2013-02").exists()


def test_a_month_after_the_committed_data_lands_and_validates(lake: Lake, instance: dg.DagsterInstance,
                                                             tmp_path: Path) -> None:
    """Open-ended calendar: January 2013 shifted by a year is 2014-01, a partition that exists."""
    shifted = embedded_month("2013-01").with_columns(pl.col("year") + 1,
                                                      pl.col("time_hour").dt.offset_by("1y"))
    shifted.write_parquet(tmp_path / "2014-01.parquet")
    delivery = land(lake, tmp_path / "2014-01.parquet", "2014-01")
    result = materialize(lake, instance, [flights], partition="2014-01", delivery=delivery)
    assert result.success and check_evaluations(result)["batch_is_valid"] is True
    assert pl.read_parquet(lake.batch_path("flights", "2014-01")).height == shifted.height
