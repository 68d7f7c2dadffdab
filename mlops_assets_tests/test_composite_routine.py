"""Composite prediction routines: two real registered models (the flights champion and a second model on
fewer features, under another registered name) served as one routine by the real app, over a real MLflow
registry and online store; answers, log records, explanations and governance of the set as a unit."""

from __future__ import annotations

from pathlib import Path
from statistics import median

import polars as pl
import pytest
import yaml
from fastapi.testclient import TestClient

from mlops_assets.features.repository import view_feature_names
from mlops_assets.project.loading import ProjectError, load_project
from mlops_assets.project.spec import RoutineSpec
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.serving.app import create_app
from mlops_assets.serving.config import ConfigError
from mlops_assets.serving.predlog import read_prediction_log
from mlops_assets.serving.routine import preprocess, score
from mlops_assets.serving.service import Service
from mlops_assets_tests.serving_fixtures import (
    FLIGHTS,
    LABEL,
    Platform,
    eventually,
    log_lines,
    shared_flights_fixture,  # noqa: F401 - registers it
    train,
)

SMALL = "flights_delay_small"


@pytest.fixture(scope="module")
def small(shared_flights: Platform) -> dict[str, ScoringModel]:
    """A second registered model (direct and weather features only): v1 governed and champion, v2 governed,
    v3 refused by the gate (as registered_model_version tags it)."""
    spec = shared_flights.spec
    rows = shared_flights.frame.filter(pl.col("split") == "train")
    label = (rows[LABEL] > spec.label.threshold.above).cast(pl.Int8)  # type: ignore[union-attr]
    features = [*spec.features, *view_feature_names(spec, "weather_features")]
    models = {"1": train(rows, features, label, "binary", 21, rounds=15),
              "2": train(rows, features, label, "binary", 22, rounds=15)}
    for version in ("1", "2"):
        assert shared_flights.log_version(models[version], name=SMALL) == version
    assert shared_flights.log_version(models["2"], name=SMALL,
                                      tags={"blessed": "false", "blessing_reasons": "AUC below floor"}) == "3"
    shared_flights.move("champion", "1", name=SMALL)
    return models


@pytest.fixture()
def flights(shared_flights: Platform, small: dict[str, ScoringModel]) -> Platform:
    shared_flights.move("champion", "1")
    shared_flights.move("champion", "1", name=SMALL)
    return shared_flights


def routine_project(folder: Path, routine: dict[str, object]) -> Path:
    """The flights project file with a `routine:` section (paths made absolute: the copy lives elsewhere)."""
    raw = yaml.safe_load(FLIGHTS.read_text())
    for source in raw["sources"].values():
        source["path"] = str((FLIGHTS.parent / source["path"]).resolve())
    raw["code"] = str((FLIGHTS.parent / raw["code"]).resolve())
    raw["routine"] = routine
    path = folder / "project.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


MEAN = {"name": "blend", "combine": "mean",
        "components": [{"name": "main"}, {"name": "small", "model": SMALL, "alias": "champion"}]}


def own(model: ScoringModel, features: dict[str, object]) -> float:
    """What a component alone predicts for the features the log recorded."""
    return float(model.predict_matrix(model.matrix([features]))[0])


def batch(client: TestClient, instances: list[dict[str, object]], explain: bool = False) -> dict[str, object]:
    response = client.post("/v1/predict/batch", json={"instances": instances, "explain": explain})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_mean_routine_is_served_logged_and_explained_per_component(flights: Platform, small: dict,
                                                                       tmp_path: Path) -> None:
    instances = flights.requests(40)
    with TestClient(create_app(flights.config(tmp_path / "plain"))) as plain:
        alone = [p["probability"] for p in batch(plain, instances)["predictions"]]
    config = flights.config(tmp_path, project_path=routine_project(tmp_path, MEAN))
    with TestClient(create_app(config)) as client:
        body = batch(client, instances, explain=True)
    answers = body["predictions"]
    for answer, main_alone in zip(answers, alone, strict=True):
        parts = answer["components"]
        assert answer["routine"] == "blend" and answer["arm"] == "routine"
        assert answer["model"] == {"name": "blend", "version": "main=1,small=1"}
        assert {c: (p["model"], p["version"]) for c, p in parts.items()} == {
            "main": (flights.model_name, "1"), "small": (SMALL, "1")}
        assert parts["main"]["prediction"] == pytest.approx(main_alone, abs=1e-12)
        assert answer["probability"] == pytest.approx((parts["main"]["prediction"] + parts["small"]["prediction"]) / 2)
        assert answer["decision"] == (answer["probability"] >= flights.spec.threshold)
        explanation = answer["explanation"]
        assert set(explanation["components"]) == {"main", "small"}
        small_top = {t["feature"] for t in explanation["components"]["small"]["top"]}
        assert small_top <= set(small["1"].features) and len(small_top) == 5
        terms = explanation["routine"]["terms"]
        assert [t["component"] for t in terms] == ["main", "small"]
        assert sum(t["contribution"] for t in terms) == pytest.approx(answer["probability"])
    assert len({a["components"]["small"]["prediction"] for a in answers}) > 5  # the second model really scores
    records = sorted((r for r in log_lines(config) if r["request_id"] == body["request_id"]),
                     key=lambda r: r["instance"])
    assert len(records) == len(instances)
    for record, answer in zip(records, answers, strict=True):
        assert record["routine"] == "blend" and record["model_version"] == "main=1,small=1"
        assert record["components"] == answer["components"]
        assert record["prediction"] == answer["probability"]
        assert own(small["1"], record["features"]) == pytest.approx(record["components"]["small"]["prediction"],
                                                                    abs=1e-12)
        assert own(flights.models["1"], record["features"]) == pytest.approx(
            record["components"]["main"]["prediction"], abs=1e-12)
    logged = read_prediction_log(config.state_dir, log_dir=config.prediction_log_dir)  # as monitoring reads it
    ours = logged.filter(pl.col("request_id") == body["request_id"])
    assert ours.height == len(instances) and set(ours["model_version"]) == {"main=1,small=1"}
    assert ours["components"].struct.field("small").struct.field("version").to_list() == ["1"] * len(instances)


def test_a_gate_routine_calls_its_second_model_only_past_the_gate(flights: Platform, small: dict,
                                                                   tmp_path: Path) -> None:
    instances = flights.requests(60, offset=40)
    rows = [{**r, "distance": min(r["distance"], 1000)} for r in flights.served().slice(40, 60).to_dicts()]
    above = median(float(p) for p in small["1"].predict_matrix(small["1"].matrix(rows)))
    gate = {"name": "gated", "combine": "gate",
            "components": [{"name": "screen", "model": SMALL}, {"name": "main", "version": 2}],
            "gate": {"component": "screen", "above": above, "then": "main", "else": 0.0},
            "pre": [{"field": "distance", "clip": [0, 1000]}], "post": {"round": 3}}
    config = flights.config(tmp_path, project_path=routine_project(tmp_path, gate))
    with TestClient(create_app(config)) as client:
        body = batch(client, instances)
    answers = body["predictions"]
    passed = [a["components"]["screen"]["prediction"] > above for a in answers]
    assert 0 < sum(passed) < len(answers)
    records = {r["instance"]: r for r in log_lines(config) if r["request_id"] == body["request_id"]}
    for i, (answer, through) in enumerate(zip(answers, passed, strict=True)):
        main = answer["components"]["main"]
        assert main["version"] == "2"
        features = records[i]["features"]
        assert features["distance"] == min(float(instances[i]["distance"]), 1000)
        if through:
            assert main["prediction"] == pytest.approx(own(flights.models["2"], features), abs=1e-12)
            assert answer["probability"] == round(main["prediction"], 3)
        else:
            assert main["prediction"] is None and answer["probability"] == 0.0
    assert any(float(i["distance"]) > 1000 for i in instances)


def test_a_component_moved_to_an_ungoverned_version_blocks_the_whole_set(flights: Platform,
                                                                         tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    config = flights.config(tmp_path, project_path=routine_project(tmp_path, MEAN), alerts_path=alerts)
    request = flights.requests(1)[0]
    with TestClient(create_app(config)) as client:
        watcher = client.app.state.service.watcher  # type: ignore[attr-defined]

        def served() -> str:
            return client.post("/v1/predict", json=request).json()["model"]["version"]

        assert served() == "main=1,small=1"
        flights.move("champion", "2")
        flights.move("champion", "3", name=SMALL)  # recorded, but v3 was not blessed
        watcher.safe_refresh()
        assert served() == "main=1,small=1"  # main's governed move waits for the whole set
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert health["governance"]["component"] == "small" and health["governance"]["serving"] == "main=1,small=1"
        assert "no recorded blessing" in health["governance"]["reason"]
        assert eventually(lambda: alerts.exists() and "routine blend cannot serve component small" in alerts.read_text())
        flights.move("champion", "2", name=SMALL)
        watcher.safe_refresh()
        assert served() == "main=2,small=2"
        assert client.get("/health").json()["status"] == "ok"
        text = client.get("/metrics").text
        assert 'predictions_total{arm="routine",model_version="main=2,small=2"} 1.0' in text
        assert 'model_version{arm="routine:small",model="flights_delay_small"} 2.0' in text
    assert len(alerts.read_text().splitlines()) == 1


@pytest.mark.parametrize(("routine", "problem"), [
    ({**MEAN, "combine": "weighted_mean", "weights": {"main": 0.7, "small": 0.2}}, "sum to 1; they sum to 0.9"),
    ({**MEAN, "combine": "gate", "gate": {"component": "small", "above": 0.5, "then": "big", "else": 0}},
     "unknown component 'big'"),
    ({**MEAN, "components": [{"name": "main"}, {"name": "main", "version": 2}]}, "must be unique"),
    ({**MEAN, "weights": {"main": 0.5, "small": 0.5}}, "`weights` go with combine: weighted_mean"),
    ({**MEAN, "components": [{"name": "main", "alias": "champion", "version": 1}]}, "not both"),
    ({**MEAN, "pre": [{"field": "distance"}]}, "exactly one of `clip` or `fill`"),
])
def test_a_bad_routine_declaration_is_one_line(tmp_path: Path, routine: dict[str, object], problem: str) -> None:
    with pytest.raises(ProjectError) as caught:
        load_project(routine_project(tmp_path, routine))
    message = str(caught.value)
    assert "\n" not in message and "routine" in message and problem in message, message


def test_a_routine_refuses_experiments_and_unknown_pre_inputs(flights: Platform, tmp_path: Path) -> None:
    path = routine_project(tmp_path, MEAN)
    (tmp_path / "pre").mkdir()
    with pytest.raises(ConfigError, match="serves its components as one unit"):
        Service(flights.config(tmp_path / "ab", project_path=path, experiment="ab"))
    bad = routine_project(tmp_path / "pre", {**MEAN, "pre": [{"field": "wingspan", "fill": 0}]})
    with pytest.raises(ConfigError, match=r"routine.pre.0.field: 'wingspan' is not a model input"):
        Service(flights.config(tmp_path / "pre", project_path=bad))


def test_a_gate_else_component_scores_only_the_rows_the_gate_stops(flights: Platform, small: dict) -> None:
    rows = flights.served().slice(0, 50).to_dicts()
    for row in rows[:5]:
        row["wind_gust"] = None
    models = {"screen": small["1"], "main": flights.models["1"], "fallback": small["2"]}
    spec = RoutineSpec.model_validate({
        "name": "cascade", "combine": "gate", "components": [{"name": n} for n in models],
        "gate": {"component": "screen", "above": 0.25, "then": "main", "else": "fallback"},
        "pre": [{"field": "wind_gust", "fill": 7.5}]})
    prepared = [preprocess(spec.pre, r) for r in rows]
    assert [p["wind_gust"] for p in prepared[:5]] == [7.5] * 5
    scores = score(spec, models, prepared)
    through = {i for i, o in enumerate(scores.outputs["screen"]) if float(o) > 0.25}  # type: ignore[arg-type]
    assert 0 < len(through) < len(rows)
    assert scores.scored["main"] == sorted(through)
    assert scores.scored["fallback"] == sorted(set(range(len(rows))) - through)
    for i, combined in enumerate(scores.combined):
        answered = "main" if i in through else "fallback"
        assert float(combined) == own(models[answered], prepared[i])
        assert scores.breakdown[i]["answered_by"] == answered


def test_a_pre_step_that_does_not_fit_a_component_is_refused_like_an_ungoverned_version(
        flights: Platform, tmp_path: Path) -> None:
    clip_category = {**MEAN, "pre": [{"field": "carrier", "clip": [0, 1]}]}
    config = flights.config(tmp_path, project_path=routine_project(tmp_path, clip_category))
    with TestClient(create_app(config)) as client:
        assert client.post("/v1/predict", json=flights.requests(1)[0]).status_code == 503
        governance = client.get("/health").json()["governance"]
        assert governance["routine"] == "blend" and governance["serving"] is None
        assert "reads it as a category; only numbers can be clipped" in governance["reason"]
