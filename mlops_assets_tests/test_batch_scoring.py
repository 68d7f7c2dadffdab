"""Batch scoring on the weather project's real data with a tiny LightGBM fitted here.

A period's examples come out of the lake as the asset reads them (neighbouring deliveries, cut by
request time), are scored with features as of each prediction time, and must score exactly as the
same rows of the training frame do through pandas categoricals, the way the model was fitted.
"""

from __future__ import annotations

from datetime import UTC, datetime

import lightgbm as lgb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from mlops_assets.batch_scoring.scoring import model_matrix, prediction_columns, score_examples
from mlops_assets.contract import PERIOD, PREDICTION_TIME
from mlops_assets.features.repository import model_features, offline_features, view_events
from mlops_assets.features.sources import prepare_all
from mlops_assets.ingestion.batches import coerce, read_source_file
from mlops_assets.lake import Lake
from mlops_assets.monitoring.period_data import neighbours, period_examples
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR
from mlops_assets.training.training_set import examples_frame

MARCH = (datetime(2015, 3, 1, tzinfo=UTC), datetime(2015, 4, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def weather() -> LoadedProject:
    return load_project(PROJECTS_DIR / "weather")


@pytest.fixture(scope="module")
def observations(weather) -> pl.DataFrame:
    source = weather.spec.sources["weather"]
    return coerce(read_source_file(weather.source_path("weather"), source, source.format), source)


@pytest.fixture(scope="module")
def built(weather, observations) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """The training frame and the view events, as the training_set asset builds them."""
    spec = weather.spec
    prepared = prepare_all(weather, {"weather": observations})
    views = {v: view_events(spec, v, prepared[spec.feature_views[v].source]) for v in spec.used_views}
    return offline_features(spec, examples_frame(weather, prepared), views), views


def _pandas(frame: pl.DataFrame, features: list[str], levels: dict[str, list[str]]) -> pd.DataFrame:
    data = frame.select(features).to_pandas()
    for name, categories in levels.items():
        data[name] = pd.Categorical(data[name], categories=categories)
    return data


@pytest.fixture(scope="module")
def model(weather, built) -> ScoringModel:
    """A small regression booster on the periods before 2015, fitted directly (text features as categories)."""
    spec, (frame, _) = weather.spec, built
    features = model_features(spec)
    train = frame.filter(pl.col(PERIOD) < "2015-01")
    categorical = [f for f in features if f in spec.categorical or train.schema[f] == pl.String]
    levels = {c: sorted(train[c].drop_nulls().unique().to_list()) for c in categorical}
    booster = lgb.train({"objective": "regression", "num_leaves": 8, "min_data_in_leaf": 20, "verbose": -1,
                         "num_threads": 1, "seed": 1},
                        lgb.Dataset(_pandas(train, features, levels), train[spec.label.name].to_numpy()),
                        num_boost_round=30)
    return ScoringModel(booster, features, levels, "regression")


@pytest.fixture()
def lake(tmp_path, weather, observations) -> Lake:
    """Validated monthly deliveries of 2015 in a fresh lake, as ingestion writes them."""
    store = Lake(root=tmp_path / "state", data_dir=DATA_DIR)
    months = observations.with_columns(pl.col("date").dt.strftime("%Y-%m").alias("__month"))
    for (month,), part in months.filter(pl.col("date").dt.year() == 2015).partition_by("__month", as_dict=True).items():
        store.write_batch("weather", part.drop("__month"), month)
    return store


def test_a_period_is_scored_with_features_as_of_each_prediction_time(weather, built, model, lake) -> None:
    """Only events known by the end of the period are given: scoring as of each prediction time needs no
    more, and the features equal the training frame's to the skew tolerance (windowed sums are not
    bit-for-bit reproducible across calls: their rounding depends on an unordered group order)."""
    spec, (frame, views) = weather.spec, built
    assert neighbours(lake.available_periods("weather"), "2015-03") == ["2015-02", "2015-03", "2015-04"]
    examples = period_examples(lake, weather, "2015-03", *MARCH)
    known_at = spec.feature_views["daily_weather"].known_at
    known = {"daily_weather": views["daily_weather"].filter(pl.col(known_at) <= MARCH[1])}
    computed: list[pl.DataFrame] = []

    def features_seen(project, queries, events):  # the real computation; kept to score it again below
        computed.append(offline_features(project, queries, events))
        return computed[-1]

    scored = score_examples(spec, examples, known, model, "7", features_seen)
    assert scored.columns == ["location", "day_start", PREDICTION_TIME, PERIOD, "prediction", "model_name",
                              "model_version"]
    assert scored.height == 62 and scored.select("location", "day_start").is_unique().all()
    assert scored["day_start"].is_between(*MARCH, closed="left").all()
    assert set(scored["model_version"]) == {"7"} and set(scored["model_name"]) == {spec.model_name}
    featured = computed[0]
    expected = model.booster.predict(_pandas(featured, model.features, model.categorical_levels))
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected, rtol=1e-12)
    training_rows = frame.filter(pl.col(PERIOD) == "2015-03").sort("location", "day_start")
    ordered = featured.sort("location", "day_start")
    assert ordered.select("location", "day_start").equals(training_rows.select("location", "day_start"))
    for name in model.features:
        if training_rows.schema[name].is_numeric():
            np.testing.assert_allclose(ordered[name].cast(pl.Float64).to_numpy(),
                                       training_rows[name].cast(pl.Float64).to_numpy(), rtol=1e-9, err_msg=name)
        else:
            assert ordered[name].to_list() == training_rows[name].to_list(), name


def test_the_column_wise_matrix_equals_the_serving_matrix(built, model) -> None:
    rows = built[0].head(300).with_columns(weather=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("hail"))
                                           .otherwise(pl.col("weather")))
    columnwise = model_matrix(model, rows)
    per_row = model.matrix(rows.select(model.features).to_dicts())
    np.testing.assert_array_equal(np.isnan(columnwise), np.isnan(per_row))
    np.testing.assert_array_equal(np.nan_to_num(columnwise, nan=-1), np.nan_to_num(per_row, nan=-1))
    assert np.isnan(columnwise[3, model.features.index("weather")])


def test_prediction_columns_per_problem(weather) -> None:
    binary = weather.spec.model_copy(update={"problem": "binary", "threshold": 0.4})
    out = {s.name: s for s in prediction_columns(binary, np.array([0.2, 0.4, 0.9]))}
    assert out["prediction"].to_list() == out["probability"].to_list() == [0.2, 0.4, 0.9]
    assert out["decision"].to_list() == [False, True, True]
    multiclass = weather.spec.model_copy(update={"problem": "multiclass", "classes": ["rain", "sun"]})
    out = {s.name: s for s in prediction_columns(multiclass, np.array([[0.7, 0.3], [0.1, 0.9]]))}
    assert out["prediction"].to_list() == ["rain", "sun"]
    assert out["probabilities"].struct.field("sun").to_list() == [0.3, 0.9]
    with pytest.raises(ValueError, match="do not match the classes"):
        prediction_columns(multiclass, np.array([[0.2, 0.3, 0.5]]))
