"""The continuous-training chain end to end on four real months, and its governance bad cases.

The flights project through exactly the mechanism a user's project takes. One module-scoped platform: the first run makes a champion, later tests build on it in order.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlops_assets.ingestion.deliveries import DELIVERY_TAG
from mlops_assets.lake import read_training_set
from mlops_assets.registry import registry
from mlops_assets.settings import DATA_DIR
from mlops_assets_tests.pipeline_env import PipelineEnv

MODEL = "flights_arrival_delay"
GATE = {"gate.min_slice_rows": 300, "split.min_rows": 300}
RETRAINED = "retrained on the same data under an edited project file"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> PipelineEnv:
    root = tmp_path_factory.mktemp("ct")
    platform = PipelineEnv(root, root / "project.yaml", dg.DagsterInstance.ephemeral())
    platform.write_project("flights", **GATE)
    assert platform.ingest("2013-01", "2013-04").success
    return platform


def client(env: PipelineEnv):
    return env.resources["mlflow_tracking"].client()


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.event_specific_data.check_name: e.event_specific_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_first_run_registers_and_promotes_a_champion_with_card_and_plots(env: PipelineEnv) -> None:
    result = env.run("continuous_training_job")
    assert result.success
    assert checks(result) == {**checks(result), "challenger_is_blessed": True, "serving_infra_validation": True}
    c = client(env)
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == "1"
    version = c.get_model_version(MODEL, "1")
    assert version.tags["blessed"] == "true" and version.tags["infra_valid"] == "true"
    assert version.tags["training_set_hash"] and float(version.tags["metric.auc"]) > 0.6
    artifacts = {a.path for a in c.list_artifacts(version.run_id)} | {
        a.path for a in c.list_artifacts(version.run_id, "plots")} | {a.path for a in c.list_artifacts(version.run_id, "evaluation")}
    for expected in ("model_card.md", "plots/roc.png", "plots/pr.png", "plots/calibration.png",
                     "plots/feature_importance.png", "plots/shap_summary.png", "evaluation/report.md"):
        assert expected in artifacts
    run = c.get_run(version.run_id)
    assert run.data.tags["dagster_run_id"] == result.run_id and "code_version" in run.data.tags
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {
        "training_set_train", "training_set_validation", "training_set_test"}
    trials = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(trials) == 1
    evaluation = result.asset_materializations_for_node("model_evaluation")[0].metadata
    for plot in ("roc", "pr", "calibration", "shap_summary"):  # shown on the asset page, not only in MLflow
        assert evaluation[f"plot_{plot}"].value.startswith(f"![{plot.replace('_', ' ')}](data:image/png;base64,")


def test_forced_worse_challenger_is_rejected_with_reasons_and_champion_kept(env: PipelineEnv) -> None:
    env.write_project("flights", **GATE, features=["distance"], categorical=[], views=[], slices=["period"])
    result = env.run("continuous_training_job")
    assert not result.success
    assert checks(result)["challenger_is_blessed"] is False
    c = client(env)
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == "1"
    rejected = c.get_model_version(MODEL, "2")
    assert rejected.tags["blessed"] == "false" and "vs champion" in rejected.tags["blessing_reasons"]


def test_approving_an_unblessed_version_is_refused(env: PipelineEnv) -> None:
    config = {"ops": {"approve_version": {"config": {"version": "2", "reason": "looks fine", "approver": "alice"}}}}
    result = env.run("approve_model", config=config)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "was not blessed" in failure.event_specific_data.error_display_string
    assert registry.alias_version(client(env), MODEL, registry.CHAMPION) == "1"


def test_unloadable_model_is_not_promoted(env: PipelineEnv) -> None:
    env.write_project("flights", **GATE, description="unloadable case")  # a changed project file: a new version
    defs = env.defs()
    upstream = defs.resolve_job_def("continuous_training_job")
    assert upstream.execute_in_process(instance=env.instance, raise_on_error=False,
                                       asset_selection=[dg.AssetKey("training_set"), dg.AssetKey("candidate_model"),
                                                        dg.AssetKey("model_evaluation")]).success
    artifacts = Path(env.root / "artifacts")
    for pickled in artifacts.rglob("python_model.pkl"):
        if pickled.stat().st_mtime == max(p.stat().st_mtime for p in artifacts.rglob("python_model.pkl")):
            pickled.write_bytes(b"not a pickle")
    result = upstream.execute_in_process(
        instance=env.instance, raise_on_error=False,
        asset_selection=[dg.AssetKey("registered_model_version"), dg.AssetKey("champion_model")])
    assert not result.success
    assert checks(result)["serving_infra_validation"] is False
    c = client(env)
    assert c.get_model_version(MODEL, "3").tags["infra_valid"] == "false"
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == "1"


def test_new_champion_then_rollback_restores_the_previous_one(env: PipelineEnv) -> None:
    env.write_project("flights", **GATE, description=RETRAINED)
    assert env.run("continuous_training_job").success
    c = client(env)
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == "4"
    config = {"ops": {"rollback_to_previous": {"config": {"reason": "complaints", "requested_by": "bob"}}}}
    assert env.run("rollback_champion", config=config).success
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == "1"
    history = registry.alias_history(c, MODEL)
    assert [(e["alias"], e["action"], e["version"]) for e in history if e["alias"] == "champion"] == [
        ("champion", "promote", "1"), ("champion", "promote", "4"), ("champion", "rollback", "1")]
    assert history[-1]["actor"] == "bob" and history[-1]["reason"] == "complaints"
    assert not env.run("rollback_champion", config=config).success


def test_failing_validation_stops_the_run_before_training(env: PipelineEnv, tmp_path: Path) -> None:
    c = client(env)
    versions_before = len(c.search_model_versions(f"name='{MODEL}'"))
    champion_before = registry.alias_version(c, MODEL, registry.CHAMPION)
    lake = env.resources["lake"].get()
    bad = pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") == 4).head(500).collect().drop("carrier")
    bad.write_parquet(tmp_path / "april.parquet")
    delivery = lake.deliveries.add(tmp_path / "april.parquet", "flights", "2013-04", landed_by="test")
    result = env.run("landed_period_job", tags={"dagster/partition": "2013-04-01", DELIVERY_TAG: str(delivery.id)})
    assert not result.success
    flights_check = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                     and e.event_specific_data.asset_key == dg.AssetKey("flights")
                     and e.event_specific_data.check_name == "batch_is_valid"]
    assert [c.passed for c in flights_check] == [False]
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "candidate_model" not in materialized and "training_set" not in materialized
    assert len(c.search_model_versions(f"name='{MODEL}'")) == versions_before
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == champion_before


def test_manual_policy_waits_for_approval_which_records_who_and_why(env: PipelineEnv) -> None:
    env.write_project("flights", **GATE, promotion="manual")
    c = client(env)
    before = registry.alias_version(c, MODEL, registry.CHAMPION)
    result = env.run("continuous_training_job")
    assert result.success
    candidate = registry.alias_version(c, MODEL, registry.CHALLENGER)
    assert candidate != before and registry.alias_version(c, MODEL, registry.CHAMPION) == before
    outcome = result.asset_materializations_for_node("champion_model")[0].metadata["outcome"].value
    assert f"awaits approval: run approve_model with version {candidate}" in outcome
    config = {"ops": {"approve_version": {"config": {"version": candidate, "reason": "card reviewed",
                                                     "approver": "carol"}}}}
    assert env.run("approve_model", config=config).success
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == candidate
    last = registry.alias_history(c, MODEL)[-1]
    assert (last["action"], last["actor"], last["reason"], last["previous"]) == ("approve", "carol", "card reviewed", before)
    env.write_project("flights", **GATE)


def test_unchanged_training_set_registers_no_new_version(env: PipelineEnv) -> None:
    """Same data and project file as version 4: nothing new is registered, no alias moves."""
    env.write_project("flights", **GATE, description=RETRAINED)
    c = client(env)
    versions = len(c.search_model_versions(f"name='{MODEL}'"))
    champion = registry.alias_version(c, MODEL, registry.CHAMPION)
    result = env.run("continuous_training_job")
    assert result.success
    registered = result.asset_materializations_for_node("registered_model_version")[0].metadata
    assert registered["new_version"].value is False and registered["version"].value == "4"
    assert "unchanged since version 4" in registered["outcome"].value
    assert len(c.search_model_versions(f"name='{MODEL}'")) == versions
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == champion


def land_and_run(env: PipelineEnv, frame: pl.DataFrame, path: Path, period: str) -> tuple:
    """Deliver a file and run what the landing sensor requests for it, as the daemon would."""
    lake = env.resources["lake"].get()
    frame.write_parquet(path)
    delivery = lake.deliveries.add(path, "flights", period, landed_by="test")
    [request] = env.defs().resolve_sensor_def("landing_folder_sensor")(
        dg.build_sensor_context(instance=env.instance, resources=env.resources)).run_requests
    result = env.defs().resolve_job_def("landed_period_job").execute_in_process(
        instance=env.instance, partition_key=request.partition_key, tags=request.tags, raise_on_error=False,
        asset_selection=request.asset_selection)
    return delivery, result


def test_storm_month_is_ingested_held_and_its_broken_slice_fails_the_gate(env: PipelineEnv, tmp_path: Path) -> None:
    """July with every delay +45 min is valid: ingested, held for its shift, and the model's July slice
    (0.3 behind overall) fails `max_slice_gap`; the champion keeps serving."""
    c = client(env)
    champion = registry.alias_version(c, MODEL, registry.CHAMPION)
    lake = env.resources["lake"].get()
    july = pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") == 7).collect()
    storm = july.with_columns(pl.col("dep_delay") + 45, pl.col("arr_delay") + 45)
    delivery, result = land_and_run(env, storm, tmp_path / "storm.parquet", "2013-07")
    assert not result.success
    assert lake.deliveries.get(delivery.id).status == "ingested" and "2013-07" in lake.available_periods("flights")
    [hold] = lake.deliveries.open_holds()
    assert hold.delivery_id == delivery.id and "dep_delay shifted" in hold.reason
    semantics = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                 and e.event_specific_data.check_name == "batch_semantics"]
    assert [s.passed for s in semantics] == [False]
    assert "max_slice_gap" in c.get_model_version(MODEL, str(len(c.search_model_versions(f"name='{MODEL}'")))).tags[
        "blessing_reasons"]
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == champion
    alerts = env.resources["alerts"].read()
    assert any(a["details"].get("sha256") == delivery.sha256 and a["severity"] == "WARN" for a in alerts)


def test_held_month_challenger_waits_for_approval_which_releases_the_holds(env: PipelineEnv, tmp_path: Path) -> None:
    """July re-delivered with only days 1-10: supersedes the storm file, still held (completeness); the blessed
    challenger waits while the champion serves, and approving it releases both holds."""
    c = client(env)
    champion = registry.alias_version(c, MODEL, registry.CHAMPION)
    lake = env.resources["lake"].get()
    july = pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") == 7).collect()
    delivery, result = land_and_run(env, july.filter(pl.col("day") <= 10), tmp_path / "july-1-10.parquet", "2013-07")
    assert result.success
    assert [d.status for d in lake.deliveries.all(period="2013-07")] == ["superseded", "ingested"]
    assert any("10 of the period's 31 days" in h.reason for h in lake.deliveries.open_holds())
    challenger = registry.alias_version(c, MODEL, registry.CHALLENGER)
    assert challenger != champion and registry.alias_version(c, MODEL, registry.CHAMPION) == champion
    outcome = result.asset_materializations_for_node("champion_model")[0].metadata["outcome"].value
    assert f"awaits approval: run approve_model with version {challenger}" in outcome and "shifted" in outcome
    config = {"ops": {"approve_version": {"config": {"version": challenger, "reason": "partial month confirmed "
                                                     "by the carrier", "approver": "dana"}}}}
    assert env.run("approve_model", config=config).success
    assert registry.alias_version(c, MODEL, registry.CHAMPION) == challenger and lake.deliveries.open_holds() == []


def test_batch_predictions_score_every_flight_of_the_month_with_the_champion(env: PipelineEnv) -> None:
    champion = registry.alias_version(client(env), MODEL, registry.CHAMPION)
    result = env.run("batch_scoring_job", tags={"dagster/partition": "2013-03-01"})
    assert result.success
    lake = env.resources["lake"].get()
    scored = lake.read_batches("batch_predictions", ["2013-03"])
    assert scored.height == lake.read_batches("flights", ["2013-03"]).height  # cancelled flights are scored too
    assert scored["model_version"].unique().to_list() == [champion]
    assert scored["probability"].is_between(0, 1).all()


def test_a_month_after_the_committed_data_lands_and_retrains_a_gated_model(env: PipelineEnv, tmp_path: Path) -> None:
    """2014-01 (January 2013 shifted by a year) lands in the open-ended calendar and flows through features
    to a retrained model that the gate judges."""
    c = client(env)
    versions_before = len(c.search_model_versions(f"name='{MODEL}'"))
    lake = env.resources["lake"].get()
    delivered = []
    for source in ("flights", "weather"):  # the upstream system delivers both sources of the month
        january = pl.scan_parquet(DATA_DIR / f"{source}.parquet").filter(pl.col("month") == 1).collect()
        january.with_columns(pl.col("year") + 1, pl.col("time_hour").dt.offset_by("1y")).write_parquet(
            tmp_path / f"{source}-2014-01.parquet")
        delivered.append(lake.deliveries.add(tmp_path / f"{source}-2014-01.parquet", source, "2014-01", "test"))
    tags = {"dagster/partition": "2014-01-01", DELIVERY_TAG: ",".join(str(d.id) for d in delivered)}
    result = env.run("landed_period_job", tags=tags)
    assert "2014-01" in lake.available_periods("flights")
    frame, _ = read_training_set(lake)
    assert "2014-01" in frame.filter(pl.col("split") == "test")["period"].unique().to_list()
    newest = c.get_model_version(MODEL, str(versions_before + 1))
    assert newest.tags["blessed"] in {"true", "false"} and "blessing_reasons" in newest.tags
    champion = registry.alias_version(c, MODEL, registry.CHAMPION)
    assert result.success == (champion == str(newest.version))
