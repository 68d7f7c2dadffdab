"""Every rule of the blessing gate on hand-built training-set frames, and one real multiclass run.

Frames follow the training-set contract (id, features, prediction_time, period, split, label,
bin slices); projects are small project files of a synthetic problem, for every problem type.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml

from mlops_assets.contract import PERIOD, PREDICTION_TIME, SPLIT
from mlops_assets.evaluation.evaluate import Evaluation, evaluate_scores, truth
from mlops_assets.evaluation.judging import judge
from mlops_assets.evaluation.report import artifacts, record
from mlops_assets.evaluation.windows import NO_FAIR_ROWS, fair_test_rows, require_rows, training_windows
from mlops_assets.project.loading import load_project
from mlops_assets.project.spec import Project
from mlops_assets.registry.gate import baseline_scores, bless
from mlops_assets.registry.infra import expected_array, expected_column
from mlops_assets.registry.infra import judge as judge_serving
from mlops_assets.registry.model_card import model_card
from mlops_assets.tracking import MlflowResource, load_tabular_model
from mlops_assets.training.mlflow_logging import log_candidate, project_tags
from mlops_assets.training.model import TabularModel

PERIODS = ["2020-01", "2020-02", "2020-03", "2020-04", "2020-05", "2020-06"]
ROLES = ["train", "train", "train", "validation", "test", "test"]
LABEL = "target"
CLASSES = ["calm", "breezy", "stormy"]
TEMPLATE = """
name: toy
description: A synthetic toy problem, predicted at the start of each event.
model_name: toy_model
start: "2020-01"
sources:
  events:
    time: ts
    description: Synthetic events, one month at a time.
    schema:
      event_id: {type: int, nullable: false}
      ts: {type: datetime, nullable: false}
      group: {type: str}
      x1: {type: float}
      x2: {type: float}
      y: {type: str}
examples: {source: events, id: [event_id]}
label: {column: y, name: target}
prediction_time: {column: ts}
request:
  time: ts
  fields:
    event_id: {type: int}
    ts: {type: datetime}
    group: {type: str}
    x1: {type: float}
    x2: {type: float}
features: [group, x1, x2]
categorical: [group]
slices: [group, period, {name: x1_band, column: x1, bins: [0]}]
split: {granularity: month, test: 2, validation: 1, min_rows: 50}
tuning: {n_trials: 2, timeout_seconds: 60, max_rounds: 40, early_stopping_rounds: 5}
gate: {floors: {}, tolerance: 0.01, slice_tolerance: 0.05, min_slice_rows: 30}
"""


def project(problem: str, **changes: object) -> Project:
    raw = yaml.safe_load(TEMPLATE) | {"problem": problem}
    for key, value in changes.items():
        raw[key] = raw[key] | value if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return Project.model_validate(raw)


def frame(problem: str, rows_per_period: int = 120, seed: int = 0) -> pl.DataFrame:
    """The training-set contract by hand: the label depends on x1, x2 and the group."""
    rng = np.random.default_rng(seed)
    n = rows_per_period * len(PERIODS)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    group = rng.choice(["g1", "g2"], size=n)
    signal = 1.5 * x1 + x2 + np.where(group == "g1", 0.5, -0.5) + rng.normal(scale=0.5, size=n)
    if problem == "binary":
        label = pl.Series(LABEL, (signal > 0.8).astype(np.int8), dtype=pl.Int8)
    elif problem == "multiclass":
        label = pl.Series(LABEL, np.array(CLASSES, dtype=object)[np.digitize(signal, [-0.5, 1.0])].tolist())
    else:
        label = pl.Series(LABEL, 10 + 3 * signal, dtype=pl.Float64)
    period_index = np.repeat(np.arange(len(PERIODS)), rows_per_period)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    return pl.DataFrame({
        "event_id": np.arange(n), "ts": [start + timedelta(days=31 * int(i), hours=j % 500) for j, i in
                                         enumerate(period_index)],
        "group": group, "x1": x1, "x2": x2,
        PREDICTION_TIME: [start + timedelta(days=31 * int(i)) for i in period_index],
        PERIOD: [PERIODS[i] for i in period_index], SPLIT: [ROLES[i] for i in period_index],
    }).with_columns(label, x1_band=pl.when(pl.col("x1") < 0).then(pl.lit("<0")).otherwise(pl.lit("0+")))


def split(df: pl.DataFrame, role: str) -> pl.DataFrame:
    return df.filter(pl.col(SPLIT) == role)


def evaluations(spec: Project, df: pl.DataFrame, scores: np.ndarray,
                classes: list[str] | None = None) -> tuple[Evaluation, Evaluation]:
    """The candidate's scores and the trivial baseline, both on the test rows."""
    test = split(df, "test")
    _, base = baseline_scores(truth(split(df, "train"), spec, classes), spec.problem, classes, test.height)
    return evaluate_scores(test, scores, spec, classes), evaluate_scores(test, base, spec, classes)


def binary_scores(test: pl.DataFrame, scale: float = 1.0, shift: float = -0.8) -> np.ndarray:
    logit = scale * (1.5 * test["x1"].to_numpy() + test["x2"].to_numpy()
                     + np.where(test["group"].to_numpy() == "g1", 0.5, -0.5) + shift)
    return 1 / (1 + np.exp(-logit))


def test_a_model_that_never_predicts_the_positive_class_is_rejected() -> None:
    spec, df = project("binary", metric="auc", gate={"baseline_margin": 0.05}), frame("binary")
    good = binary_scores(split(df, "test"))
    challenger, baseline = evaluations(spec, df, good)
    assert baseline.overall["auc"] == 0.5 and baseline.overall["balanced_accuracy"] == 0.5
    verdict = bless(challenger, baseline, spec)
    assert verdict.blessed, verdict.reasons
    assert {r["metric"] for r in verdict.baseline} == {"auc", "balanced_accuracy"}
    never_positive = good * 0.49  # same ranking, same AUC, but every score under the 0.5 threshold
    challenger, baseline = evaluations(spec, df, never_positive)
    assert challenger.overall["auc"] == pytest.approx(verdict.baseline[0]["challenger"])
    rejected = bless(challenger, baseline, spec)
    assert not rejected.blessed
    assert len(rejected.reasons) == 1 and rejected.reasons[0].startswith("balanced_accuracy 0.5000 does not beat")


def test_the_primary_metric_must_beat_the_baseline_by_the_margin() -> None:
    df = frame("binary")
    weak = binary_scores(split(df, "test")) * 0.2 + np.random.default_rng(1).random(split(df, "test").height) * 0.8
    for margin, blessed in ((0.0, True), (0.45, False)):
        spec = project("binary", metric="auc", gate={"baseline_margin": margin})
        verdict = bless(*evaluations(spec, df, weak), spec)
        assert verdict.blessed is blessed, verdict.reasons
    assert "auc" in verdict.reasons[0] and ">= 0.45" in verdict.reasons[0]


def test_multiclass_baseline_is_the_train_class_priors_and_majority_accuracy() -> None:
    spec, df = project("multiclass", classes=CLASSES), frame("multiclass")
    train = split(df, "train")
    codes = truth(train, spec, CLASSES)
    name, base = baseline_scores(codes, "multiclass", CLASSES, 4)
    priors = np.bincount(codes.astype(int), minlength=3) / codes.size
    assert base.shape == (4, 3) and np.allclose(base[0], priors)
    assert CLASSES[int(priors.argmax())] in name
    test = split(df, "test")
    majority_only = np.tile(np.eye(3)[priors.argmax()] * 0.9 + 0.05, (test.height, 1))
    challenger, baseline = evaluations(spec, df, majority_only, CLASSES)
    majority_share = float(np.mean(truth(test, spec, CLASSES) == priors.argmax()))
    assert baseline.overall["accuracy"] == pytest.approx(majority_share)
    assert not bless(challenger, baseline, spec).blessed  # only ever the majority class
    informed = np.eye(3)[truth(test, spec, CLASSES).astype(int)] * 0.7 + 0.1  # right 70% of the mass
    challenger, baseline = evaluations(spec, df, informed, CLASSES)
    verdict = bless(challenger, baseline, spec)
    assert verdict.blessed, verdict.reasons
    assert [r["metric"] for r in verdict.baseline] == ["log_loss", "accuracy"]
    assert challenger.overall["recall_stormy"] == 1.0 and "macro_f1" in challenger.sliced.columns


def test_regression_baseline_is_the_train_mean_and_floors_are_ceilings_for_errors() -> None:
    spec, df = project("regression", gate={"baseline_margin": 0.5, "floors": {"rmse": 1.0}}), frame("regression")
    test = split(df, "test")
    name, base = baseline_scores(truth(split(df, "train"), spec, None), "regression", None, 3)
    assert base == pytest.approx([split(df, "train")[LABEL].mean()] * 3) and name.startswith("train mean")
    exact = test[LABEL].to_numpy() + np.random.default_rng(2).normal(scale=0.3, size=test.height)
    assert bless(*evaluations(spec, df, exact), spec).blessed
    noisy = exact + np.random.default_rng(3).normal(scale=6.0, size=test.height)
    verdict = bless(*evaluations(spec, df, noisy), spec)
    assert not verdict.blessed
    assert any(r.startswith("rmse") and "floor 1.0" in r for r in verdict.reasons)
    assert any(r.startswith("mae") and "trivial baseline" in r for r in verdict.reasons)
    unknown = project("regression", gate={"floors": {"auc": 0.7}})
    assert "no such metric" in bless(*evaluations(unknown, df, exact), unknown).reasons[0]


def test_too_few_validation_or_test_rows_is_an_error_naming_the_split() -> None:
    df = frame("binary", rows_per_period=20)
    with pytest.raises(ValueError, match=r"the validation split has 20 rows, .*min_rows=50 \(periods: 2020-04\)"):
        require_rows(df, project("binary"))
    with pytest.raises(ValueError, match=r"the test split has 40 rows, .*\(periods: 2020-05, 2020-06\)"):
        require_rows(df, project("binary"), ("test",))
    require_rows(df, project("binary", split={"min_rows": 20}))


def test_the_champion_is_compared_only_on_periods_it_never_trained_on() -> None:
    spec, df = project("binary", metric="auc"), frame("binary")
    test = split(df, "test")
    windows = training_windows(df)
    assert windows == {"train_window": "2020-01..2020-03", "validation_window": "2020-04..2020-04"}
    fair, window = fair_test_rows(test, windows)
    assert fair.height == test.height and window.excluded_periods == [] and window.notes == []
    overlapping = {"train_window": "2020-01..2020-04", "validation_window": "2020-05..2020-05"}
    fair, window = fair_test_rows(test, overlapping)
    assert set(fair[PERIOD]) == {"2020-06"} and window.excluded_periods == ["2020-05"]
    assert window.champion_trained_until == "2020-05" and "2020-06 only" in window.notes[0]
    fair, window = fair_test_rows(test, {"train_window": "2020-01..2020-05", "validation_window": "2020-06..2020-06"})
    assert fair.height == 0 and not window.comparable and window.notes == [NO_FAIR_ROWS]
    verdict = bless(*evaluations(spec, df, binary_scores(test)), spec, None, window.notes)
    assert verdict.blessed and verdict.notes == [NO_FAIR_ROWS] and NO_FAIR_ROWS in verdict.summary()
    assert verdict.comparison.height == 0


def test_a_champion_regression_on_the_fair_rows_rejects() -> None:
    spec, df = project("binary", metric="auc"), frame("binary")
    fair = split(df, "test").filter(pl.col(PERIOD) == "2020-06")
    strong, weak = binary_scores(fair, scale=2.0), binary_scores(fair, scale=0.2) * 0.5 + 0.25
    weak = weak + np.random.default_rng(4).normal(scale=0.2, size=fair.height).clip(-0.2, 0.2)
    pair = (evaluate_scores(fair, weak, spec), evaluate_scores(fair, strong, spec))
    verdict = bless(*evaluations(spec, df, binary_scores(split(df, "test"))), spec, pair)
    assert not verdict.blessed and verdict.reasons[0].startswith("auc overall:")
    assert verdict.comparison.row(0, named=True)["slice"] == "(overall)"


def test_the_worst_slice_may_trail_overall_by_at_most_max_slice_gap() -> None:
    df = frame("regression")
    test = split(df, "test")
    scores = test[LABEL].to_numpy().copy()
    bad_group = test["group"].to_numpy() == "g2"
    scores[bad_group] += np.random.default_rng(5).normal(scale=2.0, size=bad_group.sum())
    lenient = project("regression")
    assert bless(*evaluations(lenient, df, scores), lenient).blessed
    strict = project("regression", gate={"max_slice_gap": 0.3})
    verdict = bless(*evaluations(strict, df, scores), strict)
    assert not verdict.blessed and "slice group=g2" in verdict.reasons[0] and "max_slice_gap 0.3" in verdict.reasons[0]


def test_infra_judge_latency_budget_and_multiclass_canary_roundtrip(tmp_path: Path) -> None:
    probabilities = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    canary = pd.DataFrame({"x1": [0.1, 0.2], "__expected": expected_column(probabilities)})
    canary.to_parquet(tmp_path / "canary.parquet")
    expected = expected_array(pd.read_parquet(tmp_path / "canary.parquet")["__expected"])
    assert np.array_equal(expected, probabilities)
    result = {"load_seconds": 1.0, "single_row_p50_ms": 2.0, "single_row_p99_ms": 4.0}
    generous = judge_serving(probabilities, expected, result, latency_budget_ms=10_000)
    assert generous.passed and generous.figures["canary_rows"] == 2
    tiny = judge_serving(probabilities, expected, result, latency_budget_ms=0.001)
    assert not tiny.passed and "exceeds the budget 0.001 ms" in tiny.reasons[0]
    assert not judge_serving(probabilities[:, ::-1], expected, result, 10_000).passed


@pytest.fixture()
def tracking(tmp_path: Path) -> MlflowResource:
    return MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          artifact_root=str(tmp_path / "artifacts"), experiment="gate_test")


def test_multiclass_candidate_end_to_end_against_a_real_mlflow_store(tmp_path: Path, tracking) -> None:
    file = tmp_path / "project.yaml"
    file.write_text(TEMPLATE + "problem: multiclass\n")
    loaded = load_project(file)
    spec, df = loaded.spec, frame("multiclass", rows_per_period=150)
    with pytest.raises(ValueError, match="the validation split has 20 rows"):
        log_candidate(frame("multiclass", rows_per_period=20), "tiny", spec, tracking, {})
    model, logged = log_candidate(df, "digest1", spec, tracking, project_tags(loaded))
    assert model.classes == sorted(CLASSES) and logged["validation_metric"] == "multi_logloss"
    run = tracking.client().get_run(logged["run_id"])
    assert run.data.tags["train_window"] == "2020-01..2020-03" and run.data.tags["project"] == "toy"
    assert run.data.tags["project_hash"] == logged["project_hash"] and len(logged["project_hash"]) == 16
    test = split(df, "test")
    proba = model.predict(test.to_pandas())
    assert proba.shape == (test.height, 3) and np.allclose(proba.sum(axis=1), 1.0)
    loaded_model = TabularModel.from_scoring(load_tabular_model(logged["model_uri"]))
    assert loaded_model.classes == model.classes
    np.testing.assert_allclose(loaded_model.predict(test.to_pandas()), proba, atol=1e-12)

    champion_tags = {"train_window": "2020-01..2020-05", "validation_window": "2020-06..2020-06"}
    result = judge(model, loaded_model, df, spec, champion_tags)
    assert result.verdict.blessed, result.verdict.reasons
    assert result.verdict.notes == [NO_FAIR_ROWS] and result.champion is None
    assert result.challenger.overall["accuracy"] > result.baseline.overall["accuracy"]
    fair = judge(model, loaded_model, df, spec, training_windows(df))
    assert fair.window.rows == test.height and fair.verdict.comparison["worse_by"].abs().max() < 1e-9

    evaluation = {**json.loads(json.dumps(record(result), default=str)), "champion_version": "1"}
    files = artifacts(result, df, spec, logged["features"], model.classes)
    assert files["plots/confusion_matrix.png"][:4] == b"\x89PNG" and "macro_f1" in files["evaluation/report.md"]
    card = model_card(spec, "2", logged, evaluation, "abc123")
    assert "A synthetic toy problem" in card and "train: 2020-01..2020-03" in card and NO_FAIR_ROWS in card
    assert "classes breezy, calm, stormy" in card and "train class priors" in card
