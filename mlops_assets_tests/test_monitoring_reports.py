"""Monitoring reports (drift, skew, live performance, A/B) on a real three-month training set.

The training set is built by the platform's own transforms and point-in-time join; a served log is
derived from it (one row per request, as the prediction log flattens), so every test sees the
real feature distributions, nulls and dtypes.
"""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from mlops_assets.evaluation.metrics import binary_metrics
from mlops_assets.features import transforms
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.monitoring import ab_test, drift, performance, skew
from mlops_assets.settings import DATA_DIR, TASKS_DIR
from mlops_assets.task import SplitConfig, load_task
from mlops_assets.training.dataset import flight_training_set, model_features

MONTHS = 3
KEYS = ["carrier", "flight", "origin", "scheduled_departure"]
REQUEST = ["carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure", "distance"]


def _views(events: pl.DataFrame, weather: pl.DataFrame) -> list:
    """The six views computed as mlops_assets/features/assets.py computes them."""
    frames = {
        "weather_features": transforms.weather_features(weather),
        "plane_features": transforms.plane_features(pl.read_parquet(DATA_DIR / "planes.parquet")),
        **transforms.delay_views(events),
    }
    return [(FEATURE_VIEWS[name], frame) for name, frame in frames.items()]


def _offline_score() -> pl.Expr:
    """A fixed logistic score of real features: a stand-in for the offline model's probability."""
    z = (-1.2 + 4.0 * (pl.col("origin_dep_delayed_share_3h").fill_null(0.2) - 0.2)
         + 3.0 * (pl.col("route_delayed_share_7d").fill_null(0.2) - 0.2) + 0.08 * (pl.col("sched_hour") - 13))
    return (1.0 / (1.0 + (-z).exp())).alias("probability")


@pytest.fixture(scope="module")
def built() -> tuple[pl.DataFrame, list[str]]:
    """Three real months as a training set (with a score column), and the model's feature names."""
    task = load_task(TASKS_DIR / "flights.yaml")
    task = task.model_copy(update={"split": SplitConfig(test_months=1, validation_months=1)})
    flights = pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") <= MONTHS).collect()
    weather = pl.scan_parquet(DATA_DIR / "weather.parquet").filter(pl.col("month") <= MONTHS).collect()
    events = transforms.flight_events(flights, timedelta(hours=task.prediction_lead_hours))
    views = _views(events, weather)
    frame = flight_training_set(events, views, task)
    return frame.with_columns(_offline_score()), model_features(task, [view for view, _ in views])


@pytest.fixture(scope="module")
def training_set(built: tuple[pl.DataFrame, list[str]]) -> pl.DataFrame:
    return built[0]


@pytest.fixture(scope="module")
def features(built: tuple[pl.DataFrame, list[str]]) -> list[str]:
    return built[1]


def served(rows: pl.DataFrame, features: list[str], arm: str = "champion", version: str = "1",
           probability: pl.Expr | None = None) -> pl.DataFrame:
    """Rows as the prediction log flattens them: one row per request, features as served."""
    return rows.select(
        pl.format("req-{}", pl.int_range(pl.len())).alias("request_id"),
        (pl.col("prediction_time") + pl.duration(seconds=3)).alias("timestamp"), "prediction_time",
        *REQUEST, *[f for f in features if f not in REQUEST],
        (pl.col("probability") if probability is None else probability).alias("probability"),
        pl.lit(version).alias("model_version"), pl.lit(arm).alias("arm"),
    )


def truth_of(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.select(*KEYS, "is_delayed")


def every_nth(n: int, remainder: int = 0) -> pl.Expr:
    """A deterministic, order-free row subset: by a hash of the keys."""
    return (pl.struct(KEYS).hash(seed=1) % n) == remainder


# ---------------------------------------------------------------- drift


def test_drift_on_held_out_rows_of_the_same_months_flags_nothing(training_set, features) -> None:
    """Held-out rows of the same months are the same distribution: neither features nor prediction drift."""
    held_out = every_nth(3)
    reference = drift.reference_sample(training_set.filter(~held_out), rows=20_000)
    current = training_set.filter(held_out)
    summary, html = drift.drift_report(reference, current, features, current_rows=15_000)
    assert summary.share_drifted <= 0.05, summary.drifted_features
    assert summary.prediction_drift["drifted"] is False
    assert set(summary.per_feature) == set(features)
    assert summary.reference_rows == 20_000
    assert summary.reference_source_rows == training_set.filter(~held_out).height
    assert summary.current_rows == 15_000 and summary.current_source_rows == current.height
    assert summary.sampled
    assert any("sample (seed 7)" in note and "same rows for every report" in note for note in summary.notes)
    assert "<html" in html and "Drift per column" in html
    text = drift.drift_markdown(summary)
    assert "20,000 reference rows" in text and "15,000 current" in text


def test_drift_flags_the_features_that_were_shifted(training_set, features) -> None:
    """+15 degrees on temp, 30% of carriers remapped, pressure lost: exactly those three are flagged."""
    held_out = every_nth(3)
    reference = training_set.filter(~held_out).drop("probability")
    carriers = sorted(training_set.get_column("carrier").unique().to_list())
    rotation = dict(zip(carriers, [*carriers[1:], carriers[0]], strict=True))
    remapped = every_nth(10, 1) | every_nth(10, 2) | every_nth(10, 3)
    current = training_set.filter(held_out).with_columns(
        temp=pl.col("temp") + 15,
        carrier=pl.when(remapped).then(pl.col("carrier").replace(rotation)).otherwise(pl.col("carrier")),
        pressure=pl.lit(None, dtype=pl.Float64),
    )
    summary, _ = drift.drift_report(reference, current, features)
    assert set(summary.drifted_features) == {"temp", "carrier", "pressure"}
    assert summary.per_feature["carrier"]["stattest"] == "Jensen-Shannon distance"
    assert summary.per_feature["pressure"]["stattest"] == "no values on one side"
    assert summary.per_feature["pressure"]["null_share_current"] == 1.0
    assert summary.per_feature["temp"]["score"] > 10 * summary.per_feature["dewp"]["score"]
    assert summary.prediction_drift["drifted"] is None and "skipped" in summary.prediction_drift
    assert not summary.sampled and summary.reference_rows == reference.height
    text = drift.drift_markdown(summary)
    assert "prediction drift skipped" in text and "more missing values than in training: pressure" in text


# ---------------------------------------------------------------- skew


@pytest.fixture(scope="module")
def february(training_set: pl.DataFrame) -> pl.DataFrame:
    return training_set.filter(pl.col("month") == "2013-02")


def test_skew_of_identical_values_is_zero(training_set, february, features) -> None:
    report = skew.skew_report(served(february, features), training_set, KEYS, features)
    assert report.get_column("feature").to_list() == features
    assert (report.get_column("mismatches") == 0).all() and (report.get_column("mismatch_rate") == 0).all()
    first = report.row(0, named=True)
    assert first["rows_compared"] == february.height and first["serving_unmatched"] == 0
    assert first["offline_unmatched"] == training_set.height - february.height
    assert "0 of 48 features differ" in skew.skew_markdown(report)


def test_skew_finds_the_one_perturbed_feature(training_set, february, features) -> None:
    """temp off by 1 degree on 10% of rows: rate ~0.1; a 1e-9 relative wobble elsewhere is tolerated."""
    perturbed = every_nth(10)
    serving = served(february, features).with_columns(
        temp=pl.when(perturbed).then(pl.col("temp") + 1.0).otherwise(pl.col("temp")),
        pressure=pl.col("pressure") * (1 + 1e-9),
    )
    report = skew.skew_report(serving, training_set, KEYS, features)
    rates = dict(report.select("feature", "mismatch_rate").iter_rows())
    expected = february.filter(perturbed & pl.col("temp").is_not_null()).height / february.height
    assert rates["temp"] == pytest.approx(expected) and 0.08 < rates["temp"] < 0.12
    assert all(rate == 0 for name, rate in rates.items() if name != "temp")
    assert report.filter(pl.col("feature") == "temp").get_column("max_abs_diff").item() == pytest.approx(1.0)
    assert "| temp |" in skew.skew_markdown(report)


def test_skew_rules_for_missing_values_and_text(february, features) -> None:
    """Both missing matches, one missing does not; text is compared exactly."""
    rows = february.filter(pl.col("wind_gust").is_not_null() & pl.col("manufacturer").is_not_null()).head(4)
    index = pl.int_range(pl.len())
    serving = served(rows, features).with_columns(
        wind_gust=pl.when(index == 2).then(pl.col("wind_gust")),
        manufacturer=pl.when(index == 1).then(pl.lit("x")).otherwise(pl.col("manufacturer")),
    )
    offline = rows.with_columns(wind_gust=pl.when(index > 0).then(pl.col("wind_gust")))
    report = skew.skew_report(serving, offline, KEYS, ["wind_gust", "manufacturer"])
    gust, maker = report.rows(named=True)
    assert (gust["mismatches"], gust["one_side_missing"]) == (2, 2)
    assert (maker["mismatches"], maker["one_side_missing"], maker["kind"]) == (1, 0, "text")


def test_skew_reports_rows_missing_on_either_side(february, features) -> None:
    """Unmatched rows are counted on both sides, never dropped silently."""
    not_served, not_stored = every_nth(20, 1), every_nth(20, 0)
    serving = served(february.filter(~not_served), features)
    unknown = serving.head(7).with_columns(flight=pl.col("flight") + 100_000)
    offline = february.filter(~not_stored)
    report = skew.skew_report(pl.concat([serving, unknown]), offline, KEYS, features)
    first = report.row(0, named=True)
    assert first["serving_unmatched"] == february.filter(not_stored).height + 7
    assert first["offline_unmatched"] == february.filter(not_served).height > 0
    assert first["rows_compared"] == february.filter(~not_served & ~not_stored).height
    assert f"served rows with no offline row: {first['serving_unmatched']:,}" in skew.skew_markdown(report)
    with pytest.raises(ValueError, match="share their keys"):
        skew.skew_report(serving, pl.concat([offline, offline.head(3)]), KEYS, features)


# ---------------------------------------------------------------- live performance


def test_labels_join_once_per_prediction_with_coverage(february, features) -> None:
    serving = pl.concat([served(february, features), served(february, features, arm="shadow", version="2")])
    arrived = february.filter(~every_nth(4))
    again = truth_of(arrived.head(50))
    truth = pl.concat([truth_of(arrived), again]).sample(fraction=1.0, shuffle=True, seed=3)
    joined = performance.join_ground_truth(serving, truth, KEYS)
    assert joined.height == serving.height
    assert joined.get_column("request_id").to_list() == serving.get_column("request_id").to_list()
    coverage = performance.label_coverage(joined)
    assert coverage["labelled"] == 2 * arrived.height
    assert coverage["coverage"] == pytest.approx(arrived.height / february.height)
    assert coverage["predictions_with_repeated_label"] == 2 * 50
    flipped = truth_of(arrived.head(1)).with_columns(is_delayed=1 - pl.col("is_delayed"))
    conflicting = pl.concat([truth, flipped])
    with pytest.raises(ValueError, match="conflicting labels"):
        performance.join_ground_truth(serving, conflicting, KEYS)


def test_live_performance_matches_offline_metrics_code(training_set, features) -> None:
    rows = training_set.filter(pl.col("month") >= "2013-02")
    shadow = served(rows.head(1000), features, arm="shadow", version="2")
    refused = served(rows.head(5), features).with_columns(probability=pl.lit(None, dtype=pl.Float64))
    serving = pl.concat([served(rows, features), shadow, refused])
    joined = performance.join_ground_truth(serving, truth_of(rows.filter(~every_nth(5))), KEYS)
    offline = {"auc": 0.70, "log_loss": 0.50, "rows": 9999.0, "positive_rate": 0.2}
    result = performance.live_performance(joined, ["carrier", "origin", "distance_band"], 0.5, offline)
    labelled = rows.filter(~every_nth(5))
    expected = binary_metrics(labelled["is_delayed"].to_numpy(), labelled["probability"].to_numpy(), 0.5)
    assert result["overall"] == pytest.approx(expected)
    coverage = result["coverage"]
    assert coverage["shadow_rows_excluded"] == 1000 and coverage["unscored_rows_excluded"] == 5
    assert sum(row["rows"] for row in result["calibration"]) == labelled.height
    assert len(result["calibration"]) == 10
    months = labelled.get_column("prediction_time").dt.strftime("%Y-%m").unique().sort().to_list()
    assert [row["value"] for row in result["by_month"]] == months and months[:2] == ["2013-02", "2013-03"]
    assert sum(row["rows"] for row in result["by_month"]) == labelled.height
    for column in ("carrier", "origin", "distance_band"):
        assert sum(row["rows"] for row in result["by_slice"] if row["slice"] == column) == labelled.height
    auc = result["deltas"]["auc"]
    assert auc["delta"] == pytest.approx(expected["auc"] - 0.70)
    assert auc["worse_by"] == pytest.approx(0.70 - expected["auc"])
    assert auc["degraded"] and result["deltas"]["log_loss"]["degraded"] == (expected["log_loss"] > 0.51)
    assert result["deltas"]["positive_rate"]["worse_by"] is None and "rows" not in result["deltas"]
    assert "| auc | 0.7000 |" in performance.performance_markdown(result)


# ---------------------------------------------------------------- A/B test


def _truth_informed(noise: float = 0.25) -> pl.Expr:
    """A challenger that has seen the outcome: clearly better ranking and calibration."""
    jitter = pl.col("flight").hash(seed=2) % 1000 / 1000
    return (0.15 + 0.5 * pl.col("is_delayed") + noise * jitter).clip(0, 1)


def _split_experiment(rows: pl.DataFrame, features: list[str], challenger: pl.Expr | None) -> pl.DataFrame:
    to_challenger = every_nth(2)
    serving = pl.concat([
        served(rows.filter(~to_challenger), features),
        served(rows.filter(to_challenger), features, arm="challenger", version="2", probability=challenger),
    ])
    return performance.join_ground_truth(serving, truth_of(rows), KEYS)


def test_bootstrap_metrics_equal_binary_metrics_on_the_resampled_rows(february) -> None:
    """Each vectorised resample metric equals binary_metrics on the rows that resample actually drew."""
    rows = february.head(3000).with_columns(pl.col("probability").round(2))  # rounding makes ties
    arm = ab_test.scored(rows)
    weights = ab_test.resample_counts(np.random.default_rng(0), 3, rows.height)
    truth, prob = rows.get_column("is_delayed").to_numpy(), rows.get_column("probability").to_numpy()
    for metric in ab_test.BOOTSTRAP_METRICS:
        vectorised = ab_test.weighted_metric(metric, weights, arm, 0.5)
        for draw, counts in enumerate(weights.astype(int)):
            expected = binary_metrics(np.repeat(truth, counts), np.repeat(prob, counts), 0.5)[metric]
            assert vectorised[draw] == pytest.approx(expected, rel=1e-12), metric


def test_ab_promotes_a_clearly_better_challenger(february, features) -> None:
    report = ab_test.ab_test_report(_split_experiment(february, features, _truth_informed()))
    assert report["design"] == "split"
    assert report["recommendation"] == "promote challenger"
    assert report["difference"]["ci_low"] > 0 and report["difference"]["p_value"] < 0.05
    assert report["log_loss_test"]["test"] == "Welch t-test" and report["log_loss_test"]["ci_high"] < 0
    assert report["arms"]["challenger"]["model_versions"] == ["2"]
    assert "promote challenger" in ab_test.ab_markdown(report)


def test_ab_shadow_rows_pair_up(february, features) -> None:
    rows = february.head(4000)
    champion = served(rows, features)
    better = served(rows, features, arm="shadow", version="2", probability=_truth_informed())
    joined = performance.join_ground_truth(pl.concat([champion, better]), truth_of(rows), KEYS)
    report = ab_test.ab_test_report(joined, metric="log_loss")
    assert report["design"] == "paired (shadow)" and report["arms"]["champion"]["rows"] == rows.height
    assert report["recommendation"] == "promote challenger" and report["difference"]["ci_high"] < 0
    assert report["log_loss_test"]["test"] == "paired t-test"
    twin = served(rows, features, arm="shadow", version="2")
    same = performance.join_ground_truth(pl.concat([champion, twin]), truth_of(rows), KEYS)
    identical = ab_test.ab_test_report(same)
    assert identical["recommendation"] == "keep champion"
    assert identical["difference"]["value"] == 0 and identical["difference"]["p_value"] == 1.0


def test_ab_a_promising_but_unproven_challenger_is_inconclusive(february, features) -> None:
    """Slightly better on average but noisy: the CI straddles 0, so the report asks for more rows."""
    noise = np.random.default_rng(5).uniform(-0.5, 0.5, 1000)
    rows = february.head(1000).with_columns(noise=pl.Series(noise))
    nudged = (pl.col("probability") + 0.1 * pl.col("noise") + 0.005 * (pl.col("is_delayed") - 0.5)).clip(0, 1)
    shadow = served(rows, features, arm="shadow", version="2", probability=nudged)
    log = pl.concat([served(rows, features), shadow])
    report = ab_test.ab_test_report(performance.join_ground_truth(log, truth_of(rows), KEYS))
    difference = report["difference"]
    assert difference["ci_low"] < 0 < difference["value"] < difference["ci_high"]
    assert re.fullmatch(r"inconclusive \(need [\d,]+ more labelled rows\)", report["recommendation"])


def test_ab_identical_split_arms_are_not_promoted(february, features) -> None:
    report = ab_test.ab_test_report(_split_experiment(february, features, None))
    assert report["recommendation"] != "promote challenger"
    assert report["difference"]["ci_low"] < 0 < report["difference"]["ci_high"]


def test_ab_with_too_few_labelled_rows_is_inconclusive(february, features) -> None:
    joined = _split_experiment(february.head(400), features, _truth_informed())
    report = ab_test.ab_test_report(joined, min_rows=500)
    champion, challenger = report["arms"]["champion"]["rows"], report["arms"]["challenger"]["rows"]
    assert champion + challenger == 400
    assert report["recommendation"] == f"inconclusive (need {1000 - 400:,} more labelled rows)"
