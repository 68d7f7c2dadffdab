"""Monitoring reports (serving frame, labels, drift and its calibration, skew, live performance, A/B, replay
plan) as pure functions, for a binary project (flights) and a regression project (weather).

Both projects are loaded from their real project files and their training frames are built by the
platform's own code (ingestion coercion, prepared sources, feature views, examples, offline
features) on the committed data; served logs are written as the service writes them (JSON lines)
and read back by the platform's reader, so every test sees real distributions, nulls and dtypes.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlops_assets.contract import PERIOD, PREDICTION_TIME
from mlops_assets.evaluation.metrics import compute_metrics
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.repository import model_features, offline_features, view_events
from mlops_assets.features.sources import prepare_all
from mlops_assets.ingestion.batches import coerce, read_source_file
from mlops_assets.monitoring import ab_test, drift, performance, replay, skew
from mlops_assets.monitoring.checks import judge_drift, judge_performance, judge_skew
from mlops_assets.monitoring.drift_calibration import calibrate_drift
from mlops_assets.monitoring.ground_truth import period_labels
from mlops_assets.monitoring.serving_frame import flatten_log
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.serving.predlog import read_prediction_log
from mlops_assets.settings import PROJECTS_DIR
from mlops_assets.training.training_set import examples_frame

FEBRUARY = (datetime(2013, 2, 1, tzinfo=UTC), datetime(2013, 3, 1, tzinfo=UTC))


def build(project: LoadedProject, keep: pl.Expr | None = None,
          change: dict[str, list[pl.Expr]] | None = None) -> tuple[pl.DataFrame, dict, dict]:
    """(training frame, view events, prepared sources) from the project's own data, as the pipeline builds them."""
    spec = project.spec
    raw = {n: coerce(read_source_file(project.source_path(n), s, s.format), s) for n, s in spec.sources.items()}
    for name in spec.periodic_sources:
        raw[name] = raw[name].filter(keep) if keep is not None else raw[name]
        raw[name] = raw[name].with_columns(*(change or {}).get(name, []))
    prepared = prepare_all(project, raw)
    views = {v: view_events(spec, v, prepared[spec.feature_views[v].source]) for v in spec.used_views}
    return offline_features(spec, examples_frame(project, prepared), views), views, prepared


@pytest.fixture(scope="module")
def flights() -> LoadedProject:
    return load_project(PROJECTS_DIR / "flights")


@pytest.fixture(scope="module")
def weather() -> LoadedProject:
    return load_project(PROJECTS_DIR / "weather")


@pytest.fixture(scope="module")
def flights_built(flights) -> tuple[pl.DataFrame, dict, dict]:
    """Five real months; a stand-in score: a fixed logistic function of real features."""
    frame, views, prepared = build(flights, pl.col("month") <= 5)
    z = (-1.2 + 4.0 * (pl.col("origin_dep_delayed_share_3h").fill_null(0.2) - 0.2)
         + 3.0 * (pl.col("route_delayed_share_7d").fill_null(0.2) - 0.2) + 0.08 * (pl.col("sched_hour") - 13))
    return frame.with_columns((1.0 / (1.0 + (-z).exp())).alias("probability")), views, prepared


@pytest.fixture(scope="module")
def weather_built(weather) -> tuple[pl.DataFrame, dict, dict]:
    """Four real years; a stand-in prediction: yesterday's maximum."""
    frame, views, prepared = build(weather)
    return frame.with_columns(pl.col("temp_max").fill_null(15.0).alias("prediction")), views, prepared


def features_of(project: LoadedProject, frame: pl.DataFrame) -> list[str]:
    return [f for f in model_features(project.spec) if f in frame.columns]


def write_log(folder: Path, project: LoadedProject, rows: pl.DataFrame, arm: str = "champion", version: str = "1",
              score: pl.Expr | None = None, start: int = 0) -> Path:
    """Rows as the service logs them: inputs (request fields as sent), features, prediction fields."""
    spec = project.spec
    features = features_of(project, rows)
    scored = rows.with_columns(score.alias("__score")) if score is not None else rows.with_columns(
        pl.col("probability" if spec.problem == "binary" else "prediction").alias("__score"))
    inputs = replay.instances(spec, scored)
    values = replay.json_ready(scored.select(features)).to_dicts()
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (sent, feats, s, moment) in enumerate(zip(inputs, values, scored["__score"].to_list(),
                                                     scored[PREDICTION_TIME].to_list(), strict=True)):
        fields = ({"probability": s, "decision": s >= spec.threshold, "prediction": s} if spec.problem == "binary"
                  else {"prediction": s})
        lines.append(json.dumps({"request_id": f"req-{start + i}", "instance": 0, "status": 200, "arm": arm,
                                 "model_name": spec.model_name, "model_version": version, "inputs": sent,
                                 "features": feats, "prediction_time": moment.isoformat(), **fields,
                                 "timestamp": (moment + timedelta(seconds=3)).isoformat(), "latency_ms": 2.0}))
    lines.append(json.dumps({"request_id": "refused", "timestamp": "2013-02-02T00:00:00+00:00", "status": 422,
                             "arm": None, "error": "bad field", "latency_ms": 0.1}))
    (folder / f"part-{arm}-{start}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def served(tmp: Path, project: LoadedProject, rows: pl.DataFrame, bounds: tuple[datetime, datetime], period: str,
           **arms: dict) -> pl.DataFrame:
    """The flattened log of `rows` (and of extra arms scoring the same requests: name -> write_log options)."""
    folder = tmp / "prediction_log" / "date=2013-02-01"
    write_log(folder, project, rows)
    for name, options in arms.items():
        write_log(folder, project, options.pop("rows", rows), arm=name, **options)
    return flatten_log(read_prediction_log(tmp), project.spec, *bounds, period)


def by_hash(n: int, remainder: int = 0, seed: int = 1) -> pl.Expr:
    """A deterministic, order-free subset of flights (by a hash of their id)."""
    return (pl.struct("carrier", "flight", "origin", "scheduled_departure").hash(seed=seed) % n) == remainder


# ---------------------------------------------------------------- serving frame and labels


def test_the_log_is_cut_by_request_time_in_utc_with_typed_request_fields(tmp_path, flights, flights_built) -> None:
    frame = flights_built[0]
    rows = frame.filter(pl.col(PERIOD).is_in(["2013-01", "2013-02"])).filter(by_hash(20))
    table = served(tmp_path, flights, rows, FEBRUARY, "2013-02")
    in_february = rows.filter(pl.col("scheduled_departure").is_between(*FEBRUARY, closed="left"))
    assert table.height == in_february.height > 0
    assert table.schema["scheduled_departure"] == pl.Datetime("us", "UTC") and table.schema["flight"] == pl.Int64
    assert set(table["period"].unique()) == {"2013-02"}
    assert table.columns.count("carrier") == 1 and {"sched_hour", "temp", "probability"} <= set(table.columns)
    local_month = pl.col("scheduled_departure").dt.convert_time_zone("America/New_York").dt.month()
    late_january_evening = rows.filter((local_month == 1) & (pl.col("scheduled_departure") >= FEBRUARY[0]))
    keys = list(flights.spec.examples.id)
    assert late_january_evening.height > 0
    assert table.join(late_january_evening.select(keys), on=keys).height == late_january_evening.height


def test_a_regression_log_keeps_its_value_and_its_example_id(tmp_path, weather, weather_built) -> None:
    rows = weather_built[0].filter(pl.col(PERIOD) == "2014-02")
    bounds = (datetime(2014, 2, 1, tzinfo=UTC), datetime(2014, 3, 1, tzinfo=UTC))
    table = served(tmp_path, weather, rows, bounds, "2014-02")
    assert table.height == rows.height == 56
    assert table.schema["day_start"] == pl.Datetime("us", "UTC") and table.schema["prediction"] == pl.Float64
    assert "probability" not in table.columns
    assert table.select("location", "day_start").sort(pl.all()).equals(rows.select("location", "day_start").sort(pl.all()))


def test_labels_of_a_period_are_keyed_by_the_example_id(weather, weather_built, flights, flights_built) -> None:
    rows = weather_built[0]
    labels = period_labels(rows, weather.spec, datetime(2014, 2, 1, tzinfo=UTC), datetime(2014, 3, 1, tzinfo=UTC))
    assert labels.columns[:2] == ["location", "day_start"] and "temp_max_today" in labels.columns
    assert labels.height == 56 and labels.select("location", "day_start").is_unique().all()
    flight_labels = period_labels(flights_built[0], flights.spec, *FEBRUARY)
    assert flight_labels.columns[:4] == list(flights.spec.examples.id)
    assert {"is_delayed", "distance_band"} <= set(flight_labels.columns)
    assert flight_labels["is_delayed"].null_count() == 0
    assert flight_labels["scheduled_departure"].is_between(*FEBRUARY, closed="left").all()


# ---------------------------------------------------------------- drift and its calibration


def test_drift_on_held_out_rows_of_the_same_months_flags_nothing(flights, flights_built) -> None:
    frame = flights_built[0].filter(pl.col(PERIOD) <= "2013-03").rename({"probability": "prediction"})
    features = features_of(flights, frame)
    held_out = by_hash(3)
    reference = drift.reference_sample(frame.filter(~held_out), rows=20_000)
    summary, html = drift.drift_report(reference, frame.filter(held_out), features, current_rows=15_000,
                                       categorical=tuple(flights.spec.categorical))
    assert summary.share_drifted <= 0.05, summary.drifted_features
    assert summary.prediction_drift["drifted"] is False and set(summary.per_feature) == set(features)
    assert summary.per_feature["carrier"]["stattest"] == "Jensen-Shannon distance"
    assert summary.reference_rows == 20_000 and summary.current_rows == 15_000 and summary.sampled
    assert "<html" in html and "Drift per column" in html
    assert "20,000 reference rows" in drift.drift_markdown(summary)


def test_drift_of_a_regression_prediction(weather, weather_built) -> None:
    frame = weather_built[0]
    features = features_of(weather, frame)
    reference = drift.reference_sample(frame.filter(pl.col(PERIOD) < "2015-01"), rows=5000)
    july = frame.filter(pl.col(PERIOD) == "2015-07")
    shifted = july.with_columns(pl.col("prediction") + 25, weather=pl.lit("snow"))
    summary, _ = drift.drift_report(reference, shifted, features, categorical=tuple(weather.spec.categorical))
    assert summary.prediction_drift["drifted"] is True and summary.prediction_drift["column"] == "prediction"
    assert "weather" in summary.drifted_features
    assert summary.per_feature["location"]["type"] == "cat"


@pytest.fixture(scope="module")
def storm(flights) -> pl.DataFrame:
    """May 2013 as a storm month: every delay 45 minutes longer, every distance 1.6 times longer."""
    late = [pl.when(pl.col("month") == 5).then(pl.col(c) + 45).otherwise(pl.col(c)).alias(c)
            for c in ("dep_delay", "arr_delay")]
    farther = pl.when(pl.col("month") == 5).then(pl.col("distance") * 1.6).otherwise(pl.col("distance"))
    frame, _, _ = build(flights, pl.col("month") <= 5, {"flights": [*late, farther.alias("distance")]})
    return frame.filter(pl.col(PERIOD) == "2013-05")


def test_calibrated_drift_passes_a_good_month_and_flags_a_storm(flights, flights_built, storm) -> None:
    """Against the training reference a good May shows most features drifted (seasons): uncalibrated,
    it would be an ERROR like the storm. Calibrated by the drift between Jan-Apr, only the storm is flagged."""
    spec, frame = flights.spec, flights_built[0]
    features, categorical = features_of(flights, frame), tuple(spec.categorical)
    train = frame.filter(pl.col(PERIOD) <= "2013-04")
    calibration = calibrate_drift(train, features, spec.monitoring.drift_warn_share,
                                  spec.monitoring.drift_error_share, categorical, sample_rows=5000)
    assert sorted(calibration.shares) == ["2013-01", "2013-02", "2013-03", "2013-04"]
    reference = drift.reference_sample(train, rows=5000)
    good, _ = drift.drift_report(reference, frame.filter(pl.col(PERIOD) == "2013-05"), features,
                                 current_rows=5000, categorical=categorical)
    shifted, _ = drift.drift_report(reference, storm, features, current_rows=5000, categorical=categorical)
    assert good.share_drifted > spec.monitoring.drift_error_share
    passed, flagged = judge_drift(good, calibration), judge_drift(shifted, calibration)
    assert passed.passed, passed.message
    assert not flagged.passed and flagged.figures["share_unusual"] > calibration.warn_at, flagged.message
    unusual = calibration.unusual(shifted)
    assert "distance" in unusual and "route_arr_delay_mean_7d" in unusual and "distance" not in calibration.unusual(good)
    assert calibration.warn_at >= spec.monitoring.drift_warn_share and calibration.error_at >= calibration.warn_at
    text = drift.drift_markdown(good, calibration.describe())
    assert "calibrated on 4 training periods" in text and "declared floor" in text
    assert json.dumps(calibration.as_dict())


def test_without_two_training_periods_the_declared_thresholds_apply(weather, weather_built) -> None:
    frame = weather_built[0].filter(pl.col(PERIOD) == "2013-01")
    features = features_of(weather, frame)
    calibration = calibrate_drift(frame, features, 0.3, 0.5)
    assert (calibration.warn_at, calibration.error_at, calibration.shares) == (0.3, 0.5, {})
    assert "no calibration" in calibration.describe()


# ---------------------------------------------------------------- skew


@pytest.mark.parametrize("name", ["flights", "weather"])
def test_served_features_equal_their_offline_recomputation(tmp_path, request, name) -> None:
    """The log of rows whose features are the offline ones shows no skew; one perturbed feature shows its rate."""
    project = request.getfixturevalue(name)
    frame, views, _ = request.getfixturevalue(f"{name}_built")
    period, bounds = ("2013-02", FEBRUARY) if name == "flights" else \
        ("2014-02", (datetime(2014, 2, 1, tzinfo=UTC), datetime(2014, 3, 1, tzinfo=UTC)))
    rows = frame.filter(pl.col(PERIOD) == period)
    rows = rows.filter(by_hash(10)) if name == "flights" else rows
    table = served(tmp_path, project, rows, bounds, period)
    offline = skew.offline_for_served(table, project.spec, views, offline_features)
    features = [*features_of(project, table), PREDICTION_TIME]
    report = skew.skew_report(table, offline, skew.SERVED_KEYS, features)
    assert report["feature"].to_list() == features and (report["mismatches"] == 0).all(), \
        report.filter(pl.col("mismatches") > 0)
    assert report.row(0, named=True)["serving_unmatched"] == 0
    assert judge_skew(report, project.spec.monitoring).passed
    column = "temp" if name == "flights" else "wx_temp_max_mean_3d"
    perturbed = pl.int_range(pl.len()) % 10 == 0
    wobbly = table.with_columns(pl.when(perturbed).then(pl.col(column) + 1.0).otherwise(pl.col(column)).alias(column),
                                *[(pl.col(c) * (1 + 1e-12)).alias(c) for c in features_of(project, table)
                                  if c != column and table.schema[c] == pl.Float64])
    rates = dict(skew.skew_report(wobbly, offline, skew.SERVED_KEYS, features).select("feature", "mismatch_rate")
                 .iter_rows())
    expected = table.filter(perturbed & pl.col(column).is_not_null()).height / table.height
    assert rates[column] == pytest.approx(expected) and expected > 0.05
    assert all(rate == 0 for feature, rate in rates.items() if feature != column)
    verdict = judge_skew(skew.skew_report(wobbly, offline, skew.SERVED_KEYS, features), project.spec.monitoring)
    assert not verdict.passed and column in verdict.message


def test_skew_rules_for_missing_values_text_and_one_sided_rows(flights, flights_built) -> None:
    rows = flights_built[0].filter(pl.col("wind_gust").is_not_null() & pl.col("manufacturer").is_not_null()).head(4)
    keyed = rows.with_columns(request_id=pl.format("r{}", pl.int_range(pl.len())), instance=pl.lit(0))
    index = pl.int_range(pl.len())
    serving = keyed.with_columns(wind_gust=pl.when(index == 2).then(pl.col("wind_gust")),
                                 manufacturer=pl.when(index == 1).then(pl.lit("x")).otherwise(pl.col("manufacturer")))
    offline = keyed.with_columns(wind_gust=pl.when(index > 0).then(pl.col("wind_gust"))).head(3)
    report = skew.skew_report(serving, offline, skew.SERVED_KEYS, ["wind_gust", "manufacturer"])
    gust, maker = report.rows(named=True)
    assert (gust["mismatches"], gust["one_side_missing"]) == (1, 1)
    assert (maker["mismatches"], maker["kind"], maker["serving_unmatched"]) == (1, "text", 1)
    with pytest.raises(ValueError, match="share their keys"):
        skew.skew_report(serving, pl.concat([offline, offline.head(1)]), skew.SERVED_KEYS, ["wind_gust"])


# ---------------------------------------------------------------- live performance


@pytest.fixture(scope="module")
def february(flights_built) -> pl.DataFrame:
    return flights_built[0].filter(pl.col(PERIOD) == "2013-02").filter(by_hash(4))


def test_live_binary_performance_matches_the_offline_metrics_code(tmp_path, flights, february) -> None:
    spec = flights.spec
    table = served(tmp_path, flights, february, FEBRUARY, "2013-02",
                   shadow={"rows": february.head(500), "version": "2"})
    arrived = february.filter(~by_hash(5, seed=4))
    truth = period_labels(arrived, spec, *FEBRUARY)
    joined = performance.join_ground_truth(table, truth, list(spec.examples.id), spec.label.name)
    assert joined.height == table.height
    offline = {"auc": 0.70, "log_loss": 0.50, "rows": 9999.0}
    result = performance.live_performance(joined, spec, offline)
    labelled = arrived.filter(pl.col("scheduled_departure").is_between(*FEBRUARY, closed="left"))
    expected = compute_metrics("binary", labelled["is_delayed"].to_numpy(), labelled["probability"].to_numpy(), 0.5)
    assert result["overall"] == pytest.approx(expected)
    assert result["coverage"]["shadow_rows_excluded"] == 500
    assert result["coverage"]["labelled"] == labelled.height and sum(r["rows"] for r in result["calibration"]) == \
        labelled.height
    for column in ("carrier", "origin", "distance_band"):
        assert sum(r["rows"] for r in result["by_slice"] if r["slice"] == column) == labelled.height
    assert [r["value"] for r in result["by_period"]] == ["2013-02"]
    auc = result["deltas"]["auc"]
    assert auc["worse_by"] == pytest.approx(0.70 - expected["auc"])
    verdict = judge_performance(result, spec)
    assert verdict.passed == (0.70 - expected["auc"] <= spec.monitoring.metric_drop_warn)
    assert "auc drop vs offline" in verdict.message and "| auc | 0.7000 |" in performance.performance_markdown(result)


def test_live_regression_performance_and_a_relative_rise_of_rmse(tmp_path, weather, weather_built) -> None:
    spec, rows = weather.spec, weather_built[0].filter(pl.col(PERIOD) == "2014-02")
    bounds = (datetime(2014, 2, 1, tzinfo=UTC), datetime(2014, 3, 1, tzinfo=UTC))
    truth = period_labels(rows, spec, *bounds)
    joined = performance.join_ground_truth(served(tmp_path, weather, rows, bounds, "2014-02"), truth,
                                           list(spec.examples.id), spec.label.name)
    live = compute_metrics("regression", rows["temp_max_today"].to_numpy(), rows["prediction"].to_numpy(), 0.5)
    same = performance.live_performance(joined, spec, {"rmse": live["rmse"], "mae": live["mae"]})
    assert same["overall"] == pytest.approx(live) and "calibration" not in same
    assert {r["value"] for r in same["by_slice"] if r["slice"] == "location"} == {"Seattle", "New York"}
    assert judge_performance(same, spec).passed
    worse = performance.live_performance(joined, spec, {"rmse": live["rmse"] / 1.05})
    verdict = judge_performance(worse, spec)
    assert verdict.severity == "WARN" and not verdict.passed and "rmse relative rise" in verdict.message
    assert verdict.figures["relative"] == 1.0
    assert judge_performance(performance.live_performance(joined, spec, {"rmse": live["rmse"] / 1.5}), spec) \
        .severity == "ERROR"
    assert "| rmse |" in performance.performance_markdown(worse)


def test_conflicting_labels_are_refused(weather, weather_built) -> None:
    rows = weather_built[0].filter(pl.col(PERIOD) == "2014-02")
    spec = weather.spec
    truth = rows.select(*spec.examples.id, spec.label.name)
    serving = rows.select(*spec.examples.id, "prediction")
    flipped = truth.head(1).with_columns(pl.col(spec.label.name) + 1)
    with pytest.raises(ValueError, match="conflicting labels"):
        performance.join_ground_truth(serving, pl.concat([truth, flipped]), list(spec.examples.id), spec.label.name)


# ---------------------------------------------------------------- A/B test


def _informed(noise: float = 0.25) -> pl.Expr:
    """A challenger that has seen the outcome: clearly better ranking and calibration."""
    jitter = pl.col("flight").hash(seed=2) % 1000 / 1000
    return (0.15 + 0.5 * pl.col("is_delayed") + noise * jitter).clip(0, 1)


def _joined(tmp: Path, project: LoadedProject, rows: pl.DataFrame, bounds, period: str, **arms) -> pl.DataFrame:
    spec = project.spec
    table = served(tmp, project, rows, bounds, period, **arms)
    truth = period_labels(rows, spec, *bounds)
    return performance.join_ground_truth(table, truth, list(spec.examples.id), spec.label.name)


def test_ab_split_design_promotes_a_clearly_better_challenger(tmp_path, flights, february) -> None:
    to_challenger = by_hash(2, seed=3)
    champion, challenger = february.filter(~to_challenger), february.filter(to_challenger)
    folder = tmp_path / "prediction_log" / "date=2013-02-01"
    write_log(folder, flights, champion)
    write_log(folder, flights, challenger, arm="challenger", version="2", score=_informed(), start=10**6)
    table = flatten_log(read_prediction_log(tmp_path), flights.spec, *FEBRUARY, "2013-02")
    truth = period_labels(february, flights.spec, *FEBRUARY)
    report = ab_test.ab_test_report(performance.join_ground_truth(table, truth, list(flights.spec.examples.id),
                                                                  "is_delayed"), flights.spec)
    assert report["design"] == "split" and report["recommendation"] == "promote challenger"
    assert report["difference"]["metric"] == "auc" and report["difference"]["ci_low"] > 0
    assert report["loss_test"]["test"] == "Welch t-test" and report["loss_test"]["ci_high"] < 0
    assert report["arms"]["challenger"]["model_versions"] == ["2"]
    assert "promote challenger" in ab_test.ab_markdown(report)


def test_ab_shadow_rows_pair_up_by_request_and_example_id(tmp_path, flights, february) -> None:
    rows = february.head(2000)
    joined = _joined(tmp_path, flights, rows, FEBRUARY, "2013-02",
                     shadow={"version": "2", "score": _informed()})
    report = ab_test.ab_test_report(joined, flights.spec, metric="log_loss")
    assert report["design"] == "paired (shadow)" and report["recommendation"] == "promote challenger"
    assert report["loss_test"]["test"] == "paired t-test"
    twin = _joined(tmp_path / "twin", flights, rows, FEBRUARY, "2013-02", shadow={"version": "2"})
    identical = ab_test.ab_test_report(twin, flights.spec)
    assert identical["recommendation"] == "keep champion" and identical["difference"]["p_value"] == 1.0


def test_ab_for_a_regression_project_compares_rmse(tmp_path, weather, weather_built) -> None:
    spec = weather.spec
    rows = weather_built[0].filter(pl.col(PERIOD).str.starts_with("2014"))
    bounds = (datetime(2014, 1, 1, tzinfo=UTC), datetime(2015, 1, 1, tzinfo=UTC))
    better = (0.5 * pl.col("prediction") + 0.5 * pl.col("temp_max_today")).alias("x")
    joined = _joined(tmp_path, weather, rows, bounds, "2014", shadow={"version": "2", "score": better})
    report = ab_test.ab_test_report(joined, spec, min_rows=200)
    assert report["difference"]["metric"] == "rmse" and report["difference"]["ci_high"] < 0
    assert report["recommendation"] == "promote challenger" and report["loss_test"]["loss"] == "squared error"
    few = ab_test.ab_test_report(joined.head(300), spec, min_rows=500)
    assert re.fullmatch(r"inconclusive \(need [\d,]+ more labelled rows\)", few["recommendation"])


@pytest.mark.parametrize("problem", ["binary", "regression"])
def test_bootstrap_metrics_equal_the_metrics_of_the_resampled_rows(problem, february, weather_built) -> None:
    if problem == "binary":
        truth, scores = february["is_delayed"].to_numpy()[:3000], february["probability"].round(2).to_numpy()[:3000]
    else:
        frame = weather_built[0]
        truth, scores = frame["temp_max_today"].to_numpy(), frame["prediction"].to_numpy()
    arm = ab_test.scored(truth.astype(float), scores, problem, 0.5)
    weights = ab_test.resample_counts(np.random.default_rng(0), 3, truth.size)
    for metric in ab_test.BOOTSTRAP_METRICS[problem]:
        vectorised = ab_test.weighted_metric(metric, weights, arm)
        for draw, counts in enumerate(weights.astype(int)):
            expected = compute_metrics(problem, np.repeat(truth, counts), np.repeat(scores, counts), 0.5)[metric]
            assert vectorised[draw] == pytest.approx(expected, rel=1e-9), metric


# ---------------------------------------------------------------- replay plan


def test_replay_pushes_each_event_once_before_the_first_request_that_may_see_it(tmp_path, weather,
                                                                                 weather_built) -> None:
    spec = weather.spec
    frame, _, prepared = weather_built
    examples = frame.filter(pl.col(PERIOD) == "2014-02")
    plan = replay.replay_plan(spec, examples, prepared)
    assert replay.pushed_sources(spec) == ["weather"]
    assert len(plan) == 28 and plan[0].events == {} and sum(s.requests.height for s in plan) == 56
    for before, step in zip(plan, plan[1:], strict=False):
        known = step.events["weather"]["known_at"]
        assert ((known > before.at) & (known <= step.at)).all() and step.events["weather"].height == 2
    store = OnlineStore(tmp_path / "online.db")
    rows = replay.json_ready(plan[1].events["weather"]).to_dicts()
    assert store.push(spec, "weather", rows).accepted == 2
    assert store.push(spec, "weather", rows).duplicates == 2
    sent = replay.instances(spec, plan[0].requests)
    assert sent[0].keys() == {"location", "day_start"} and sent[0]["day_start"].endswith("+00:00")


def test_replay_plan_of_a_project_with_two_periodic_sources(tmp_path, flights, flights_built) -> None:
    """Slices of an hour; a flight departed before the first slice but not yet arrived goes out first."""
    spec = flights.spec
    frame, _, prepared = flights_built
    examples = frame.filter(pl.col(PERIOD) == "2013-02").filter(pl.col("scheduled_departure").dt.day() <= 2)
    plan = replay.replay_plan(spec, examples, prepared, step=timedelta(hours=1))
    assert set(replay.pushed_sources(spec)) == {"flights", "weather"}
    assert sum(s.requests.height for s in plan) == examples.height
    known_at = {s: [spec.feature_views[v].known_at for v in replay.source_views(spec, s)] for s in ("flights", "weather")}
    in_the_air = plan[0].events["flights"]
    assert in_the_air.height > 0 and "weather" not in plan[0].events
    assert (in_the_air.select(pl.max_horizontal(known_at["flights"])).to_series() > plan[0].at).all()
    rows = replay.json_ready(in_the_air).to_dicts()
    assert OnlineStore(tmp_path / "online.db").push(spec, "flights", rows).accepted == len(rows)
    for before, step in zip(plan, plan[1:], strict=False):
        assert (step.requests[PREDICTION_TIME] >= step.at).all()
        for source, events in step.events.items():
            first = events.select(pl.min_horizontal(known_at[source])).to_series()
            assert ((first > before.at) & (first <= step.at)).all()


def test_multiclass_live_metrics_and_ab_use_the_class_probabilities(weather, weather_built) -> None:
    """The weather data as a three-class problem (cold, mild, warm day): metrics from the probability struct."""
    classes = ["cold", "mild", "warm"]
    spec = weather.spec.model_copy(update={"problem": "multiclass", "classes": classes, "metric": "log_loss"})
    rows = weather_built[0].filter(pl.col(PERIOD).str.starts_with("2014"))

    def banded(column: str) -> pl.Expr:
        value = pl.col(column)
        return pl.when(value < 10).then(pl.lit("cold")).when(value < 22).then(pl.lit("mild")).otherwise(pl.lit("warm"))

    def arm(name: str, guess: pl.Expr) -> pl.DataFrame:
        probabilities = pl.struct([pl.when(guess == c).then(0.6).otherwise(0.2).alias(c) for c in classes])
        return rows.select(*spec.examples.id, banded("temp_max_today").alias("temp_max_today"),
                           guess.alias("prediction"), probabilities.alias("probabilities"), pl.lit(name).alias("arm"),
                           pl.lit(name).alias("model_version"),
                           pl.format("r{}", pl.int_range(pl.len())).alias("request_id"))

    joined = pl.concat([arm("champion", banded("prediction")), arm("shadow", banded("temp_max_today"))])
    result = performance.live_performance(joined, spec, {"log_loss": 0.5, "accuracy": 0.9})
    truth = rows.select(banded("temp_max_today").replace_strict(classes, [0, 1, 2], return_dtype=pl.Int64))
    guess = rows.select(banded("prediction")).to_series()
    matrix = np.column_stack([(guess == c).cast(pl.Float64).to_numpy() * 0.4 + 0.2 for c in classes])
    expected = compute_metrics("multiclass", truth.to_series().to_numpy(), matrix, 0.5, classes)
    assert result["overall"] == pytest.approx(expected) and result["problem"] == "multiclass"
    assert result["coverage"]["shadow_rows_excluded"] == rows.height
    verdict = judge_performance(result, spec)
    assert verdict.figures["offline_log_loss"] == 0.5 and "log_loss relative rise" in verdict.message
    report = ab_test.ab_test_report(joined, spec)
    assert report["design"] == "paired (shadow)" and report["difference"]["metric"] == "log_loss"
    assert report["recommendation"] == "promote challenger" and report["arms"]["challenger"]["accuracy"] == 1.0
