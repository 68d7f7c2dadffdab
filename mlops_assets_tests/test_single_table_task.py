"""A second task on one table, configured by a YAML file alone: binary and regression."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from mlops_assets.registry import registry
from mlops_assets_tests.pipeline_env import PipelineEnv


def generated_table(path: Path, rows: int = 6000, seed: int = 3) -> Path:
    """Six months of synthetic customer rows: a numeric and a categorical signal plus noise."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1)
    ts = [start + timedelta(minutes=int(m)) for m in np.sort(rng.integers(0, 60 * 24 * 181, rows))]
    usage = rng.gamma(2.0, 10.0, rows)
    plan = rng.choice(["basic", "plus", "pro"], rows)
    logit = -1.0 + 0.06 * (usage - 20) + np.where(plan == "basic", 0.8, -0.4)
    frame = pl.DataFrame({
        "customer_id": np.arange(rows), "observed_at": ts, "usage": usage, "plan": plan,
        "tenure_months": rng.integers(1, 60, rows).astype(float), "region": rng.choice(["north", "south"], rows),
        "churned": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        "monthly_spend": 10 + 1.5 * usage + np.where(plan == "pro", 30.0, 0.0) + rng.normal(0, 3, rows),
    })
    frame.write_csv(path)
    return path


def task_file(tmp: Path, problem: str) -> Path:
    """Everything the platform needs to know, and nothing else: no code."""
    label, metric, floors = ("churned", "auc", {"auc": 0.6}) if problem == "binary" else (
        "monthly_spend", "rmse", {"rmse": 20.0})
    spec = {
        "name": f"customers_{problem}", "description": f"Generated single-table {problem} task.",
        "model_name": f"customers_{problem}", "problem": problem,
        "source": {"kind": "table", "path": "customers.csv"},
        "label": label, "timestamp": "observed_at", "entity_keys": ["customer_id"],
        "features": ["usage", "plan", "tenure_months", "region"], "categorical": ["plan", "region"],
        "slices": ["plan", "region", "month"], "metric": metric,
        "split": {"test_months": 2, "validation_months": 1},
        "tuning": {"n_trials": 2, "timeout_seconds": 30, "max_rounds": 80, "early_stopping_rounds": 10},
        "gate": {"floors": floors, "min_slice_rows": 200},
    }
    path = tmp / f"{problem}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("problem", ["binary", "regression"])
def test_single_table_task_runs_through_the_same_jobs_by_config_alone(problem: str, tmp_path: Path) -> None:
    generated_table(tmp_path / "customers.csv")
    env = PipelineEnv(tmp_path, task_file(tmp_path, problem), dg.DagsterInstance.ephemeral())
    defs = env.defs()
    assert {a.key.to_user_string() for a in defs.resolve_all_asset_specs()} == {
        "training_set", "candidate_model", "model_evaluation", "registered_model_version", "champion_model"}
    result = env.run("continuous_training_job")
    assert result.success
    client = env.resources["mlflow_tracking"].client()
    assert registry.alias_version(client, f"customers_{problem}", registry.CHAMPION) == "1"
    tags = client.get_model_version(f"customers_{problem}", "1").tags
    metric = "metric.auc" if problem == "binary" else "metric.rmse"
    assert metric in tags
    evaluation = result.asset_materializations_for_node("model_evaluation")[0].metadata
    if problem == "binary":
        assert evaluation["test_auc"].value > 0.6
    else:
        assert evaluation["test_rmse"].value < 20.0 and evaluation["test_r2"].value > 0.5


def test_task_file_errors_name_the_field(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from mlops_assets.task import load_task

    path = task_file(tmp_path, "binary")
    spec = yaml.safe_load(path.read_text())
    spec["categorical"] = ["plan", "colour"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValidationError, match="colour"):
        load_task(path)
