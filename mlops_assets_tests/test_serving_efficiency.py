"""Serving efficiency: /metrics of a real two-worker service adds up the fleet; the `serving_efficiency`
asset summarises a real prediction log (figures recomputed here from the raw records) and its check
fails and alerts on a budget breach."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlops_assets.alerts import AlertSink, read_alerts
from mlops_assets.monitoring.efficiency_asset import CHECK, serving_efficiency_asset
from mlops_assets.project.loading import load_project
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.serving.app import create_app
from mlops_assets_tests.projects import project_copy
from mlops_assets_tests.serving_fixtures import (
    Platform,
    break_model,
    eventually,
    shared_flights_fixture,  # noqa: F401 - registers it
)

WRITER_PID = re.compile(r"^part-\d{8}T\d{6}-(\d+)-")


@pytest.fixture()
def flights(shared_flights: Platform) -> Platform:
    shared_flights.move("champion", "1")
    shared_flights.move("challenger", "2")
    return shared_flights


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def records_per_writer_pid(log_dir: Path) -> Counter[int]:
    counts: Counter[int] = Counter()
    for path in log_dir.glob("date=*/part-*.jsonl"):
        counts[int(WRITER_PID.match(path.name).group(1))] += len(path.read_text().splitlines())  # type: ignore[union-attr]
    return counts


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=10, trust_env=False)
    except httpx.HTTPError:
        return None


def test_one_scrape_of_a_two_worker_service_reports_the_whole_fleet(flights: Platform, tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = flights.config(tmp_path, state_dir=state)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_SERVING_", "MLFLOW_", "PROMETHEUS_"))}
    env.update({f"MLOPS_SERVING_{k.upper()}": str(getattr(config, k)) for k in
                ("state_dir", "project_path", "tracking_uri", "online_store_path", "log_dir", "poll_seconds")})
    stderr = (tmp_path / "server.err").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlops_assets.serving", "--port", str(port), "--workers", "2",
                               "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    base, instances = f"http://127.0.0.1:{port}", flights.requests(20)
    sent = 0
    try:
        ready = eventually(lambda: (r := _get(f"{base}/ready")) is not None and r.status_code == 200, timeout=180)
        assert ready, (tmp_path / "server.err").read_text()[-2000:]
        folder = state / "serving_metrics" / str(server.pid)
        assert folder.is_dir()

        def both_workers_answered() -> bool:
            """A new connection per request: the kernel hands each to either worker."""
            nonlocal sent
            response = httpx.post(f"{base}/v1/predict", json=instances[sent % 20], timeout=30, trust_env=False)
            assert response.status_code == 200, response.text
            sent += 1
            return len(records_per_writer_pid(config.prediction_log_dir)) == 2 and sent >= 10

        assert eventually(both_workers_answered, timeout=120), "the second worker never answered"
        per_worker = records_per_writer_pid(config.prediction_log_dir)
        assert sum(per_worker.values()) == sent and max(per_worker.values()) < sent
        workers = {str(pid) for pid in per_worker}
        assert workers <= {str(p.pid) for p in psutil.Process(server.pid).children()}

        def fleet_in_every_scrape() -> bool:
            for _ in range(4):  # each scrape on its own connection, answered by either worker
                found = samples(httpx.get(f"{base}/metrics", timeout=10, trust_env=False).text)
                route = {"endpoint": "/v1/predict", "status_class": "2xx"}
                expected = {
                    key("mlops_serving_requests_total", endpoint="/v1/predict", status="200"): sent,
                    key("mlops_serving_request_latency_seconds_count", **route): sent,
                    key("mlops_serving_request_latency_seconds_bucket", **route, le="+Inf"): sent,
                    key("mlops_serving_predictions_total", arm="champion", model_version="1"): sent,
                    key("mlops_serving_prediction_log_records_total"): sent,
                }
                wrong = {key: found.get(key) for key, value in expected.items() if found.get(key) != value}
                if wrong:
                    seen.append(f"sent {sent}: {wrong}")
                    return False
                for name in ("resident_memory_bytes", "cpu_seconds", "open_fds"):
                    pids = {dict(labels).get("worker_pid") for (n, labels), v in found.items()
                            if n == f"mlops_serving_process_{name}" and v > 0}
                    if not workers <= pids:
                        seen.append(f"{name} of {pids}, not of {workers}")
                        return False
            return True

        seen: list[str] = []
        assert eventually(fleet_in_every_scrape, timeout=60), seen[-1]
        buckets = [k for k in samples(httpx.get(f"{base}/metrics", timeout=10, trust_env=False).text)
                   if k[0] == "mlops_serving_request_latency_seconds_bucket"]
        assert {dict(labels)["endpoint"] for _, labels in buckets} >= {"/v1/predict", "/ready"}
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        assert not folder.exists(), "the launcher removes its metrics folder when it stops"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
        stderr.close()


@pytest.fixture()
def served_log(flights: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    """A real prediction log under `<state>/prediction_log`: singles, batches, refusals and a model failure,
    through the in-process app in shadow mode (every instance is also scored by the challenger)."""
    state = tmp_path / "state"
    config = flights.config(tmp_path, state_dir=state, log_dir=state / "prediction_log", experiment="shadow")
    instances = flights.requests(60)
    statuses = []
    with TestClient(create_app(config)) as client:
        for instance in instances[:25]:
            statuses.append(client.post("/v1/predict", json=instance).status_code)
        for start in range(25, 55, 10):
            statuses.append(client.post("/v1/predict/batch", json={"instances": instances[start:start + 10]})
                            .status_code)
        for _ in range(4):
            statuses.append(client.post("/v1/predict", json={"no_such_field": 1}).status_code)
        champion = client.app.state.service.slot.arms.champion  # type: ignore[attr-defined]
        break_model(monkeypatch, champion.model)
        statuses.append(client.post("/v1/predict", json=instances[55]).status_code)
    assert Counter(statuses) == {200: 28, 422: 4, 500: 1}
    return state, statuses


def _materialize(state: Path, project_file: Path, alerts: Path) -> tuple[dict, dg.AssetCheckEvaluation]:
    project = load_project(project_file).spec
    records = [json.loads(line) for path in sorted((state / "prediction_log").glob("date=*/*.jsonl"))
               for line in path.read_text().splitlines()]
    key = f"{min(r['timestamp'] for r in records)[:7]}-01"
    result = dg.materialize([serving_efficiency_asset(project)], partition_key=key,
                            instance=dg.DagsterInstance.ephemeral(),
                            resources={"lake": LakeResource(state_dir=str(state)),
                                       "project": ProjectResource(path=str(project_file)),
                                       "alerts": AlertSink(path=str(alerts), webhook_url="")})
    [materialization] = result.asset_materializations_for_node("serving_efficiency")
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == CHECK
    return {k: v.value for k, v in materialization.metadata.items()}, evaluation


def test_serving_efficiency_summarises_a_real_log(served_log: tuple[Path, list[int]], tmp_path: Path) -> None:
    state, statuses = served_log
    generous = project_copy("flights", tmp_path / "generous.yaml",
                            monitoring={"serving_budget": {"p99_ms": 1e6, "error_rate": 0.5}})
    metadata, evaluation = _materialize(state, generous, tmp_path / "alerts.jsonl")
    assert evaluation.passed and not (tmp_path / "alerts.jsonl").exists()

    records = [json.loads(line) for path in sorted((state / "prediction_log").glob("date=*/*.jsonl"))
               for line in path.read_text().splitlines()]
    requests = {(r["request_id"], r["timestamp"], r["endpoint"]): (r["status"], r["latency_ms"]) for r in records}
    latency: dict[str, list[float]] = defaultdict(list)
    for (_, _, endpoint), (_, ms) in requests.items():
        latency[endpoint].append(ms)
    assert metadata["requests"] == len(requests) == len(statuses) == 33
    assert metadata["predictions"] == 25 + 30  # the champion's; the shadow arm is counted apart
    routes = {r["endpoint"]: r for r in metadata["routes"]}
    assert set(routes) == {"/v1/predict", "/v1/predict/batch"}
    for endpoint, values in latency.items():
        assert routes[endpoint]["requests"] == len(values)
        for name, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
            assert routes[endpoint][name] == pytest.approx(float(np.percentile(values, q)), rel=1e-12)
    classes = {r["status_class"]: r["requests"] for r in metadata["status_classes"]}
    assert classes == {"2xx": 28, "4xx": 4, "5xx": 1}
    assert metadata["server_error_rate"] == pytest.approx(1 / 33)
    versions = {(r["arm"], r["model_version"]): r["predictions"] for r in metadata["model_versions"]}
    assert versions == {("champion", "1"): 55, ("shadow", "2"): 55}
    per_minute = Counter(r[1][:16] for r in requests)
    assert metadata["busiest_minute_rps"] == pytest.approx(max(per_minute.values()) / 60)
    assert metadata["latency_plot"].startswith("![serving latency](data:image/png;base64,")


def test_a_breached_budget_fails_the_check_and_alerts(served_log: tuple[Path, list[int]], tmp_path: Path) -> None:
    state, _ = served_log
    tiny = project_copy("flights", tmp_path / "tiny.yaml",
                        monitoring={"serving_budget": {"p99_ms": 0.001, "error_rate": 0.0}})
    alerts = tmp_path / "alerts.jsonl"
    _, evaluation = _materialize(state, tiny, alerts)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    [alert] = read_alerts(alerts)
    assert alert["severity"] == "ERROR" and alert["source"] == "monitor:serving_efficiency"
    assert "/v1/predict p99" in alert["message"] and "server error rate 0.0303" in alert["message"]
    assert alert["details"]["budget_p99_ms"] == 0.001
