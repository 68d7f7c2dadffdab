"""Tiny but real serving platforms built from project files.

flights: six weeks of real flights (Jan 1 - Feb 14 2013) -> prepared sources -> every view's events
in an online store (40 days kept) -> training rows with the offline features -> two small LightGBM
models logged as pyfunc to a SQLite MLflow registry (v1 champion, v2 challenger).
weather: the daily data, a regression champion, and a multiclass copy of the project (the `weather`
label, trained on Seattle only so New York is a category the model never saw).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import httpx
import lightgbm as lgb
import mlflow
import pandas as pd
import polars as pl
import pytest
import yaml
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops_assets.contract import PREDICTION_TIME
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.repository import (
    is_static,
    model_features,
    offline_features,
    view_aggregations,
    view_events,
    view_feature_names,
    view_keys,
)
from mlops_assets.features.request_features import calendar_features
from mlops_assets.features.sources import DTYPES, prepare_all
from mlops_assets.features.windows import aggregate_at
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.project.spec import Project
from mlops_assets.registry.registry import move_alias
from mlops_assets.scoring_model import ScoringModel, ScoringPyfunc
from mlops_assets.serving.app import create_app
from mlops_assets.serving.config import ServingConfig
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR

FLIGHTS = PROJECTS_DIR / "flights" / "project.yaml"
WEATHER = PROJECTS_DIR / "weather" / "project.yaml"
FLIGHTS_SERVED_FROM = "2013-02-07"
FLIGHTS_RETENTION = timedelta(days=40)
WEATHER_SERVED_FROM = "2015-07-01"
CLASSES = ["drizzle", "fog", "rain", "snow", "sun"]
LABEL = "__label"
GOVERNED = {"blessed": "true", "infra_valid": "true"}


def typed(loaded: LoadedProject, name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Declared columns cast to their declared types (what validation hands on)."""
    schema = loaded.spec.sources[name].schema_
    return frame.with_columns(pl.col(c).cast(DTYPES[s.type]) for c, s in schema.items() if c in frame.columns)


def train(frame: pl.DataFrame, features: list[str], label: pl.Series, problem: str, seed: int,
          classes: list[str] | None = None, rounds: int = 25) -> ScoringModel:
    """A small LightGBM on pandas categoricals with frozen levels (every text feature is categorical)."""
    text = [f for f in features if frame.schema[f] == pl.String]
    levels = {c: sorted(frame[c].drop_nulls().unique().to_list()) for c in text}
    data = pd.DataFrame({f: pd.Categorical(frame[f].to_list(), categories=levels[f]) if f in levels
                         else frame[f].cast(pl.Float64).to_numpy() for f in features})
    params = {"objective": problem, "verbose": -1, "seed": seed, "num_leaves": 15, "min_data_in_leaf": 20,
              "num_threads": 1, "bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.9}
    if problem == "multiclass":
        params["num_class"] = len(classes or [])
    target = label.to_numpy()
    booster = lgb.train(params, lgb.Dataset(data, label=target, categorical_feature=text), num_boost_round=rounds)
    return ScoringModel(booster, features, levels, problem, classes)  # type: ignore[arg-type]


@dataclass
class Platform:
    """One project's serving state: project file, online store, MLflow registry, served rows, models."""

    root: Path
    state: Path
    loaded: LoadedProject
    project_file: Path
    events: dict[str, pl.DataFrame]
    frame: pl.DataFrame
    models: dict[str, ScoringModel] = field(default_factory=dict)

    @property
    def spec(self) -> Project:
        return self.loaded.spec

    @property
    def model_name(self) -> str:
        return self.spec.model_name

    @property
    def store_path(self) -> Path:
        return self.state / "online_store.db"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        """Registry URI explicit: other tests leave a global one pointing at their own store."""
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def store_copy(self, folder: Path) -> Path:
        """A private copy of the online store (SQLite backup API: WAL content included)."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "online_store.db"
        source, copy = sqlite3.connect(self.store_path), sqlite3.connect(target)
        with copy:
            source.backup(copy)
        source.close()
        copy.close()
        return target

    def config(self, folder: Path, **overrides: object) -> ServingConfig:
        """A service on its own copy of the online store and its own prediction log."""
        values: dict[str, object] = {
            "state_dir": self.state, "project_path": self.project_file, "tracking_uri": self.tracking_uri,
            "poll_seconds": 60.0, "log_flush_seconds": 0.05, "log_dir": folder / "log",
            "online_store_path": self.store_copy(folder),
        }
        return ServingConfig(**{**values, **overrides})

    def served(self) -> pl.DataFrame:
        return self.frame.filter(pl.col("split") == "serve")

    def requests(self, n: int, offset: int = 0, rows: pl.DataFrame | None = None) -> list[dict[str, object]]:
        """Real rows as a client sends them (request fields only, datetimes as ISO 8601 with offset)."""
        rows = self.served() if rows is None else rows
        fields = list(self.spec.request.fields)
        out = []
        for row in rows.slice(offset, n).select(fields).iter_rows(named=True):
            out.append({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()})
        return out

    def log_version(self, model: ScoringModel, name: str | None = None, tags: dict[str, str] | None = None) -> str:
        """Log as pyfunc (as the trainer does) and register a new version of the project's model
        (by default tagged as blessed and infra-validated, as the pipeline's gates leave it)."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment = mlflow.get_experiment_by_name("serving_tests")
        experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
            "serving_tests", artifact_location=(self.root / "artifacts").as_uri())
        requirements = [f"{p}=={version(p)}" for p in ("mlflow", "lightgbm", "pandas", "numpy", "cloudpickle")]
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=ScoringPyfunc(model),
                                           pip_requirements=requirements)
        client, name = self.client(), name or self.model_name
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        registered = client.create_model_version(name, info.model_uri, run_id=run.info.run_id,
                                                 tags=GOVERNED if tags is None else tags)
        if name == self.model_name:
            self.models[str(registered.version)] = model
        return str(registered.version)

    def move(self, alias: str, version: str, name: str | None = None) -> None:
        """Through the platform's governed path (the move is in the alias history), as approve_model does."""
        move_alias(self.client(), name or self.model_name, alias, version, "promote", "serving tests", "fixture")


def _platform(root: Path, loaded: LoadedProject, raw: dict[str, pl.DataFrame], served_from: str,
              retention: timedelta | None) -> Platform:
    """Prepared sources -> view events -> online store; examples with calendar and offline features."""
    spec = loaded.spec
    sources = prepare_all(loaded, {n: typed(loaded, n, f) for n, f in raw.items()})
    events = {v: view_events(spec, v, sources[spec.feature_views[v].source]) for v in spec.used_views}
    state = root / spec.name / "state"
    store = OnlineStore(state / "online_store.db")
    for name, frame in events.items():
        store.write_view_events(spec, name, frame, retention)
    label = spec.label.column or spec.label.threshold.column  # type: ignore[union-attr]
    examples = sources[spec.examples.source].select(
        *spec.request.fields, pl.col(label).alias(LABEL),
        (pl.col(spec.prediction_time.column) - spec.prediction_time.lead).alias(PREDICTION_TIME))
    frame = offline_features(spec, calendar_features(spec, examples), events)
    start = pl.lit(served_from).str.to_datetime(time_zone="UTC")
    frame = frame.with_columns(split=pl.when(pl.col(PREDICTION_TIME) < start).then(pl.lit("train")).otherwise(
        pl.lit("serve")))
    return Platform(root, state, loaded, loaded.path, events, frame)


def build_flights(root: Path) -> Platform:
    """v1 (champion) and v2 (challenger): two seeds, the second on half of the rows."""
    loaded = load_project(FLIGHTS)
    window = (pl.col("month") == 1) | ((pl.col("month") == 2) & (pl.col("day") <= 14))
    raw = {"flights": pl.read_parquet(DATA_DIR / "flights.parquet").filter(window),
           "weather": pl.read_parquet(DATA_DIR / "weather.parquet").filter(window),
           "planes": pl.read_parquet(DATA_DIR / "planes.parquet"),
           "airports": pl.read_parquet(DATA_DIR / "airports.parquet")}
    platform = _platform(root, loaded, raw, FLIGHTS_SERVED_FROM, FLIGHTS_RETENTION)
    labelled = platform.frame.filter(pl.col(LABEL).is_not_null())
    platform.frame = labelled
    train_rows = labelled.filter(pl.col("split") == "train")
    features = model_features(loaded.spec)
    half = train_rows.sample(fraction=0.5, seed=1)
    for rows, seed in ((train_rows, 7), (half, 11)):
        label = (rows[LABEL] > loaded.spec.label.threshold.above).cast(pl.Int8)  # type: ignore[union-attr]
        platform.log_version(train(rows, features, label, "binary", seed))
    platform.move("champion", "1")
    platform.move("challenger", "2")
    return platform


@pytest.fixture(scope="session", name="shared_flights")
def shared_flights_fixture(tmp_path_factory: pytest.TempPathFactory) -> Platform:
    """One flights platform for the serving test modules besides test_serving (built once: ~10 s);
    their `flights` fixtures reset the aliases, and what a module adds (a version) is its own."""
    return build_flights(tmp_path_factory.mktemp("shared_flights"))


def multiclass_project(root: Path) -> Path:
    """The weather project as a multiclass problem: tomorrow's `weather` label (another model name)."""
    raw = yaml.safe_load(WEATHER.read_text())
    for source in raw["sources"].values():
        source["path"] = str((WEATHER.parent / source["path"]).resolve())
    raw.update(name="weather_kind", model_name="daily_weather_kind", problem="multiclass", classes=CLASSES,
               label={"name": "weather_kind", "column": "weather"}, metric="log_loss",
               gate={"floors": {}})
    path = root / "weather_kind" / "project.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def build_weather(root: Path) -> tuple[Platform, Platform]:
    """The regression platform and its multiclass twin, sharing one store and one registry."""
    loaded = load_project(WEATHER)
    raw = {"weather": pl.read_csv(loaded.source_path("weather"), try_parse_dates=True)}
    platform = _platform(root, loaded, raw, WEATHER_SERVED_FROM, None)
    features = model_features(loaded.spec)
    rows = platform.frame.filter(pl.col("split") == "train")
    platform.log_version(train(rows, features, rows[LABEL], "regression", 3))
    platform.move("champion", "1")
    twin_loaded = load_project(multiclass_project(root))
    twin = Platform(root, platform.state, twin_loaded, twin_loaded.path, platform.events, platform.frame)
    seattle = rows.filter(pl.col("location") == "Seattle")
    kinds = raw["weather"].select("location", pl.col("date").cast(pl.Datetime("us", "UTC")).alias("day_start"),
                                  "weather")
    seattle = seattle.join(kinds.rename({"weather": "kind"}), on=["location", "day_start"], how="left")
    codes = seattle["kind"].replace_strict(CLASSES, list(range(len(CLASSES))), return_dtype=pl.Int64)
    twin.log_version(train(seattle, features, codes, "multiclass", 5, CLASSES))
    twin.move("champion", "1")
    return platform, twin


# Refused flight payloads: (case, body, expected status, field the error must name).
GOOD = {"carrier": "UA", "flight": 1545, "tailnum": "N14228", "origin": "EWR", "dest": "IAH",
        "scheduled_departure": "2013-02-10T05:15:00-05:00", "distance": 1400}
HUGE = "Q" * 200_000
MALFORMED = [
    ("missing field", {k: v for k, v in GOOD.items() if k != "distance"}, 422, "distance"),
    ("flight as text", {**GOOD, "flight": "abc"}, 422, "flight"),
    ("fractional flight", {**GOOD, "flight": 1.5}, 422, "flight"),
    ("flight above max", {**GOOD, "flight": 10_000}, 422, "flight"),
    ("distance as text", {**GOOD, "distance": "far"}, 422, "distance"),
    ("negative distance", {**GOOD, "distance": -3}, 422, "distance"),
    ("tailnum as number", {**GOOD, "tailnum": 123}, 422, "tailnum"),
    ("tailnum bad format", {**GOOD, "tailnum": "n-1"}, 422, "tailnum"),
    ("departure as number", {**GOOD, "scheduled_departure": 1357016400}, 422, "scheduled_departure"),
    ("origin outside the domain", {**GOOD, "origin": "BOS"}, 422, "origin"),
    ("lowercase destination", {**GOOD, "dest": "iah"}, 422, "dest"),
    ("date before 1900", {**GOOD, "scheduled_departure": "1899-12-31T10:00:00Z"}, 422, "scheduled_departure"),
    ("date after 2100", {**GOOD, "scheduled_departure": "2150-01-01T10:00:00Z"}, 422, "scheduled_departure"),
    ("impossible date", {**GOOD, "scheduled_departure": "2013-02-30T10:00:00"}, 422, "scheduled_departure"),
    ("local time in the DST gap", {**GOOD, "scheduled_departure": "2013-03-10T02:30:00"}, 422,
     "scheduled_departure"),
    ("unknown field", {**GOOD, "sched_departure": "2013-03-01T05:15:00"}, 422, "sched_departure"),
    ("long unknown field name", {**GOOD, "Q" * 500: 1}, 422, "Q" * 40),
    ("explain not bool", {**GOOD, "explain": "yes"}, 422, "explain"),
    ("array body", [GOOD], 422, "body"),
    ("big string field", {**GOOD, "carrier": HUGE}, 422, "carrier"),
]

# Raw bodies: (case, path, bytes, content type, expected status, field).
RAW = [
    ("empty body", "/v1/predict", b"", "application/json", 400, "body"),
    ("not json", "/v1/predict", b"{carrier: UA", "application/json", 400, "body"),
    ("text content type", "/v1/predict", json.dumps(GOOD).encode(), "text/plain", 415, "body"),
    ("form content type", "/v1/predict", b"carrier=UA", "application/x-www-form-urlencoded", 415, "body"),
    ("body over the byte limit", "/v1/predict", json.dumps({**GOOD, "carrier": HUGE * 6}).encode(),
     "application/json", 413, "body"),
    ("batch over the limit", "/v1/predict/batch", json.dumps({"instances": [GOOD] * 101}).encode(),
     "application/json", 413, "instances"),
    ("empty batch", "/v1/predict/batch", b'{"instances": []}', "application/json", 422, "instances"),
    ("bad instance in batch", "/v1/predict/batch",
     json.dumps({"instances": [GOOD, {**GOOD, "origin": "SFO"}]}).encode(), "application/json", 422,
     "instances[1].origin"),
    ("events not json", "/v1/events/flights", b"[{", "application/json", 400, "body"),
    ("events not an object", "/v1/events/flights", b"[]", "application/json", 422, "body"),
    ("events missing", "/v1/events/flights", b"{}", "application/json", 422, "events"),
    ("events not a list", "/v1/events/flights", b'{"events": {}}', "application/json", 422, "events"),
    ("events empty", "/v1/events/flights", b'{"events": []}', "application/json", 422, "events"),
    ("events extra field", "/v1/events/flights", b'{"events": [], "x": 1}', "application/json", 422, "x"),
    ("unknown source", "/v1/events/trains", b'{"events": [{}]}', "application/json", 404, "source"),
    ("source without views", "/v1/events/airports", b'{"events": [{}]}', "application/json", 404, "source"),
]


def assert_refused(response: httpx.Response, status: int, field: str) -> None:
    """A refusal: the expected status, the field named, nothing internal or echoed in the body."""
    assert response.status_code == status, response.text
    text = response.text
    assert len(text) < 4_000 and "Traceback" not in text and "Q" * 41 not in text
    for internal in ("properties", "$defs", "FlightsRequest", "pydantic", "model_type", 'File "', "^[A-Z"):
        assert internal not in text
    body = response.json()
    assert field in [d["field"] for d in body["detail"]] and body["request_id"]


class Broken:
    """A booster that fails like a corrupted model would."""

    def predict(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal failure in /opt/model.py")


def break_model(monkeypatch: pytest.MonkeyPatch, model: object) -> None:
    """Make a loaded model fail like a corrupted one: its booster raises and the compiled trees are gone."""
    monkeypatch.setattr(model, "booster", Broken())
    monkeypatch.setattr(model, "_trees", None)


def batch_arms(client: TestClient, instances: list[dict[str, object]], size: int = 100) -> list[str]:
    """The arm that answered each instance, scored through the batch endpoint."""
    arms: list[str] = []
    for start in range(0, len(instances), size):
        body = client.post("/v1/predict/batch", json={"instances": instances[start:start + size]}).json()
        arms += [p["arm"] for p in body["predictions"]]
    return arms


class ConcurrentLoad:
    """Threads posting instances in a loop: the model version of every answer, and every non-200."""

    def __init__(self, client: TestClient, instances: list[dict[str, object]], workers: int) -> None:
        self.client, self.instances = client, instances
        self.versions: dict[int, list[str]] = {i: [] for i in range(workers)}
        self.failures: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._hammer, args=(i,)) for i in range(workers)]

    def __enter__(self) -> ConcurrentLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _hammer(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            response = self.client.post("/v1/predict", json=self.instances[n % len(self.instances)])
            n += 1
            if response.status_code != 200:
                self.failures.append(response.status_code)
            else:
                self.versions[worker].append(response.json()["model"]["version"])

    def wait_until(self, condition, timeout: float = 15.0) -> bool:  # noqa: ANN001 - a predicate
        """Poll (with a deadline) until the condition holds on the versions seen so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.versions):
                return True
            time.sleep(0.02)
        return False


def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll with a deadline (background threads: the log writer retries with backoff up to 2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def log_lines(config: ServingConfig) -> list[dict[str, object]]:
    """Every record of the service's prediction log, exactly as written."""
    files = sorted(config.prediction_log_dir.glob("date=*/part-*.jsonl"))
    return [json.loads(line) for path in files for line in path.read_text().splitlines()]


def served_records(config: ServingConfig, instances: list[dict[str, object]]) -> list[dict[str, object]]:
    """Score through the batch endpoint of a fresh app; its log records (drained at shutdown), in order."""
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/predict/batch", json={"instances": instances})
        assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    ours = [r for r in log_lines(config) if r["request_id"] == request_id and r["arm"] != "shadow"]
    return sorted(ours, key=lambda r: r["instance"])


def offline_values(platform: Platform, view: str, instances: list[dict[str, object]]) -> list[dict[str, object]]:
    """The view's features for each instance by the offline engine (`aggregate_at`, or the static join)."""
    spec, keys = platform.spec, view_keys(platform.spec, view)
    time_field = spec.request.time
    times = [datetime.fromisoformat(str(i[time_field])).astimezone(UTC) - spec.prediction_time.lead
             for i in instances]
    events = platform.events[view]
    queries = pl.DataFrame({**{k: [i.get(k) for i in instances] for k in keys}, PREDICTION_TIME: times},
                           schema_overrides={k: events.schema[k] for k in keys})
    names = view_feature_names(spec, view)
    if is_static(spec, view):
        out = queries.join(events.select(*keys, *names), on=keys, how="left", maintain_order="left")
    else:
        out = aggregate_at(events, keys, spec.feature_views[view].known_at, view_aggregations(spec, view), queries,
                           PREDICTION_TIME)
    return out.select(names).to_dicts()


def same(served: object, offline: object) -> bool:
    """Equal values, floats to 1e-9 relative (window sums carry rounding of that order), NaN as missing."""
    if isinstance(offline, float) and math.isnan(offline):
        offline = None
    if served is None or offline is None:
        return served is None and offline is None
    if isinstance(offline, float):
        return math.isclose(float(served), offline, rel_tol=1e-9, abs_tol=1e-12)  # type: ignore[arg-type]
    return served == offline
