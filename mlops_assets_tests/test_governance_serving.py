"""Governance where models are served: the service serves only versions whose blessing, infra validation
and alias move are recorded; registry errors are not "no champion"; `make mlflow` cannot write.
Real SQLite MLflow stores, the real app, a real `mlflow ui` subprocess."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops_assets.registry import registry
from mlops_assets.registry.infra import ProbeProcess, validate_serving
from mlops_assets.scoring_model import ScoringPyfunc
from mlops_assets.serving.app import create_app
from mlops_assets.serving.governance import alias_version
from mlops_assets.serving.models import requirement_mismatches
from mlops_assets_tests.serving_fixtures import (
    Platform,
    eventually,
    shared_flights_fixture,  # noqa: F401 - registers it
)

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def unblessed(shared_flights: Platform) -> str:
    """A version the gate refused (as registered_model_version tags it)."""
    return shared_flights.log_version(shared_flights.models["2"],
                                      tags={"blessed": "false", "blessing_reasons": "AUC below floor"})


@pytest.fixture()
def flights(shared_flights: Platform, unblessed: str) -> Platform:
    shared_flights.move("champion", "1")
    return shared_flights



def served_version(client: TestClient, platform: Platform) -> str:
    return client.post("/v1/predict", json=platform.requests(1)[0]).json()["model"]["version"]


def test_an_alias_moved_outside_the_platform_is_not_served(flights: Platform, unblessed: str,
                                                           tmp_path: Path) -> None:
    alerts = tmp_path / "alerts.jsonl"
    mlflow = flights.client()
    with TestClient(create_app(flights.config(tmp_path, alerts_path=alerts))) as client:
        watcher = client.app.state.service.watcher  # type: ignore[attr-defined]
        assert served_version(client, flights) == "1"
        mlflow.set_registered_model_alias(flights.model_name, "champion", unblessed)  # as a REST call would
        watcher.safe_refresh()
        assert served_version(client, flights) == "1"
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "no recorded blessing" in health["governance"]["reason"]
        assert health["governance"]["serving"] == "1"
        text = client.get("/metrics").text
        assert "mlops_serving_governance_blocked 1" in text and "ungoverned_versions_refused_total 1" in text
        assert eventually(lambda: alerts.exists() and "ungoverned version" in alerts.read_text())
        mlflow.set_registered_model_alias(flights.model_name, "champion", "2")  # blessed, but not recorded
        watcher.safe_refresh()
        assert served_version(client, flights) == "1"
        assert "not in the alias history" in client.get("/health").json()["governance"]["reason"]
        flights.move("champion", "2")
        watcher.safe_refresh()
        assert served_version(client, flights) == "2"
        assert client.get("/health").json()["status"] == "ok"
        assert "mlops_serving_governance_blocked 0" in client.get("/metrics").text
    assert [json.loads(line)["source"] for line in alerts.read_text().splitlines()] == ["serving", "serving"]


def test_an_ungoverned_champion_at_start_is_not_served(flights: Platform, unblessed: str, tmp_path: Path) -> None:
    flights.client().set_registered_model_alias(flights.model_name, "champion", unblessed)
    with TestClient(create_app(flights.config(tmp_path, alerts_path=tmp_path / "alerts.jsonl"))) as client:
        assert client.get("/ready").status_code == 503
        assert client.post("/v1/predict", json=flights.requests(1)[0]).status_code == 503


def test_alias_version_is_none_only_for_not_found(flights: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    client = flights.client()
    assert alias_version(client, flights.model_name, "champion") == "1"
    assert alias_version(client, flights.model_name, "no_such_alias") is None
    assert alias_version(client, "no_such_model", "champion") is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = MlflowClient(tracking_uri=closed, registry_uri=closed)
    with pytest.raises(MlflowException):
        registry.alias_version(down, flights.model_name, "champion")
    with pytest.raises(MlflowException):
        registry.alias_history(down, flights.model_name)


def http(url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@pytest.fixture()
def mlflow_ui(flights: Platform, tmp_path: Path) -> Iterator[str]:
    """`mlops-assets mlflow-ui` (what `make mlflow` runs) on a copy of the test registry."""
    state = tmp_path / "state"
    (state / "mlflow").mkdir(parents=True)
    (state / "mlflow" / "mlflow.db").write_bytes((flights.root / "mlflow.db").read_bytes())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
    env.update(MLOPS_STATE_DIR=str(state))
    log = (tmp_path / "ui.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlops-assets"), "mlflow-ui", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: http(f"{base}/health")[0] == 200 or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
        assert not (Path.cwd() / f"file:{state}").exists(), "MLflow made folders in the caller's working folder"
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_make_mlflow_serves_a_read_only_registry(flights: Platform, unblessed: str, mlflow_ui: str) -> None:
    name = flights.model_name
    status, body = http(f"{mlflow_ui}/api/2.0/mlflow/registered-models/get?name={name}")
    assert status == 200 and json.loads(body)["registered_model"]["name"] == name
    status, _ = http(f"{mlflow_ui}/api/2.0/mlflow/registered-models/alias",
                     {"name": name, "alias": "champion", "version": unblessed})
    assert status >= 400
    status, _ = http(f"{mlflow_ui}/api/2.0/mlflow/model-versions/set-tag",
                     {"name": name, "version": unblessed, "key": "blessed", "value": "true"})
    assert status >= 400
    status, body = http(f"{mlflow_ui}/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion")
    assert status == 200 and json.loads(body)["model_version"]["version"] == "1"


def test_infra_validation_loads_and_scores_through_the_service_path(flights: Platform) -> None:
    """The probe (a fresh process, through the registry) scores like the service, an unseen category too
    (the budget's verdict is test_gate's, without a process start)."""
    model = flights.models["1"]
    rows = flights.served().head(40).to_pandas()[model.features]
    canary = rows.astype({f: "object" for f in model.categorical_levels})
    canary.loc[0, next(iter(model.categorical_levels))] = "NEVER SEEN"
    expected = ScoringPyfunc(model).predict(None, canary)
    env = {"MLFLOW_TRACKING_URI": flights.tracking_uri, "MLFLOW_REGISTRY_URI": flights.tracking_uri}
    uri = f"models:/{flights.model_name}/1"
    report = validate_serving(uri, canary, expected, env, latency_budget_ms=10_000, timeout_seconds=300)
    assert report.passed, report.reasons
    assert report.figures["max_abs_diff"] == 0.0 and report.figures["canary_rows"] == 40
    assert report.warnings == []  # the pins are this interpreter's own versions


def test_a_warm_probe_takes_the_stores_of_the_request_and_an_unused_one_ends(flights: Platform) -> None:
    """A probe started before the model existed (no MLflow URI in its environment) loads from the stores
    its request names; one never used is stopped; one that dies reports its last stderr line."""
    model = flights.models["1"]
    canary = flights.served().head(5).to_pandas()[model.features]
    expected = ScoringPyfunc(model).predict(None, canary)
    env = {"MLFLOW_TRACKING_URI": flights.tracking_uri, "MLFLOW_REGISTRY_URI": flights.tracking_uri}
    saved = {k: os.environ.pop(k, None) for k in env}
    try:
        warm = ProbeProcess()
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    report = validate_serving(f"models:/{flights.model_name}/1", canary, expected, env, 10_000, 300, warm)
    assert report.passed, report.reasons
    unused = ProbeProcess()
    unused.close()
    assert unused._proc.returncode is not None
    missing = validate_serving(f"models:/{flights.model_name}/99", canary, expected, env, 10_000, 300)
    assert not missing.passed and "could not be loaded or scored in a fresh process" in missing.reasons[0]


def test_requirement_mismatches_name_what_differs(tmp_path: Path) -> None:
    pins = tmp_path / "requirements.txt"
    pins.write_text(f"mlflow=={importlib.metadata.version('mlflow')}\nlightgbm==0.0.1\n"
                    "no-such-package-here==1.0\n# comment\n-r other.txt\n")
    found = requirement_mismatches(pins)
    assert found == [f"trained with lightgbm==0.0.1, serving has {importlib.metadata.version('lightgbm')}",
                     "trained with no-such-package-here==1.0, serving has no no-such-package-here"]
    assert requirement_mismatches(tmp_path / "absent.txt") == []
