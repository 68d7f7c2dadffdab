"""Governance report and "request changes" review on the real pipeline (weather project, a few months).

v1 is trained and promoted, serves June (replayed through the service, labels land, monitors run);
v2 is trained on June too but a reviewer requests changes: neither `approve_model` nor the automatic
promotion can make it champion. v3, trained with July, is promoted automatically and serves July.
The report then shows June by v1 and July by v3, with the figures the monitors computed.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.monitoring.replay import replay_period
from mlops_assets.project.loading import load_project
from mlops_assets.registry import registry, review
from mlops_assets.registry.governance_report import (
    NO_PERIOD,
    alert_counts,
    markdown,
    period_rows,
    version_table,
)
from mlops_assets.serving.config import from_env
from mlops_assets.settings import PROJECTS_DIR
from mlops_assets_tests.pipeline_env import PipelineEnv

MODEL = "daily_max_temperature"
MONITORS = ["prediction_log", "ground_truth", "drift_report", "model_performance"]
REASON = "June residuals in New York look biased: retrain with the station fix"
# Every version blessed (only the review may stop one); monitors strict enough to raise alerts.
OVERRIDES = {"gate.tolerance": 1.0, "gate.slice_tolerance": 5.0,
             "monitoring": {"drift_warn_share": 0.01, "drift_error_share": 0.02, "metric_drop_warn": 0.0,
                            "metric_drop_error": 0.0}}


@dataclass
class Story:
    env: PipelineEnv
    monitors: dict[str, dg.ExecuteInProcessResult]
    requested: dg.ExecuteInProcessResult
    approve_blocked: dg.ExecuteInProcessResult
    auto_blocked: dg.ExecuteInProcessResult
    champion_after_blocks: str | None
    report: dg.ExecuteInProcessResult


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """The step failure's messages with their causes, as the UI shows them."""
    messages = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            while error is not None:
                messages.append(error.message)
                error = error.cause
    return " ".join(messages)


def _serve_and_monitor(env: PipelineEnv, month: str, job: str | None = None) -> dg.ExecuteInProcessResult:
    """Replay the month through the service, then its monitors (the selected ones, or a whole job)."""
    lake = env.resources["lake"].get()
    config = from_env(state_dir=lake.root, project_path=env.project_file,
                      tracking_uri=env.resources["mlflow_tracking"].tracking_uri)
    replayed = replay_period(lake, env.resources["project"].get(), f"{month}-01", config)
    assert replayed.failures == 0 and replayed.requests > 0
    if job:
        result = env.run(job, tags={"dagster/partition": f"{month}-01"})
    else:
        result = env.defs().resolve_implicit_global_asset_job_def().execute_in_process(
            instance=env.instance, partition_key=f"{month}-01", asset_selection=[dg.AssetKey(a) for a in MONITORS])
    assert result.success
    return result


def _materialize(env: PipelineEnv, asset: str) -> dg.ExecuteInProcessResult:
    return env.defs().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=env.instance, asset_selection=[dg.AssetKey(asset)], raise_on_error=False)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    root = tmp_path_factory.mktemp("governance")
    env = PipelineEnv(root, root / "project.yaml", dg.DagsterInstance.ephemeral())
    env.write_project("weather", **OVERRIDES)
    assert env.ingest("2014-01", "2015-05").success
    assert env.run("continuous_training_job").success  # v1, promoted (policy auto)
    assert env.ingest("2015-06", "2015-06").success
    monitors = {"2015-06": _serve_and_monitor(env, "2015-06")}

    env.write_project("weather", promotion="manual", **OVERRIDES)
    assert env.run("continuous_training_job").success  # v2, awaits approval
    requested = env.run("request_changes", config={"ops": {"request_version_changes": {"config": {
        "version": "2", "reason": REASON, "reviewer": "ana"}}}})
    approve_blocked = env.run("approve_model", config={"ops": {"approve_version": {"config": {
        "version": "2", "reason": "looks fine to me", "approver": "bob"}}}})
    env.write_project("weather", **OVERRIDES)
    auto_blocked = _materialize(env, "champion_model")  # the automatic policy on the registered v2
    champion_after_blocks = registry.alias_version(env.resources["mlflow_tracking"].client(), MODEL, registry.CHAMPION)

    assert env.ingest("2015-07", "2015-07").success
    assert env.run("continuous_training_job").success  # v3 answers the review, promoted
    monitors["2015-07"] = _serve_and_monitor(env, "2015-07", "monitoring_job")  # refreshes the report too
    return Story(env, monitors, requested, approve_blocked, auto_blocked, champion_after_blocks,
                 _materialize(env, "governance_report"))


def test_requested_changes_block_approval_and_auto_promotion_until_a_new_version(story: Story) -> None:
    client = story.env.resources["mlflow_tracking"].client()
    assert story.requested.success
    [observed] = story.requested.asset_observations_for_node("request_version_changes")
    assert observed.asset_key == dg.AssetKey("champion_model") and observed.metadata["reason"].value == REASON
    assert "| 1 | 2 | request_changes | ana |" in observed.metadata["review_history"].value
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["blessed"] == "true" and tags["infra_valid"] == "true"  # only the review stands in the way
    assert tags[review.REQUESTED] == "true" and tags[review.REASON] == REASON and tags[review.REVIEWER] == "ana"
    [event] = review.review_history(client, MODEL)
    assert (event["version"], event["reviewer"], event["reason"]) == ("2", "ana", REASON)

    assert not story.approve_blocked.success and REASON in _failure(story.approve_blocked)
    assert "changes requested by ana" in _failure(story.approve_blocked)
    assert not story.auto_blocked.success and REASON in _failure(story.auto_blocked)
    assert story.champion_after_blocks == "1"
    assert [e["version"] for e in registry.alias_history(client, MODEL) if e["alias"] == registry.CHAMPION] == ["1", "3"]
    assert registry.alias_version(client, MODEL, registry.CHAMPION) == "3"
    alerts = [a for a in story.env.resources["alerts"].read() if a["source"] == "review:request_changes"]
    assert len(alerts) == 1 and REASON in alerts[0]["message"]


def test_request_changes_on_an_unknown_version_fails_in_one_line(story: Story) -> None:
    result = story.env.run("request_changes", config={"ops": {"request_version_changes": {"config": {
        "version": "42", "reason": "x", "reviewer": "ana"}}}})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    description = failure.step_failure_data.user_failure_data.description
    assert description == f"{MODEL} has no version '42' (registered versions: 1, 2, 3)"
    blank = story.env.run("request_changes", config={"ops": {"request_version_changes": {"config": {
        "version": "3", "reason": " ", "reviewer": "ana"}}}})
    assert not blank.success and "needs a non-empty reason and reviewer" in _failure(blank)
    assert review.requested_changes(story.env.resources["mlflow_tracking"].client().get_model_version(
        MODEL, "3").tags) is None


def test_report_shows_each_period_by_version_with_the_monitors_figures(story: Story) -> None:
    assert story.report.success
    metadata = story.report.asset_materializations_for_node("governance_report")[0].metadata
    assert metadata["periods"].value == ["2015-06", "2015-07"]
    assert metadata["versions_served"].value == ["1", "3"]
    assert metadata["champion_version"].value == "3"
    refreshed = story.monitors["2015-07"].asset_materializations_for_node("governance_report")[0].metadata
    assert refreshed["periods"].value == ["2015-06", "2015-07"] and refreshed["versions_served"].value == ["1", "3"]
    run = _mlflow_run(story)
    rows = list(csv.DictReader(io.StringIO(_artifact(story, run, "governance/report.csv").decode())))
    assert [(r["period"], r["version"], r["arm"]) for r in rows] == [("2015-06", "1", "champion"),
                                                                   ("2015-07", "3", "champion")]
    client = story.env.resources["mlflow_tracking"].client()
    alerts = story.env.resources["alerts"].read()
    for row in rows:
        monitored = story.monitors[row["period"]]
        performance = monitored.asset_materializations_for_node("model_performance")[0].metadata
        drift = monitored.asset_materializations_for_node("drift_report")[0].metadata
        assert performance["model_version"].value == row["version"]
        assert float(row["live_rmse"]) == pytest.approx(performance["live_rmse"].value, rel=1e-12)
        assert float(row["live_mae"]) == pytest.approx(performance["live_mae"].value, rel=1e-12)
        assert float(row["offline_rmse"]) == float(client.get_model_version(MODEL, row["version"]).tags["metric.rmse"])
        assert float(row["share_drifted"]) == pytest.approx(drift["share_drifted"].value)
        assert int(row["predictions"]) == story.env.resources["lake"].get().read_batches(
            "prediction_log", [row["period"]]).height
        for severity in ("WARN", "ERROR"):
            expected = sum(1 for a in alerts if a["severity"] == severity
                           and (a.get("details") or {}).get("period") == row["period"])
            assert int(row[f"alerts_{severity.lower()}"]) == expected
        assert row["worst_slice"].startswith("location=")
    assert sum(int(r["alerts_warn"]) + int(r["alerts_error"]) for r in rows) > 0
    versions = metadata["versions"].value
    assert f"changes requested by ana: {REASON} (answered by version 3)" in versions
    assert "rollback" not in metadata["alias_history"].value and "| 3 |" in metadata["alias_history"].value


def test_report_chart_is_in_the_ui_and_in_mlflow(story: Story) -> None:
    metadata = story.report.asset_materializations_for_node("governance_report")[0].metadata
    assert metadata["trend"].value.startswith("![live rmse by period and version](data:image/png;base64,iVBORw0KGgo")
    run = _mlflow_run(story)
    assert metadata["mlflow_run"].value.endswith(f"/runs/{run.info.run_id}")
    assert _artifact(story, run, "governance/trend.png").startswith(b"\x89PNG\r\n\x1a\n")
    listed = {a.path for a in story.env.resources["mlflow_tracking"].client().list_artifacts(run.info.run_id,
                                                                                             "governance")}
    assert listed == {f"governance/{f}" for f in ("trend.png", "report.csv", "versions.csv", "alerts.csv",
                                                  "report.md")}


def _mlflow_run(story: Story):
    """The governance run the standalone materialization logged (monitoring_job logged one before it)."""
    tracking = story.env.resources["mlflow_tracking"]
    runs = tracking.client().search_runs([tracking.configure()], "tags.`mlops/kind` = 'governance_report'",
                                         order_by=["attributes.start_time DESC"])
    assert len(runs) == 2
    return runs[0]


def _artifact(story: Story, run, path: str) -> bytes:
    import mlflow.artifacts

    story.env.resources["mlflow_tracking"].configure()
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path)
    with open(local, "rb") as fh:
        return fh.read()


def test_alert_counts_and_the_answer_to_a_review() -> None:
    alerts = [{"source": "monitor:drift_report", "severity": "WARN", "details": {"period": "2015-06"}},
              {"source": "monitor:drift_report", "severity": "WARN", "details": {"period": "2015-06"}},
              {"source": "run:landed_period_job", "severity": "ERROR", "details": {}}]
    assert alert_counts(alerts).rows() == [("2015-06", "monitor:drift_report", "WARN", 2),
                                           (NO_PERIOD, "run:landed_period_job", "ERROR", 1)]
    history = [{"seq": "1", "alias": "champion", "version": "1", "action": "promote", "at": "2026-01-01T00:00:00"},
               {"seq": "2", "alias": "champion", "version": "3", "action": "rollback", "at": "2026-01-03T00:00:00"},
               {"seq": "3", "alias": "champion", "version": "4", "action": "approve", "at": "2026-01-04T00:00:00"}]
    assert review.answered_by("2", "2026-01-02T00:00:00", history) == "4"  # a rollback answers nothing
    assert review.answered_by("4", "2026-01-05T00:00:00", history) is None
    tags = {"1": {"blessed": "true", "metric.rmse": "2.5"},
            "2": {"blessed": "true", review.REQUESTED: "true", review.REASON: "a | b", review.REVIEWER: "ana",
                  review.AT: "2026-01-02T00:00:00"}}
    table = version_table(tags, history, "rmse")
    assert table["review"].to_list() == ["", "changes requested by ana: a | b (answered by version 4)"]
    assert "a / b" in markdown(table, table.columns) and "| 2.5000 |" in markdown(table, table.columns)


def test_period_rows_split_versions_and_arms() -> None:
    spec = load_project(PROJECTS_DIR / "weather").spec
    joined = pl.DataFrame({
        "model_version": ["1", "1", "1", "2", "2", "1"], "arm": ["champion", "champion", "champion", "shadow",
                                                                  "shadow", "champion"],
        "prediction": [10.0, 12.0, 20.0, 11.0, 13.0, None], spec.label.name: [11.0, 12.0, 18.0, 11.0, None, 5.0],
        "location": ["Seattle", "New York", "New York", "Seattle", "New York", "Seattle"]})
    champion, shadow = period_rows(joined, spec, "2015-06", {"1": {"rmse": 1.5}})
    assert (champion["version"], champion["arm"], champion["predictions"], champion["labelled"]) == ("1", "champion",
                                                                                                      4, 3)
    assert champion["live_rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))  # the unscored row is left out
    assert champion["worse_than_offline_by"] == pytest.approx(champion["live_rmse"] - 1.5)
    assert champion["worst_slice"] is None and champion["coverage"] == 1.0  # slices under 10 labelled rows: noise
    [small] = [r for r in period_rows(joined, spec, "2015-06", {}, min_slice_rows=1) if r["arm"] == "champion"]
    assert (small["worst_slice"], small["worst_slice_metric"]) == ("location=New York", pytest.approx(math.sqrt(2)))
    assert (shadow["version"], shadow["arm"], shadow["labelled"], shadow["live_rmse"]) == ("2", "shadow", 1, 0.0)
    assert math.isnan(shadow["offline_rmse"]) and shadow["coverage"] == 0.5


def test_the_daemon_refreshes_the_report_after_a_periods_reports_not_after_a_retrain() -> None:
    defs = build_definitions(PROJECTS_DIR / "weather" / "project.yaml")
    instance = dg.DagsterInstance.ephemeral()
    report = dg.AssetKey("governance_report")
    result: dg.EvaluateAutomationConditionsResult | None = None

    def lands(asset: str, partition: str | None = None) -> int:
        """Report a materialization, evaluate the conditions; how many report runs would start."""
        nonlocal result
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=partition))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result and result.cursor)
        return result.get_num_requested(report)

    assert lands("training_set") == 0
    assert lands("prediction_log", "2015-06-01") == 0, "a log alone: its reports come first"
    assert lands("model_performance", "2015-06-01") == 1
    assert lands("governance_report") == 0
    assert lands("training_set") == 0, "a retrain alone has nothing new to report"
    assert lands("drift_report", "2015-07-01") == 1


def test_a_rollback_to_a_version_with_changes_requested_is_refused(tmp_path) -> None:
    """On a real MLflow registry: champion 1 -> 2 -> 3; a reviewer asks changes for 2; rolling back (to 2) is
    refused naming the review and leaves the champion. Once 1 is approved again the previous champion is 3,
    which nobody asked changes for, and the rollback goes ahead."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, name = MlflowClient(tracking_uri=uri, registry_uri=uri), "reviewed_model"
    client.create_registered_model(name)
    for _ in range(3):
        version = client.create_model_version(name, source=str(tmp_path)).version
        for tag in ("blessed", "infra_valid"):
            client.set_model_version_tag(name, version, tag, "true")
        registry.promote(client, name, version, "promote", "ci", "new version")
    review.request_changes(client, name, "2", "unfair to small airports", "ana")
    with pytest.raises(registry.GovernanceError) as refused:
        review.assert_rollback_allowed(client, name)
    assert "version 2 has changes requested by ana" in str(refused.value)
    assert "unfair to small airports" in str(refused.value) and "roll back" in str(refused.value)
    assert registry.alias_version(client, name, registry.CHAMPION) == "3"
    registry.promote(client, name, "1", "approve", "bob", "the old one was fine")
    review.assert_rollback_allowed(client, name)  # the previous champion is now 3: nothing asked for it
    assert registry.rollback(client, name, "bob", "complaints")["version"] == "3"
