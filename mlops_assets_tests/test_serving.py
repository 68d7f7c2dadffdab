"""The prediction service built from a project file, over real HTTP (TestClient), a real SQLite MLflow
registry and a real online store: flights (binary), weather (regression) and a multiclass twin."""

from __future__ import annotations

import gc
import math
import shutil
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl
import pytest
from fastapi.testclient import TestClient

from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.request_features import calendar_columns, calendar_features, calendar_values
from mlops_assets.features.sources import prepare_all
from mlops_assets.project.loading import load_project
from mlops_assets.scoring_model import ScoringPyfunc
from mlops_assets.serving.app import create_app
from mlops_assets.serving.config import ConfigError, from_env
from mlops_assets.serving.experiment import bucket
from mlops_assets.serving.models import load_version, settle_heap
from mlops_assets.serving.predlog import read_prediction_log
from mlops_assets.settings import DATA_DIR
from mlops_assets_tests.serving_fixtures import (
    CLASSES,
    FLIGHTS,
    GOOD,
    GOVERNED,
    MALFORMED,
    RAW,
    WEATHER,
    ConcurrentLoad,
    Platform,
    assert_refused,
    batch_arms,
    break_model,
    build_flights,
    build_weather,
    log_lines,
    offline_values,
    same,
    served_records,
    typed,
)

NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def flights_built(registry_root: Path) -> Platform:
    return build_flights(registry_root)


@pytest.fixture(scope="module")
def weather_built(registry_root: Path) -> tuple[Platform, Platform]:
    return build_weather(registry_root)


@pytest.fixture()
def flights(flights_built: Platform) -> Platform:
    """Every test starts with v1 champion and v2 challenger."""
    flights_built.move("champion", "1")
    flights_built.move("challenger", "2")
    return flights_built


@pytest.fixture()
def client(flights: Platform, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(flights.config(tmp_path))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def refusing(flights_built: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the refusal matrices (a refusal changes no state)."""
    with TestClient(create_app(flights_built.config(tmp_path_factory.mktemp("refusals")))) as test_client:
        yield test_client


def test_calendar_features_are_one_definition_on_real_rows_and_dst_days() -> None:
    loaded = load_project(FLIGHTS)
    flights = pl.read_parquet(DATA_DIR / "flights.parquet")
    dst = flights.filter((pl.col("month") == 3) & (pl.col("day") == 10) | (pl.col("month") == 11) & (pl.col("day") == 3))
    raw = pl.concat([flights.sample(150, seed=1), dst.sample(60, seed=3)])
    airports = typed(loaded, "airports", pl.read_parquet(DATA_DIR / "airports.parquet"))
    rows = prepare_all(loaded, {"flights": typed(loaded, "flights", raw), "airports": airports})["flights"]
    frame = calendar_features(loaded.spec, rows.select("scheduled_departure"))
    local = rows.select(pl.col("scheduled_departure").dt.convert_time_zone("America/New_York").dt.replace_time_zone(None))
    assert calendar_features(loaded.spec, local).drop("scheduled_departure").equals(frame.drop("scheduled_departure"))
    requests: list[dict[str, object]] = []
    for row in frame.iter_rows(named=True):
        expected = {k: row[k] for k in loaded.spec.request.calendar}
        aware = row["scheduled_departure"]
        assert calendar_values(loaded.spec, {"scheduled_departure": aware}) == expected
        naive_local = aware.astimezone(NEW_YORK).replace(tzinfo=None)
        assert calendar_values(loaded.spec, {"scheduled_departure": naive_local}) == expected
        requests += [{"scheduled_departure": aware}, {"scheduled_departure": naive_local}, {}]
    columns = calendar_columns(loaded.spec, requests)  # a serving pass's shape: aware, naive, absent
    for name in loaded.spec.request.calendar:
        assert columns[name][0::3] == columns[name][1::3] == frame[name].to_list(), name
        assert columns[name][2::3] == [None] * frame.height, name
    weather = load_project(WEATHER).spec
    days = pl.DataFrame({"day_start": [datetime(2012, 2, 29), datetime(2012, 12, 31), datetime(2015, 3, 8, 7)]})
    for row in calendar_features(weather, days).iter_rows(named=True):
        aware = row["day_start"].replace(tzinfo=UTC)
        assert calendar_values(weather, {"day_start": aware}) == {k: row[k] for k in weather.request.calendar}
    assert calendar_features(weather, days)["day_of_year"].to_list() == [60, 366, 67]


def test_scoring_matrix_equals_the_pandas_path(flights: Platform) -> None:
    model = flights.models["1"]
    rows = flights.served().head(300).to_dicts()
    rows[0]["dest"], rows[1]["manufacturer"], rows[2]["carrier"] = "ZZZ", "NEW MAKER", "zz"
    rows[3]["plane_type"], rows[4]["temp"] = None, None
    frame = pd.DataFrame({f: pd.Categorical([r[f] for r in rows], categories=model.categorical_levels[f])
                          if f in model.categorical_levels else [r[f] for r in rows] for f in model.features})
    frame = frame.astype({f: "float64" for f in model.features if f not in model.categorical_levels})
    matrix = model.matrix(rows)
    assert np.max(np.abs(model.booster.predict(frame) - model.predict_matrix(matrix))) < 1e-12
    assert np.max(np.abs(model.booster.predict(frame, pred_contrib=True) - model.contributions_matrix(matrix))) < 1e-12
    client_frame = pd.DataFrame([{f: r[f] for f in model.features} for r in rows])
    assert np.max(np.abs(ScoringPyfunc(model).predict(None, client_frame) - model.predict_matrix(matrix))) < 1e-12


def test_binary_answer_is_the_training_row_scored(flights: Platform, client: TestClient) -> None:
    instance = flights.requests(1, offset=11)[0]
    response = client.post("/v1/predict", json=instance, headers={"X-Request-ID": "abc-123"})
    body = response.json()
    assert response.status_code == 200 and body["request_id"] == "abc-123" == response.headers["x-request-id"]
    assert body["model"] == {"name": flights.model_name, "version": "1"} and body["arm"] == "champion"
    assert body["decision"] == (body["probability"] >= flights.spec.threshold) and body["threshold"] == 0.5
    offline_row = flights.served().slice(11, 1).to_dicts()[0]
    model = flights.models["1"]
    assert body["probability"] == pytest.approx(model.predict_matrix(model.matrix([offline_row]))[0], abs=1e-9)
    when = datetime.fromisoformat(instance["scheduled_departure"]) - timedelta(hours=2)
    assert datetime.fromisoformat(body["prediction_time"]) == when
    assert set(body["feature_freshness"]) == set(flights.spec.used_views) and body["missing_features"] == []
    assert all(age is None or age >= 0 for age in body["feature_freshness"].values())
    no_tail = client.post("/v1/predict", json={**instance, "tailnum": None}).json()
    assert "plane_features" in no_tail["missing_features"] and no_tail["feature_freshness"]["plane_features"] is None
    unseen = client.post("/v1/predict", json={**instance, "dest": "ZZZ"})
    assert unseen.status_code == 200 and "dest" in unseen.json()["missing_features"]


def test_served_view_features_equal_offline_aggregate_at(flights: Platform, tmp_path: Path) -> None:
    instances = flights.requests(60, offset=0) + flights.requests(40, offset=3000)
    records = served_records(flights.config(tmp_path), instances)
    assert len(records) == len(instances)
    for view in flights.spec.used_views:
        for record, expected in zip(records, offline_values(flights, view, instances), strict=True):
            assert view not in record["missing_features"] or all(v in (None, 0.0) for v in expected.values())
            for name, value in expected.items():
                assert same(record["features"][name], value), (view, name, record["features"][name], value)


def test_a_backdated_request_never_sees_later_values(flights: Platform, tmp_path: Path) -> None:
    early = flights.frame.filter(pl.col("split") == "train", pl.col("scheduled_departure").dt.day() == 20,
                                 pl.col("tailnum").is_not_null())
    instances = flights.requests(20, rows=early)
    config = flights.config(tmp_path)
    records = served_records(config, instances)
    store, missing_somewhere = OnlineStore(config.online_store), set()
    for view in flights.spec.used_views:
        view_spec, stored = flights.spec.feature_views[view], store.read_view(flights.spec, view)
        longest = max([w for a in view_spec.aggregations for w in a.windows] + [view_spec.ttl or timedelta(0)])
        if view_spec.known_at:
            assert stored.frame.filter(pl.col(view_spec.known_at) > datetime(2013, 1, 21, tzinfo=UTC)).height > 0
        for record, expected in zip(records, offline_values(flights, view, instances), strict=True):
            t = datetime.fromisoformat(record["prediction_time"])
            age = record["feature_freshness"][view]
            assert age is None or age >= 0
            if view_spec.known_at and t - longest < stored.horizon:
                assert view in record["missing_features"] and age is None
                assert all(record["features"][n] is None for n in expected)
                missing_somewhere.add(view)
            else:
                assert all(same(record["features"][n], v) for n, v in expected.items())
    assert "route_delay_stats" in missing_somewhere and "weather_features" not in missing_somewhere


def test_a_pushed_event_counts_once_in_the_next_prediction_of_every_worker(flights: Platform, tmp_path: Path) -> None:
    instance = flights.requests(1, offset=500)[0]
    first = flights.config(tmp_path / "a")
    second = flights.config(tmp_path / "b", online_store_path=first.online_store)
    t = datetime.fromisoformat(instance["scheduled_departure"]).astimezone(UTC) - timedelta(hours=2)
    event = {"carrier": instance["carrier"], "flight": 9999, "tailnum": None, "origin": instance["origin"],
             "dest": instance["dest"], "scheduled_departure": (t - timedelta(hours=4)).isoformat(),
             "departed_at": (t - timedelta(hours=4)).isoformat(), "dep_delay": 0.0, "arr_delay": 75.0,
             "arrival_known_at": (t - timedelta(minutes=1)).isoformat()}
    with TestClient(create_app(first)) as a, TestClient(create_app(second)) as b:
        before = a.post("/v1/predict", json=instance).json()
        pushed = b.post("/v1/events/flights", json={"events": [event]}).json()
        assert (pushed["accepted"], pushed["duplicates"], pushed["unused"]) == (1, 0, 0)
        after = a.post("/v1/predict", json=instance).json()
        again = b.post("/v1/events/flights", json={"events": [event]}).json()
        assert (again["accepted"], again["duplicates"]) == (0, 1)
        still = a.post("/v1/predict", json=instance).json()
        other_worker = b.post("/v1/predict", json=instance).json()
    assert before["request_id"] != after["request_id"]
    lines = {r["request_id"]: r["features"] for r in log_lines(first) + log_lines(second) if r.get("features")}
    n0, n1 = lines[before["request_id"]]["route_arrivals_7d"], lines[after["request_id"]]["route_arrivals_7d"]
    assert n1 == n0 + 1
    mean0, mean1 = (lines[r["request_id"]]["route_arr_delay_mean_7d"] for r in (before, after))
    assert mean1 == pytest.approx(((mean0 or 0) * n0 + 75.0) / n1, rel=1e-9)
    assert lines[still["request_id"]] == lines[after["request_id"]] == lines[other_worker["request_id"]]
    pushed = OnlineStore(first.online_store).pushed_frame(flights.spec, "route_delay_stats")
    assert pushed.height == 1 and pushed["flight"].to_list() == [9999]


def test_pushed_event_answers(flights: Platform, client: TestClient) -> None:
    event = {"carrier": "UA", "flight": 1, "tailnum": "N1", "origin": "EWR", "dest": "IAH", "dep_delay": 3.0,
             "scheduled_departure": "2013-02-14T08:00:00", "departed_at": "2013-02-14T08:03:00", "arr_delay": None,
             "arrival_known_at": None}
    body = client.post("/v1/events/flights", json={"events": [event]}).json()
    assert (body["accepted"], body["duplicates"], body["unused"]) == (1, 0, 0)
    none = {**event, "flight": 2, "departed_at": None, "origin": None}
    assert client.post("/v1/events/flights", json={"events": [none]}).json()["unused"] == 1
    cases = [({k: v for k, v in event.items() if k != "origin"}, "events[0].origin"),
             ({k: v for k, v in event.items() if k != "arrival_known_at"}, "events[0].arrival_known_at"),
             ({**event, "arr_delay": "late"}, "events[0].arr_delay"),
             ({**event, "departed_at": 12}, "events[0].departed_at"),
             ({**event, "Q" * 300: 1}, "events[0]." + "Q" * 40)]
    for payload, field in cases:
        assert_refused(client.post("/v1/events/flights", json={"events": [payload]}), 422, field)
    assert_refused(client.post("/v1/events/flights", json={"events": [event, 3]}), 422, "events[1]")


@pytest.mark.parametrize(("case", "payload", "status", "field"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_payloads_are_4xx_naming_the_field(refusing: TestClient, case: str, payload: object, status: int,
                                                     field: str) -> None:
    assert_refused(refusing.post("/v1/predict", json=payload), status, field)


@pytest.mark.parametrize(("case", "path", "body", "content_type", "status", "field"), RAW, ids=[r[0] for r in RAW])
def test_unreadable_bodies_are_4xx_with_a_clear_message(refusing: TestClient, case: str, path: str, body: bytes,
                                                        content_type: str, status: int, field: str) -> None:
    assert_refused(refusing.post(path, content=body, headers={"content-type": content_type}), status, field)


def test_regression_answers_a_value(weather_built: tuple[Platform, Platform], tmp_path: Path) -> None:
    weather, _ = weather_built
    instance = weather.requests(1, offset=40)[0]
    with TestClient(create_app(weather.config(tmp_path))) as test_client:
        body = test_client.post("/v1/predict", json={**instance, "explain": True}).json()
        paris = test_client.post("/v1/predict", json={**instance, "location": "Paris"})
    model, row = weather.models["1"], weather.served().slice(40, 1).to_dicts()[0]
    assert body["prediction"] == pytest.approx(model.predict_matrix(model.matrix([row]))[0], abs=1e-9)
    assert "probability" not in body and body["missing_features"] == []
    explanation = body["explanation"]
    total = explanation["base_value"] + sum(t["contribution"] for t in explanation["top"]) + explanation["other"]
    assert explanation["units"] == "prediction" and total == pytest.approx(body["prediction"], abs=1e-9)
    assert_refused(paris, 422, "location")
    assert "'Seattle', 'New York'" in paris.json()["detail"][0]["problem"]


def test_multiclass_answers_class_probabilities(weather_built: tuple[Platform, Platform], tmp_path: Path) -> None:
    _, kind = weather_built
    instances = [i for i in kind.requests(30) if i["location"] == "Seattle"][:5]
    with TestClient(create_app(kind.config(tmp_path))) as test_client:
        body = test_client.post("/v1/predict?explain=true", json=instances[0]).json()
        unseen = test_client.post("/v1/predict/batch", json={"instances": [instances[1], {**instances[1],
                                                                                       "location": "New York"}]})
    assert list(body["probabilities"]) == CLASSES and sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["predicted_class"] == max(body["probabilities"], key=body["probabilities"].get)
    model = kind.models["1"]
    row = kind.served().filter(pl.col("location") == "Seattle").head(1).to_dicts()[0]
    raw = model.booster.predict(model.matrix([row]), raw_score=True)[0][CLASSES.index(body["predicted_class"])]
    explanation = body["explanation"]
    assert explanation["class"] == body["predicted_class"]
    assert explanation["base_value"] + sum(t["contribution"] for t in explanation["top"]) + explanation["other"] \
        == pytest.approx(raw, abs=1e-9)
    assert_refused(unseen, 422, "instances[1].location")
    assert "unknown value" in unseen.json()["detail"][0]["problem"]


def test_explanation_sums_to_the_log_odds(flights: Platform, client: TestClient) -> None:
    body = client.post("/v1/predict?explain=true", json=flights.requests(1, offset=7)[0]).json()
    explanation = body["explanation"]
    assert len(explanation["top"]) == 5 and explanation["units"] == "log-odds"
    magnitudes = [abs(t["contribution"]) for t in explanation["top"]]
    assert magnitudes == sorted(magnitudes, reverse=True)
    total = explanation["base_value"] + sum(t["contribution"] for t in explanation["top"]) + explanation["other"]
    assert total == pytest.approx(math.log(body["probability"] / (1 - body["probability"])), abs=1e-9)
    assert "explanation" not in client.post("/v1/predict?explain=off", json=flights.requests(1)[0]).json()
    refused = client.post("/v1/predict/batch?explain=maybe", json={"instances": flights.requests(1)})
    assert_refused(refused, 422, "explain")


def test_batch_answers_each_instance_like_the_single_endpoint(flights: Platform, client: TestClient) -> None:
    instances = flights.requests(20, offset=100)
    predictions = client.post("/v1/predict/batch", json={"instances": instances}).json()["predictions"]
    singles = [client.post("/v1/predict", json=i).json()["probability"] for i in instances]
    assert [p["probability"] for p in predictions] == pytest.approx(singles, abs=1e-12)


def test_a_model_failure_is_a_500_with_the_request_id(flights: Platform, client: TestClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    break_model(monkeypatch, client.app.state.service.slot.arms.champion.model)  # type: ignore[attr-defined]
    response = client.post("/v1/predict", json=flights.requests(1)[0], headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500 and response.json()["request_id"] == "req-500"
    assert "secret" not in response.text and "Traceback" not in response.text


def test_hot_swap_under_concurrent_load_fails_no_request(flights: Platform, tmp_path: Path) -> None:
    with TestClient(create_app(flights.config(tmp_path, poll_seconds=0.1))) as test_client:
        with ConcurrentLoad(test_client, flights.requests(40), workers=4) as load:
            assert load.wait_until(lambda seen: all(len(v) >= 3 for v in seen.values()))
            flights.move("champion", "2")
            assert load.wait_until(lambda seen: all(v and v[-1] == "2" for v in seen.values()))
            assert load.wait_until(lambda seen: all(v[-3:] == ["2"] * 3 for v in seen.values()))
        metrics = test_client.get("/metrics").text
    assert load.failures == []
    for versions in load.versions.values():
        first_new = versions.index("2")
        assert "1" in versions[:first_new] and set(versions[first_new:]) == {"2"}
    assert "mlops_serving_hot_swaps_total 1" in metrics


def test_ab_split_is_deterministic_per_key_with_the_configured_share(flights: Platform, tmp_path: Path) -> None:
    by_tail = {i["tailnum"]: i for i in flights.requests(3000) if i["tailnum"]}
    unique = list(by_tail.values())[:600]
    config = flights.config(tmp_path, experiment="ab", challenger_share=0.3, split_salt="exp1", split_key="tailnum")
    with TestClient(create_app(config)) as test_client:
        first, second = batch_arms(test_client, unique), batch_arms(test_client, unique)
    assert first == second and 0.24 < first.count("challenger") / len(first) < 0.36
    assert first == ["challenger" if bucket(i["tailnum"], "exp1") < 0.3 else "champion" for i in unique]
    served = read_prediction_log(config.state_dir, log_dir=config.prediction_log_dir)
    assert dict(served.group_by("arm", "model_version").len().select("arm", "model_version").iter_rows()) == {
        "champion": "1", "challenger": "2"}
    default = flights.config(tmp_path / "default", experiment="ab", challenger_share=0.5)
    with TestClient(create_app(default)) as test_client:
        arms = batch_arms(test_client, unique[:200])
    by_origin = {(i["origin"], arm) for i, arm in zip(unique[:200], arms, strict=True)}
    assert len(by_origin) == len({i["origin"] for i in unique[:200]})


def test_shadow_scores_the_challenger_but_answers_with_the_champion(flights: Platform, tmp_path: Path) -> None:
    instances = flights.requests(10)
    config = flights.config(tmp_path, experiment="shadow")
    with TestClient(create_app(config)) as test_client:
        answers = [test_client.post("/v1/predict", json=i).json() for i in instances]
    assert {(a["arm"], a["model"]["version"]) for a in answers} == {("champion", "1")}
    log = read_prediction_log(config.state_dir, log_dir=config.prediction_log_dir)
    assert log.group_by("arm").len().sort("arm").rows() == [("champion", 10), ("shadow", 10)]
    assert set(log.filter(pl.col("arm") == "shadow")["model_version"]) == {"2"}


def test_bearer_token_guards_v1_but_not_health(flights: Platform, tmp_path: Path) -> None:
    instance = flights.requests(1)[0]
    with TestClient(create_app(flights.config(tmp_path, token="s3cret"))) as test_client:
        assert test_client.post("/v1/predict", json=instance).status_code == 401
        wrong = test_client.post("/v1/predict", json=instance, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert test_client.post("/v1/predict/batch", json={"instances": [instance]}).status_code == 401
        assert test_client.post("/v1/events/flights", json={"events": []}).status_code == 401
        ok = test_client.post("/v1/predict", json=instance, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and test_client.get("/health").status_code == 200


def test_not_ready_until_the_registry_has_a_champion(flights: Platform, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    shutil.copytree(FLIGHTS.parent, folder)
    text = (folder / "project.yaml").read_text().replace(flights.model_name, "serving_not_yet")
    (folder / "project.yaml").write_text(text)
    with TestClient(create_app(flights.config(tmp_path, project_path=folder / "project.yaml"))) as test_client:
        assert test_client.get("/health").status_code == 200 and test_client.get("/ready").status_code == 503
        assert test_client.post("/v1/predict", json=flights.requests(1)[0]).status_code == 503
        client, source = flights.client(), flights.client().get_model_version(flights.model_name, "1")
        client.create_registered_model("serving_not_yet")
        client.create_model_version("serving_not_yet", source.source, run_id=source.run_id, tags=GOVERNED)
        flights.move("champion", "1", name="serving_not_yet")
        test_client.app.state.service.watcher.refresh()  # type: ignore[attr-defined]
        assert test_client.get("/ready").json()["models"]["champion"] == {"name": "serving_not_yet", "version": "1"}
        assert test_client.post("/v1/predict", json=flights.requests(1)[0]).status_code == 200


def test_a_rewritten_online_store_is_reloaded(flights: Platform, client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    instance = flights.requests(1)[0]
    assert client.post("/v1/predict", json=instance).json()["feature_freshness"]["weather_features"] < 4 * 3600
    generation = client.get("/ready").json()["online_store"]["generation"]
    old = flights.events["weather_features"].filter(pl.col("time_hour") < datetime(2013, 1, 15, tzinfo=UTC))
    OnlineStore(service.config.online_store).write_view_events(flights.spec, "weather_features", old)
    service.watcher.safe_refresh()
    assert client.get("/ready").json()["online_store"]["generation"] == generation + 1
    assert client.post("/v1/predict", json=instance).json()["feature_freshness"]["weather_features"] > 20 * 86400


def test_openapi_shows_the_generated_request_with_the_project_example(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    schema = paths["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["title"] == "FlightsRequestBody" and schema["examples"][0]["carrier"] == "UA"
    assert set(schema["required"]) == {"carrier", "flight", "origin", "dest", "scheduled_departure", "distance"}
    assert schema["properties"]["origin"]["enum"] == ["EWR", "JFK", "LGA"]
    batch = paths["/v1/predict/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["instances"]["maxItems"] == 100 and "/v1/events/{source}" in paths


def test_every_request_is_logged_once_across_a_clean_restart(flights: Platform, tmp_path: Path) -> None:
    instances = flights.requests(30)
    first_config = flights.config(tmp_path / "one", log_queue_size=2)
    with TestClient(create_app(first_config)) as first:
        ids = [first.post("/v1/predict", json=i).json()["request_id"] for i in instances]
        batch = first.post("/v1/predict/batch", json={"instances": instances[:5]}).json()
        assert first.post("/v1/predict", json={**GOOD, "origin": "BOS"}).status_code == 422
    with TestClient(create_app(flights.config(tmp_path / "two", log_dir=first_config.log_dir))) as second:
        ids += [second.post("/v1/predict", json=i).json()["request_id"] for i in instances[:20]]
    log = read_prediction_log(first_config.state_dir, log_dir=first_config.log_dir)
    assert log.height == 30 + 5 + 1 + 20 and log.select("request_id", "instance").unique().height == log.height
    assert set(log.filter(pl.col("endpoint") == "/v1/predict", pl.col("status") == 200)["request_id"]) == set(ids)
    assert log.filter(pl.col("request_id") == batch["request_id"]).height == 5
    assert len(list(first_config.prediction_log_dir.glob("date=*/part-*.jsonl"))) == 2
    assert {"inputs", "features", "probability", "prediction", "model_version", "arm", "latency_ms"} <= set(log.columns)


def test_metrics_expose_counters_latency_and_model_versions(flights: Platform, client: TestClient) -> None:
    client.post("/v1/predict", json=flights.requests(1)[0])
    client.post("/v1/predict", json={**GOOD, "origin": "BOS"})
    client.post("/v1/events/flights", json={"events": "x"})
    text = client.get("/metrics").text
    for expected in ('mlops_serving_requests_total{endpoint="/v1/predict",status="200"} 1',
                     'mlops_serving_errors_total{endpoint="/v1/predict",status="422"} 1',
                     'mlops_serving_errors_total{endpoint="/v1/events",status="422"} 1',
                     'mlops_serving_request_latency_seconds_bucket{endpoint="/v1/predict",le="+Inf",status_class="2xx"} 1',
                     'mlops_serving_request_latency_seconds_bucket{endpoint="/v1/predict",le="+Inf",status_class="4xx"} 1',
                     f'mlops_serving_model_version{{arm="champion",model="{flights.model_name}"}} 1',
                     "mlops_serving_hot_swaps_total 0", "# TYPE mlops_serving_request_latency_seconds histogram"):
        assert expected in text
    stages = {line.split('stage="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("mlops_serving_stage_seconds_total{")}
    assert set(stages) == {"parse", "lookup", "predict", "answer", "log", "encode", "log_wait"}
    assert all(stages[s] > 0 for s in ("parse", "lookup", "predict", "log_wait")), stages  # the one prediction


def test_config_comes_from_the_environment_and_names_bad_variables(tmp_path: Path) -> None:
    env = {"MLOPS_SERVING_MAX_BATCH": "7", "MLOPS_SERVING_TOKEN": "t", "MLOPS_SERVING_EXPERIMENT": "canary",
           "MLFLOW_TRACKING_URI": "sqlite:////x.db", "MLOPS_SERVING_STATE_DIR": str(tmp_path),
           "MLOPS_SERVING_PROJECT_PATH": str(FLIGHTS), "MLOPS_SERVING_SPLIT_KEY": "carrier"}
    config = from_env(env)
    assert (config.max_batch, config.token, config.experiment, config.split_key) == (7, "t", "canary", "carrier")
    assert config.tracking_uri == "sqlite:////x.db" and config.project_path == FLIGHTS
    assert config.prediction_log_dir == tmp_path / "prediction_log"
    with pytest.raises(ConfigError, match="MLOPS_SERVING_CHALLENGER_SHARE"):
        from_env({"MLOPS_SERVING_CHALLENGER_SHARE": "2"})
    with pytest.raises(ConfigError, match="split_key .nope. is not a request field"):
        create_app(from_env(env, split_key="nope", online_store_path=tmp_path / "store.db"))


def test_settle_heap_freezes_the_loaded_heap_and_still_frees_a_swapped_out_model(flights: Platform) -> None:
    """After a load the heap is frozen (no long full collections during requests); a swapped-out model
    is still freed (reference counting), and a swap's young cyclic garbage is collected before the freeze."""

    class Garbage:
        pass

    model = load_version(flights.client(), flights.model_name, "1")
    booster = weakref.ref(model.booster)
    try:
        settle_heap(full=True)
        assert gc.get_freeze_count() > 0
        del model
        assert booster() is None
        cycle = Garbage()
        cycle.self_reference = cycle  # type: ignore[attr-defined] - only the cyclic collector can free it
        gone = weakref.ref(cycle)
        del cycle
        settle_heap()
        assert gone() is None
    finally:
        gc.unfreeze()
