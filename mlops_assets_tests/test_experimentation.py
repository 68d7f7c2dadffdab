"""The experimentation functions the notebooks call, on the weather project's real stores (3 months).

A module-scoped platform runs the real ingestion and feature repository jobs once; the functions
then read its lake and write to its MLflow store.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlops_assets import experimentation as ex
from mlops_assets.contract import SPLIT
from mlops_assets.features.repository import model_features
from mlops_assets.lake import Lake, read_record, read_training_set
from mlops_assets.project.loading import ProjectError, load_project
from mlops_assets.project.spec import TuningSpec
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR
from mlops_assets.training.training_set import content_hash
from mlops_assets.training.tuning import DEFAULT_PARAMS, first_trial_params, train_candidate
from mlops_assets_tests.pipeline_env import PipelineEnv

SMALL = {"split.test": 1, "split.validation": 1, "split.min_rows": 25, "gate.min_slice_rows": 20}
VARIANT = {"num_leaves": 7, "min_child_samples": 10, "learning_rate": 0.1}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> PipelineEnv:
    root = tmp_path_factory.mktemp("experimentation")
    platform = PipelineEnv(root, root / "project.yaml", dg.DagsterInstance.ephemeral())
    platform.write_project("weather", **SMALL)
    assert platform.ingest("2012-01", "2012-03").success
    assert platform.run("feature_repository_job").success
    candidate = platform.defs().resolve_implicit_global_asset_job_def().execute_in_process(
        instance=platform.instance, asset_selection=[dg.AssetKey("candidate_model")])
    assert candidate.success
    return platform


@pytest.fixture(scope="module")
def ws(env: PipelineEnv) -> ex.Workspace:
    return ex.Workspace(load_project(env.project_file), Lake(root=env.root / "state", data_dir=DATA_DIR),
                        env.resources["mlflow_tracking"])


@pytest.fixture(scope="module")
def frame(ws: ex.Workspace) -> pl.DataFrame:
    return ex.training_frame(ws, ex.entity_frame(ws))


@pytest.fixture(scope="module")
def variants(ws: ex.Workspace, frame: pl.DataFrame) -> list[ex.Variant]:
    return [ex.train_variant(ws, frame, "project-file"), ex.train_variant(ws, frame, "small", VARIANT)]


def test_the_training_frame_of_all_examples_is_the_pipelines_training_set(ws: ex.Workspace,
                                                                          frame: pl.DataFrame) -> None:
    pipeline, digest = read_training_set(ws.lake)
    assert content_hash(frame) == digest and frame.equals(pipeline)


def test_any_entity_frame_gets_point_in_time_features(ws: ex.Workspace, frame: pl.DataFrame) -> None:
    seattle = ex.entity_frame(ws, ("2012-01", "2012-03")).filter(pl.col("location") == "Seattle")
    features = ex.training_frame(ws, seattle)
    assert features.height == seattle.height and set(features["location"]) == {"Seattle"}
    same = frame.filter(pl.col("location") == "Seattle").select(features.columns)
    assert features.sort("day_start").equals(same.sort("day_start"))


def test_bad_entity_frames_and_period_ranges_are_explained(ws: ex.Workspace) -> None:
    with pytest.raises(ValueError, match=r"lacks columns \['prediction_time'\]"):
        ex.training_frame(ws, ex.entity_frame(ws).drop("prediction_time"))
    with pytest.raises(ValueError, match=r"no examples in periods .*ingested: \['2012-01', '2012-02', '2012-03'\]"):
        ex.entity_frame(ws, ("2014-01", "2014-02"))
    assert ex.parse_period_range(" 2012-01..2012-03 ") == ("2012-01", "2012-03")
    assert ex.parse_period_range("") is None
    for bad in ("2012-01-2012-03", "2012-03..2012-01", "jan..mar"):
        with pytest.raises(ValueError, match="FIRST..LAST"):
            ex.parse_period_range(bad)


def test_variants_are_exploration_runs_in_the_pipelines_experiment(env: PipelineEnv, ws: ex.Workspace,
                                                                   frame: pl.DataFrame,
                                                                   variants: list[ex.Variant]) -> None:
    client = env.resources["mlflow_tracking"].client()
    experiment = env.resources["mlflow_tracking"].configure()
    current, small = variants
    assert current.params == DEFAULT_PARAMS and small.params == {**DEFAULT_PARAMS, **VARIANT}
    for variant in variants:
        run = client.get_run(variant.run_id)
        assert run.info.experiment_id == variant.experiment_id == experiment
        assert run.data.tags[ex.EXPLORATION_TAG] == "true" and run.data.tags["project"] == "weather"
        assert run.data.tags["training_set_hash"] == content_hash(frame)
        assert float(run.data.params["num_leaves"]) == variant.params["num_leaves"]
        assert run.data.metrics["test_rmse"] == pytest.approx(variant.test_metrics["rmse"])
        assert f"[num_leaves: {variant.params['num_leaves']}]" in variant.model.booster.model_to_string()
    runs = {r["run_id"]: r for r in ex.experiment_runs(ws).to_dicts()}
    pipeline = [r for r in runs.values() if r["kind"] == "pipeline"]
    assert len(runs) == 3 and {v.run_id for v in variants} | {pipeline[0]["run_id"]} == set(runs)


def test_the_project_files_variant_is_the_pipelines_candidate(env: PipelineEnv, variants: list[ex.Variant]) -> None:
    """One trial with the project file's parameters trains what the candidate_model asset trained."""
    record = read_record(Lake(root=env.root / "state", data_dir=DATA_DIR), "candidate_model")
    current = variants[0].candidate
    assert record["n_trials"] == 1 and record["params"] == current.params
    assert record["validation_score"] == current.validation_score
    assert record["best_iteration"] == current.best_iteration


def test_compare_puts_the_best_on_the_primary_metric_first(ws: ex.Workspace, variants: list[ex.Variant]) -> None:
    table = ex.compare(ws.project.spec, variants)
    assert table["test_rmse"].to_list() == sorted(v.test_metrics["rmse"] for v in variants)
    assert ex.best_variant(ws.project.spec, variants).name == table["variant"][0]
    assert {"valid_rmse", "test_mae", "test_r2", "params"} <= set(table.columns)
    undefined = dataclasses.replace(variants[0], name="undefined", test_metrics={**variants[0].test_metrics,
                                                                              "rmse": float("nan")})
    table = ex.compare(ws.project.spec, [undefined, *variants])
    assert table["variant"][-1] == "undefined" and table["test_rmse"][-1] is None


def test_evaluation_png_is_the_problems_chart(ws: ex.Workspace, frame: pl.DataFrame,
                                             variants: list[ex.Variant]) -> None:
    assert ex.evaluation_png(ws.project.spec, frame, variants[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_promoted_parameters_are_the_first_trial_of_the_next_tuning(env: PipelineEnv, frame: pl.DataFrame,
                                                                    tmp_path: Path) -> None:
    promoted = tmp_path / "project.yaml"
    shutil.copy(env.project_file, promoted)
    ex.promote_parameters(promoted, {**VARIANT, "lambda_l2": 2})
    spec = load_project(promoted).spec
    spec = spec.model_copy(update={"tuning": spec.tuning.model_copy(update={"n_trials": 2})})
    parts = [frame.filter(pl.col(SPLIT) == s) for s in ("train", "validation")]
    trained = train_candidate(*parts, spec, model_features(spec))
    assert trained.trials[0].params == {**DEFAULT_PARAMS, **VARIANT, "lambda_l2": 2.0} == first_trial_params(spec)
    assert trained.trials[1].params != trained.trials[0].params


def test_first_trial_params_refuse_a_fractional_integer_parameter(ws: ex.Workspace) -> None:
    spec = ex.variant_spec(ws.project.spec, {"num_leaves": 31.5})
    with pytest.raises(ValueError, match="tuning.start_params.num_leaves must be a whole number, not 31.5"):
        first_trial_params(spec)
    assert first_trial_params(ex.variant_spec(ws.project.spec, {"num_leaves": 31.0}))["num_leaves"] == 31


def _flights_copy(tmp_path: Path) -> Path:
    for name in ("project.yaml", "flights.py"):
        shutil.copy(PROJECTS_DIR / "flights" / name, tmp_path / name)
    return tmp_path / "project.yaml"


def test_promotion_touches_only_the_tuning_line_of_the_real_project_file(tmp_path: Path) -> None:
    path = _flights_copy(tmp_path)
    before = path.read_text()
    diff = ex.promote_parameters(path, {"num_leaves": 31, "learning_rate": 0.08})
    changed = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    assert len(changed) == 2 and all(line[1:].startswith("tuning: {n_trials: 6,") for line in changed)
    assert changed[1].endswith("max_bin: 63, start_params: {num_leaves: 31, learning_rate: 0.08}}")
    kept = [line for line in before.splitlines() if not line.startswith("tuning:")]
    assert kept == [line for line in path.read_text().splitlines() if not line.startswith("tuning:")]
    original, promoted = load_project(PROJECTS_DIR / "flights" / "project.yaml").spec, load_project(path).spec
    assert promoted.tuning.start_params == {"num_leaves": 31, "learning_rate": 0.08}
    assert promoted.model_copy(update={"tuning": original.tuning}) == original
    ex.promote_parameters(path, {"num_leaves": 15})
    assert load_project(path).spec.tuning.start_params == {"num_leaves": 15}


def test_promotion_keeps_a_block_tuning_and_its_comments(tmp_path: Path) -> None:
    path = _flights_copy(tmp_path)
    text = path.read_text()
    block = "tuning:  # budget per run\n  n_trials: 3  # few\n\n  max_rounds: 200\n"
    path.write_text(text.replace(next(line for line in text.splitlines(True) if line.startswith("tuning:")), block))
    ex.promote_parameters(path, {"min_child_samples": 20})
    after = path.read_text()
    assert "tuning:  # budget per run\n  n_trials: 3  # few\n" in after and "  max_rounds: 200\n" in after
    assert "  start_params: {min_child_samples: 20}\n" in after
    assert load_project(path).spec.tuning == TuningSpec(n_trials=3, max_rounds=200,
                                                        start_params={"min_child_samples": 20})


def test_promotion_adds_a_tuning_block_when_there_is_none(tmp_path: Path) -> None:
    path = _flights_copy(tmp_path)
    text = path.read_text()
    path.write_text("".join(line for line in text.splitlines(True) if not line.startswith("tuning:")))
    ex.promote_parameters(path, {"lambda_l2": 0.5})
    assert path.read_text().endswith("tuning:\n  start_params: {lambda_l2: 0.5}\n")
    assert load_project(path).spec.tuning.start_params == {"lambda_l2": 0.5}


def test_an_unknown_parameter_is_refused_and_the_file_left_alone(tmp_path: Path) -> None:
    path = _flights_copy(tmp_path)
    before = path.read_text()
    with pytest.raises(ProjectError, match=r"tuning\.start_params\.max_depth"):
        ex.promote_parameters(path, {"max_depth": 4})
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["flights.py", "project.yaml"]
