"""The policy backtest on the weather project's real data, through Dagster, MLflow and the real trainer."""

from __future__ import annotations

import dagster as dg
import pytest

from mlops_assets.backtest.replay import decide, gate_passes
from mlops_assets.project.spec import PolicySpec
from mlops_assets_tests.pipeline_env import PipelineEnv

SERVED = 6


@pytest.fixture(scope="module")
def backtest(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineEnv, dict]:
    root = tmp_path_factory.mktemp("backtest")
    env = PipelineEnv(root, root / "project.yaml", dg.DagsterInstance.ephemeral())
    env.write_project("weather", **{"backtest.periods": SERVED, "backtest.initial": 12, "backtest.max_rounds": 60})
    assert env.ingest("2012-01", "2013-06").success
    assert env.run("feature_repository_job").success
    result = env.defs().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=env.instance, asset_selection=[dg.AssetKey("policy_backtest")], raise_on_error=False)
    assert result.success
    return env, result.asset_materializations_for_node("policy_backtest")[0].metadata


def test_every_policy_is_served_every_period_and_shared_trainings_are_counted_once(backtest) -> None:
    _, metadata = backtest
    summary = metadata["summary"].value
    for policy in ("never", "every_period", "every_3", "on_drift", "on_metric_drop"):
        assert f"| {policy} |" in summary
    periods = metadata["periods"].value.splitlines()
    assert sum(line.startswith("| 2013-") for line in periods) == SERVED
    every_period = next(line for line in summary.splitlines() if line.startswith("| every_period |"))
    assert every_period.split("|")[3].strip() == str(SERVED - 1)  # retrained before each period after the first
    assert every_period.split("|")[5].strip() == "0.0000"  # no regret against itself
    assert metadata["trainings"].value <= SERVED  # every policy's retrains are among every_period's moments
    assert metadata["plot"].value.startswith("![live metric by policy](data:image/png;base64,")


def test_the_backtest_is_an_mlflow_run_with_plot_table_and_report(backtest) -> None:
    env, metadata = backtest
    client = env.resources["mlflow_tracking"].client()
    run_id = metadata["mlflow_run"].value.rsplit("/", 1)[-1]
    names = {a.path for a in client.list_artifacts(run_id, "backtest")}
    assert names == {"backtest/live_metric_by_policy.png", "backtest/outcomes.csv", "backtest/report.md"}
    assert "every_period.mean_live_rmse" in client.get_run(run_id).data.metrics


@pytest.mark.parametrize(("policy", "served", "drift", "live", "due"), [
    (PolicySpec(name="n", retrain="never"), 9, 1.0, 0.1, False),
    (PolicySpec(name="e", retrain="every", every=3), 2, 0.0, 0.9, False),
    (PolicySpec(name="e", retrain="every", every=3), 3, 0.0, 0.9, True),
    (PolicySpec(name="d", retrain="drift", drift_share=0.3), 1, 0.31, 0.9, True),
    (PolicySpec(name="d", retrain="drift", drift_share=0.3), 1, 0.29, 0.1, False),
    (PolicySpec(name="m", retrain="metric_drop", metric_drop=0.02), 1, 0.0, 0.87, True),
    (PolicySpec(name="m", retrain="metric_drop", metric_drop=0.02), 1, 0.0, 0.89, False),
])
def test_policies_decide_from_what_was_known(policy: PolicySpec, served: int, drift: float, live: float,
                                             due: bool) -> None:
    assert decide(policy, served, drift, live, trained_metric=0.9, higher=True)[0] is due


def test_the_gate_compares_in_the_metric_direction() -> None:
    assert gate_passes(0.74, 0.745, higher=True, tolerance=0.01)
    assert not gate_passes(0.72, 0.745, higher=True, tolerance=0.01)
    assert gate_passes(2.6, 2.55, higher=False, tolerance=0.1) and not gate_passes(2.8, 2.55, higher=False,
                                                                                  tolerance=0.1)
