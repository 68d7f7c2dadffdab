"""The prediction service over real HTTP (TestClient), a real SQLite MLflow registry, a real online store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from mlops_assets.features import transforms
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.registry import registry
from mlops_assets.serving.app import create_app
from mlops_assets.serving.config import ConfigError, from_env
from mlops_assets.serving.experiment import bucket
from mlops_assets.serving.features import request_feature_values
from mlops_assets.serving.predlog import read_prediction_log
from mlops_assets.settings import DATA_DIR
from mlops_assets.training.dataset import SPLIT
from mlops_assets_tests.serving_fixtures import (
    GOOD,
    MALFORMED,
    RAW,
    Broken,
    ConcurrentLoad,
    ServingPlatform,
    assert_refused,
    batch_arms,
    build_platform,
    features_row,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ServingPlatform:
    return build_platform(tmp_path_factory.mktemp("serving"))


@pytest.fixture()
def platform(built: ServingPlatform) -> ServingPlatform:
    """Every test starts with v1 champion and v2 challenger."""
    for alias, version in ((registry.CHAMPION, "1"), (registry.CHALLENGER, "2")):
        if registry.alias_version(built.client(), built.task.model_name, alias) != version:
            built.move(alias, version)
    return built


@pytest.fixture()
def client(platform: ServingPlatform, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(platform.config(log_dir=tmp_path / "log"))) as test_client:
        yield test_client


def test_request_features_are_the_training_transform_on_200_real_flights() -> None:
    flights = pl.read_parquet(DATA_DIR / "flights.parquet")
    dst_days = flights.filter(
        (pl.col("month") == 3) & (pl.col("day") == 10) | (pl.col("month") == 11) & (pl.col("day") == 3)
    ).sample(40, seed=3)
    sample = pl.concat([flights.sample(160, seed=1), dst_days])
    expected = transforms.request_features(transforms.flight_events(sample, timedelta(hours=2)))
    for row in expected.iter_rows(named=True):
        ours = request_feature_values(row["scheduled_departure"], row["distance"])
        assert ours == {k: row[k] for k in ("sched_hour", "day_of_week", "distance")}
        naive_local = (
            row["scheduled_departure"].astimezone(ZoneInfo(transforms.LOCAL_TZ)).replace(tzinfo=None)
        )
        assert request_feature_values(naive_local, row["distance"]) == ours


def test_numpy_matrix_gives_the_pandas_predictions_and_contributions(platform: ServingPlatform) -> None:
    model = platform.models["1"]
    rows = platform.frame.filter(pl.col(SPLIT) == "test").head(300).to_dicts()
    rows[0]["dest"], rows[1]["manufacturer"], rows[2]["carrier"] = "ZZZ", "NEW MAKER", "zz"
    rows[3]["plane_type"], rows[4]["temp"] = None, None
    frame = pl.DataFrame(rows).to_pandas()
    matrix = model.matrix(rows)
    assert np.max(np.abs(model.predict(frame) - model.predict_matrix(matrix))) < 1e-12
    assert np.max(np.abs(model.contributions(frame) - model.contributions_matrix(matrix))) < 1e-12


def test_prediction_reports_freshness_and_model_version(
    platform: ServingPlatform, client: TestClient
) -> None:
    flight = platform.requests(1)[0]
    response = client.post("/v1/predict", json=flight, headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == "abc-123" and response.headers["x-request-id"] == "abc-123"
    assert body["model"] == {"name": "flights_arrival_delay", "version": "1"} and body["arm"] == "champion"
    assert 0 < body["probability"] < 1 and body["decision"] == (body["probability"] >= 0.5)
    expected = platform.models["1"].predict_matrix(
        platform.models["1"].matrix([features_row(platform, flight)])
    )[0]
    assert body["probability"] == pytest.approx(expected, abs=1e-12)
    as_of = datetime.fromisoformat(flight["scheduled_departure"]) - timedelta(hours=2)
    store = OnlineStore(platform.state / "online_store.db")
    weather = store.read(FEATURE_VIEWS["weather_features"], (flight["origin"],))
    assert body["feature_freshness"]["weather_features"] == pytest.approx(weather.age_seconds(as_of))
    assert set(body["feature_freshness"]) == set(FEATURE_VIEWS) and body["missing_features"] == []
    no_tail = client.post("/v1/predict", json={**flight, "tailnum": None}).json()
    assert (
        no_tail["missing_features"] == ["plane_features"]
        and no_tail["feature_freshness"]["plane_features"] is None
    )


def test_explanation_sums_to_the_log_odds(platform: ServingPlatform, client: TestClient) -> None:
    body = client.post("/v1/predict?explain=true", json=platform.requests(1, offset=7)[0]).json()
    explanation = body["explanation"]
    assert len(explanation["top"]) == 5 and explanation["units"] == "log-odds"
    magnitudes = [abs(t["contribution"]) for t in explanation["top"]]
    assert magnitudes == sorted(magnitudes, reverse=True)
    total = (
        explanation["base_value"] + sum(t["contribution"] for t in explanation["top"]) + explanation["other"]
    )
    p = body["probability"]
    assert total == pytest.approx(np.log(p / (1 - p)), abs=1e-9)
    assert (
        "explanation" in client.post("/v1/predict", json={**platform.requests(1)[0], "explain": True}).json()
    )


def test_batch_answers_each_instance_like_the_single_endpoint(
    platform: ServingPlatform, client: TestClient
) -> None:
    flights = platform.requests(20, offset=100)
    batch = client.post("/v1/predict/batch", json={"instances": flights})
    assert batch.status_code == 200
    predictions = batch.json()["predictions"]
    singles = [client.post("/v1/predict", json=f).json()["probability"] for f in flights]
    assert [p["probability"] for p in predictions] == pytest.approx(singles, abs=1e-12)


@pytest.mark.parametrize(("case", "payload", "status", "field"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_payloads_are_4xx_naming_the_field(
    client: TestClient, case: str, payload: object, status: int, field: str
) -> None:
    assert_refused(client.post("/v1/predict", json=payload), status, field)


@pytest.mark.parametrize(
    ("case", "path", "body", "content_type", "status", "field"), RAW, ids=[r[0] for r in RAW]
)
def test_unreadable_bodies_are_4xx_with_a_clear_message(
    client: TestClient, case: str, path: str, body: bytes, content_type: str, status: int, field: str
) -> None:
    response = client.post(path, content=body, headers={"content-type": content_type})
    assert_refused(response, status, field)
    if case == "batch over the limit":
        assert "at most 100" in response.json()["detail"][0]["problem"]


def test_a_model_failure_is_a_500_with_the_request_id(
    platform: ServingPlatform, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    monkeypatch.setattr(service.slot.arms.champion.model, "booster", Broken())
    response = client.post("/v1/predict", json=platform.requests(1)[0], headers={"X-Request-ID": "req-500"})
    assert response.status_code == 500
    assert response.json()["request_id"] == "req-500" and "secret" not in response.text
    assert "Traceback" not in response.text


def test_hot_swap_under_concurrent_load_fails_no_request(platform: ServingPlatform, tmp_path: Path) -> None:
    with TestClient(create_app(platform.config(log_dir=tmp_path / "log", poll_seconds=0.1))) as test_client:
        with ConcurrentLoad(test_client, platform.requests(40), workers=4) as load:
            time.sleep(0.3)
            platform.move(registry.CHAMPION, "2")
            load.wait_until_all_see("2")
            time.sleep(0.2)
        metrics = test_client.get("/metrics").text
    assert load.failures == []
    for versions in load.versions.values():
        first_new = versions.index("2")
        assert "1" in versions[:first_new] and set(versions[first_new:]) == {"2"}
    assert "mlops_serving_hot_swaps_total 1" in metrics


def test_every_request_is_logged_once_across_a_clean_restart(
    platform: ServingPlatform, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    flights = platform.requests(30)
    with TestClient(create_app(platform.config(log_dir=log_dir, log_queue_size=2))) as first:
        ids = [first.post("/v1/predict", json=f).json()["request_id"] for f in flights]
        batch = first.post("/v1/predict/batch", json={"instances": flights[:5]}).json()
        assert first.post("/v1/predict", json={**GOOD, "origin": "BOS"}).status_code == 422
    with TestClient(create_app(platform.config(log_dir=log_dir))) as second:
        ids += [second.post("/v1/predict", json=f).json()["request_id"] for f in flights[:20]]
    log = read_prediction_log(platform.state, log_dir=log_dir)
    assert log.height == 30 + 5 + 1 + 20
    assert log.select("request_id", "instance").unique().height == log.height
    assert set(log.filter(pl.col("endpoint") == "/v1/predict", pl.col("status") == 200)["request_id"]) == set(
        ids
    )
    assert log.filter(pl.col("request_id") == batch["request_id"]).height == 5
    assert log.filter(pl.col("status") == 422).height == 1
    assert len(list(log_dir.glob("date=*/part-*.jsonl"))) == 2
    today = datetime.now(UTC).date()
    assert read_prediction_log(platform.state, date=today, log_dir=log_dir).height == log.height
    assert {"inputs", "features", "probability", "model_version", "arm", "latency_ms", "timestamp"} <= set(
        log.columns
    )


def test_read_prediction_log_skips_a_torn_last_line(tmp_path: Path) -> None:
    part = tmp_path / "prediction_log" / "date=2026-01-01" / "part-x-00001.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text(
        '{"request_id": "a", "timestamp": "2026-01-01T00:00:00+00:00", "status": 200}\n'
        '{"request_id": "b", "ti'
    )
    assert read_prediction_log(tmp_path)["request_id"].to_list() == ["a"]
    assert read_prediction_log(tmp_path / "nothing").height == 0


def test_ab_split_is_deterministic_per_tail_number_with_the_configured_share(
    platform: ServingPlatform, tmp_path: Path
) -> None:
    flights = [f for f in platform.requests(1500) if f["tailnum"]]
    by_tail = {f["tailnum"]: f for f in flights}
    unique = list(by_tail.values())[:600]
    config = platform.config(
        log_dir=tmp_path / "log", experiment="ab", challenger_share=0.3, split_salt="exp1"
    )
    with TestClient(create_app(config)) as test_client:
        first, second = batch_arms(test_client, unique), batch_arms(test_client, unique)
    assert first == second
    share = first.count("challenger") / len(first)
    assert 0.24 < share < 0.36
    assert first == ["challenger" if bucket(f["tailnum"], "exp1") < 0.3 else "champion" for f in unique]
    log = read_prediction_log(platform.state, log_dir=tmp_path / "log")
    served = log.group_by("arm", "model_version").len().select("arm", "model_version")
    assert dict(served.iter_rows()) == {"champion": "1", "challenger": "2"}


def test_shadow_scores_the_challenger_but_answers_with_the_champion(
    platform: ServingPlatform, tmp_path: Path
) -> None:
    flights = platform.requests(10)
    with TestClient(
        create_app(platform.config(log_dir=tmp_path / "log", experiment="shadow"))
    ) as test_client:
        answers = [test_client.post("/v1/predict", json=f).json() for f in flights]
    assert {(a["arm"], a["model"]["version"]) for a in answers} == {("champion", "1")}
    log = read_prediction_log(platform.state, log_dir=tmp_path / "log")
    assert log.group_by("arm").len().sort("arm").rows() == [("champion", 10), ("shadow", 10)]
    shadow = log.filter(pl.col("arm") == "shadow").sort("timestamp")
    assert set(shadow["model_version"]) == {"2"}
    expected = platform.models["2"].predict_matrix(
        platform.models["2"].matrix([features_row(platform, f) for f in flights])
    )
    by_id = dict(zip(shadow["request_id"], shadow["probability"], strict=True))
    assert [by_id[a["request_id"]] for a in answers] == pytest.approx(list(expected), abs=1e-12)


def test_bearer_token_guards_v1_but_not_health(platform: ServingPlatform, tmp_path: Path) -> None:
    flight = platform.requests(1)[0]
    with TestClient(create_app(platform.config(log_dir=tmp_path / "log", token="s3cret"))) as test_client:
        assert test_client.post("/v1/predict", json=flight).status_code == 401
        wrong = test_client.post("/v1/predict", json=flight, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert test_client.post("/v1/predict/batch", json={"instances": [flight]}).status_code == 401
        ok = test_client.post("/v1/predict", json=flight, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert test_client.get("/health").status_code == 200


def test_not_ready_until_the_registry_has_a_champion(platform: ServingPlatform, tmp_path: Path) -> None:
    task_file = tmp_path / "task.yaml"
    task_file.write_text(platform.task_file.read_text().replace("flights_arrival_delay", "serving_not_yet"))
    with TestClient(
        create_app(platform.config(log_dir=tmp_path / "log", task_path=task_file))
    ) as test_client:
        assert test_client.get("/health").status_code == 200
        assert test_client.get("/ready").status_code == 503
        assert test_client.post("/v1/predict", json=platform.requests(1)[0]).status_code == 503
        c = platform.client()
        source = c.get_model_version(platform.task.model_name, "1")
        version = registry.register_version(
            c, "serving_not_yet", source.source, source.run_id, {}, "late model"
        )
        registry.move_alias(c, "serving_not_yet", registry.CHAMPION, version, "promote", "tests", "now ready")
        test_client.app.state.service.watcher.refresh()  # type: ignore[attr-defined]
        champion = test_client.get("/ready").json()["models"]["champion"]
        assert champion == {"name": "serving_not_yet", "version": "1"}
        assert test_client.post("/v1/predict", json=platform.requests(1)[0]).status_code == 200


def test_metrics_expose_counters_latency_and_model_versions(
    platform: ServingPlatform, client: TestClient
) -> None:
    client.post("/v1/predict", json=platform.requests(1)[0])
    client.post("/v1/predict", json={**GOOD, "dest": "ZZZ"})
    text = client.get("/metrics").text
    for expected in ('mlops_serving_requests_total{endpoint="/v1/predict",status="200"} 1',
                     'mlops_serving_errors_total{endpoint="/v1/predict",status="422"} 1',
                     'mlops_serving_request_latency_seconds_bucket{endpoint="/v1/predict",le="+Inf"} 2',
                     'mlops_serving_model_version{arm="champion",model="flights_arrival_delay"} 1',
                     "mlops_serving_hot_swaps_total 0",
                     "# TYPE mlops_serving_request_latency_seconds histogram"):
        assert expected in text


def test_config_comes_from_the_environment_and_names_bad_variables(tmp_path: Path) -> None:
    env = {"MLOPS_SERVING_MAX_BATCH": "7", "MLOPS_SERVING_TOKEN": "t", "MLOPS_SERVING_EXPERIMENT": "canary",
           "MLFLOW_TRACKING_URI": "sqlite:////x.db", "MLOPS_SERVING_STATE_DIR": str(tmp_path)}
    config = from_env(env)
    assert (config.max_batch, config.token, config.experiment) == (7, "t", "canary")
    assert config.tracking_uri == "sqlite:////x.db"
    assert config.prediction_log_dir == tmp_path / "prediction_log"
    with pytest.raises(ConfigError, match="MLOPS_SERVING_CHALLENGER_SHARE"):
        from_env({"MLOPS_SERVING_CHALLENGER_SHARE": "2"})


def test_settle_heap_freezes_the_loaded_heap_and_still_frees_a_swapped_out_model() -> None:
    """After a load the heap is frozen (no long full collections during requests); the next swap
    unfreezes first, so the previous model, cycles included, is not kept forever."""
    import gc
    import weakref

    from mlops_assets.serving.models import settle_heap

    class Model:
        pass

    old = Model()
    old.self_reference = old  # only the cyclic collector can free it
    gone = weakref.ref(old)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        del old
        settle_heap()
        assert gone() is None
    finally:
        gc.unfreeze()
