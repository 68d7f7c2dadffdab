"""A tiny but real serving platform: three real months -> six views in an online store, two small
LightGBM models logged as pyfunc in a SQLite MLflow store and registered (v1 champion, v2 challenger).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import mlflow
import polars as pl
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from mlops_assets.features import transforms
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.views import (
    FEATURE_VIEWS,
)
from mlops_assets.registry import registry
from mlops_assets.serving.config import ServingConfig
from mlops_assets.serving.features import request_feature_values
from mlops_assets.settings import DATA_DIR, TASKS_DIR
from mlops_assets.task import SplitConfig, TaskConfig, TuningConfig, load_task
from mlops_assets.training.dataset import SPLIT, flight_training_set, model_features
from mlops_assets.training.mlflow_logging import pip_requirements
from mlops_assets.training.model import PyfuncModel, TabularModel
from mlops_assets.training.tuning import train_candidate

MONTHS = 3


def small_task() -> TaskConfig:
    task = load_task(TASKS_DIR / "flights.yaml")
    return task.model_copy(
        update={
            "split": SplitConfig(test_months=1, validation_months=1),
            "tuning": TuningConfig(n_trials=1, timeout_seconds=60, max_rounds=30, early_stopping_rounds=10),
        }
    )


def view_frames(
    flights: pl.DataFrame, weather: pl.DataFrame, lead: timedelta
) -> list[tuple[object, pl.DataFrame]]:
    """The six feature views computed by the platform's own transforms (as features/assets.py does)."""
    frames = transforms.feature_views(flights, weather, pl.read_parquet(DATA_DIR / "planes.parquet"), lead)
    return [(FEATURE_VIEWS[name], frame) for name, frame in frames.items()]


@dataclass
class ServingPlatform:
    root: Path
    task: TaskConfig
    frame: pl.DataFrame
    models: dict[str, TabularModel] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def task_file(self) -> Path:
        return self.root / "task.yaml"

    def client(self) -> MlflowClient:
        """Registry URI explicit: other tests leave a global one pointing at their own store."""
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def config(self, **overrides: object) -> ServingConfig:
        values: dict[str, object] = {
            "state_dir": self.state,
            "task_path": self.task_file,
            "tracking_uri": self.tracking_uri,
            "poll_seconds": 60.0,
            "log_flush_seconds": 0.05,
        }
        return ServingConfig(**{**values, **overrides})

    def requests(self, n: int, offset: int = 0) -> list[dict[str, object]]:
        """Real test-month flights as a client would send them (UTC ISO departure)."""
        rows = self.frame.filter(pl.col(SPLIT) == "test").slice(offset, n)
        return [
            {
                "carrier": r["carrier"],
                "flight": r["flight"],
                "tailnum": r["tailnum"],
                "origin": r["origin"],
                "dest": r["dest"],
                "scheduled_departure": r["scheduled_departure"].isoformat(),
                "distance": r["distance"],
            }
            for r in rows.iter_rows(named=True)
        ]

    def log_version(self, model: TabularModel) -> str:
        """Log as pyfunc (like the trainer) and register a new version of the task's model."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment = mlflow.get_experiment_by_name("serving_tests")
        experiment_id = (
            experiment.experiment_id
            if experiment
            else mlflow.create_experiment(
                "serving_tests", artifact_location=(self.root / "artifacts").as_uri()
            )
        )
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=PyfuncModel(model), pip_requirements=pip_requirements()
            )
        version = registry.register_version(
            self.client(),
            self.task.model_name,
            info.model_uri,
            run.info.run_id,
            {"blessed": "true"},
            "serving test model",
        )
        self.models[version] = model
        return version

    def move(self, alias: str, version: str) -> None:
        registry.move_alias(
            self.client(), self.task.model_name, alias, version, "promote", "tests", "serving test"
        )


def build_platform(root: Path) -> ServingPlatform:
    """Views -> online store -> training frame -> 2 models -> registry (v1 champion, v2 challenger)."""
    task = small_task()
    flights = pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") <= MONTHS).collect()
    weather = pl.scan_parquet(DATA_DIR / "weather.parquet").filter(pl.col("month") <= MONTHS).collect()
    lead = timedelta(hours=task.prediction_lead_hours)
    views = view_frames(flights, weather, lead)
    store = OnlineStore(root / "state" / "online_store.db")
    for view, data in views:
        store.write_view(view, data)  # type: ignore[arg-type]
    events = transforms.flight_events(flights, lead)
    frame = flight_training_set(events, views, task)  # type: ignore[arg-type]
    platform = ServingPlatform(root, task, frame)
    shutil.copyfile(TASKS_DIR / "flights.yaml", platform.task_file)
    features = model_features(task, list(FEATURE_VIEWS.values()))
    train, valid = frame.filter(pl.col(SPLIT) == "train"), frame.filter(pl.col(SPLIT) == "validation")
    first = train_candidate(train, valid, task, features, seed=7).model
    second = train_candidate(train.sample(fraction=0.5, seed=1), valid, task, features, seed=11).model
    for model in (first, second):
        platform.log_version(model)
    platform.move(registry.CHAMPION, "1")
    platform.move(registry.CHALLENGER, "2")
    return platform


def features_row(platform: ServingPlatform, flight: dict) -> dict[str, object]:
    """The features row rebuilt independently: online-store values plus the request features."""
    store, row = OnlineStore(platform.state / "online_store.db"), {}
    keys = {
        "origin": flight["origin"],
        "dest": flight["dest"],
        "carrier": flight["carrier"],
        "tailnum": flight["tailnum"],
    }
    for view in FEATURE_VIEWS.values():
        row.update(store.read(view, tuple(keys[k] for k in view.entity_keys)).values or {})
    when = datetime.fromisoformat(flight["scheduled_departure"])
    return {
        **row,
        **request_feature_values(when, flight["distance"]),
        **{k: flight[k] for k in ("carrier", "origin", "dest")},
    }


# Refused payloads: (case, body, expected status, field the error must name).
GOOD = {
    "carrier": "UA",
    "flight": 1545,
    "tailnum": "N14228",
    "origin": "EWR",
    "dest": "IAH",
    "scheduled_departure": "2013-03-01T05:15:00-05:00",
    "distance": 1400,
}
HUGE = "Q" * 200_000
MALFORMED = [
    ("missing field", {k: v for k, v in GOOD.items() if k != "distance"}, 422, "distance"),
    ("flight as text", {**GOOD, "flight": "abc"}, 422, "flight"),
    ("fractional flight", {**GOOD, "flight": 1.5}, 422, "flight"),
    ("distance as text", {**GOOD, "distance": "far"}, 422, "distance"),
    ("negative distance", {**GOOD, "distance": -3}, 422, "distance"),
    ("tailnum as number", {**GOOD, "tailnum": 123}, 422, "tailnum"),
    ("departure as number", {**GOOD, "scheduled_departure": 1357016400}, 422, "scheduled_departure"),
    ("unknown origin", {**GOOD, "origin": "BOS"}, 422, "origin"),
    ("unknown destination", {**GOOD, "dest": "ZZZ"}, 422, "dest"),
    ("lowercase destination", {**GOOD, "dest": "iah"}, 422, "dest"),
    ("date before 2000", {**GOOD, "scheduled_departure": "1999-12-31T10:00:00Z"}, 422, "scheduled_departure"),
    ("date after 2100", {**GOOD, "scheduled_departure": "2150-01-01T10:00:00Z"}, 422, "scheduled_departure"),
    ("impossible date", {**GOOD, "scheduled_departure": "2013-02-30T10:00:00"}, 422, "scheduled_departure"),
    ("unknown field", {**GOOD, "sched_departure": "2013-03-01T05:15:00"}, 422, "sched_departure"),
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
    (
        "body over the byte limit",
        "/v1/predict",
        json.dumps({**GOOD, "carrier": HUGE * 6}).encode(),
        "application/json",
        413,
        "body",
    ),
    (
        "batch over the limit",
        "/v1/predict/batch",
        json.dumps({"instances": [GOOD] * 101}).encode(),
        "application/json",
        413,
        "instances",
    ),
    ("empty batch", "/v1/predict/batch", b'{"instances": []}', "application/json", 422, "instances"),
    (
        "bad instance in batch",
        "/v1/predict/batch",
        json.dumps({"instances": [GOOD, {**GOOD, "origin": "SFO"}]}).encode(),
        "application/json",
        422,
        "instances[1].origin",
    ),
]


def assert_refused(response: httpx.Response, status: int, field: str) -> None:
    """A refusal: the expected status, the field named, nothing internal or echoed in the body."""
    assert response.status_code == status, response.text
    text = response.text
    assert len(text) < 2_000 and "Traceback" not in text and "QQQQ" not in text
    for internal in ("properties", "$defs", "FlightRequest", "pydantic", "model_type", 'File "'):
        assert internal not in text
    body = response.json()
    assert field in [d["field"] for d in body["detail"]] and body["request_id"]


class Broken:
    """A booster that fails like a corrupted model would."""

    def predict(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal failure in /opt/model.py")


def batch_arms(client: TestClient, flights: list[dict[str, object]], size: int = 100) -> list[str]:
    """The arm that answered each flight, scored through the batch endpoint."""
    arms: list[str] = []
    for start in range(0, len(flights), size):
        body = client.post("/v1/predict/batch", json={"instances": flights[start : start + size]}).json()
        arms += [p["arm"] for p in body["predictions"]]
    return arms


class ConcurrentLoad:
    """Threads posting flights in a loop: the model version of every answer, and every non-200."""

    def __init__(self, client: TestClient, flights: list[dict[str, object]], workers: int) -> None:
        self.client, self.flights = client, flights
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
            response = self.client.post("/v1/predict", json=self.flights[n % len(self.flights)])
            n += 1
            if response.status_code != 200:
                self.failures.append(response.status_code)
            else:
                self.versions[worker].append(response.json()["model"]["version"])

    def wait_until_all_see(self, version: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(v and v[-1] == version for v in self.versions.values()):
            time.sleep(0.05)
