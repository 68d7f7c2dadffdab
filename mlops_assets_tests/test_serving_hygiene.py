"""Request hygiene of the real app: disconnects and slow bodies are the client's doing (499, 408), every
/v1 answer (401, 404, 405 too) is counted and logged, repeated request ids are refused, and with a
token only /health is public. Disconnects and slow bodies are driven through the ASGI interface
(the messages uvicorn sends the app), the rest through TestClient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mlops_assets.serving.app import create_app
from mlops_assets.serving.transport import INTERNAL_ERROR
from mlops_assets_tests.serving_fixtures import (
    Platform,
    log_lines,
    shared_flights_fixture,  # noqa: F401 - registers it
)

Receive = Callable[[], Awaitable[dict[str, object]]]


@pytest.fixture()
def flights(shared_flights: Platform) -> Platform:
    shared_flights.move("champion", "1")
    return shared_flights


def asgi_post(app: FastAPI, path: str, receive: Receive, length: int) -> tuple[int, dict[str, object]]:
    """POST through the ASGI interface with the given receive channel; the status and JSON body sent."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(length).encode())],
             "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    return int(sent[0]["status"]), json.loads(body)  # type: ignore[arg-type]


def test_a_client_gone_before_its_body_is_a_499_not_a_500(flights: Platform, tmp_path: Path) -> None:
    config = flights.config(tmp_path)

    async def disconnect() -> dict[str, object]:
        return {"type": "http.disconnect"}

    with TestClient(create_app(config)) as client:
        status, body = asgi_post(client.app, "/v1/predict", disconnect, 300)  # type: ignore[arg-type]
        metrics = client.get("/metrics").text
    assert status == 499 and "closed the connection" in body["detail"][0]["problem"]
    assert 'mlops_serving_requests_total{endpoint="/v1/predict",status="499"} 1' in metrics
    assert 'status="500"' not in metrics
    assert [r["status"] for r in log_lines(config) if r["request_id"] == body["request_id"]] == [499]


def test_a_body_that_never_arrives_is_a_408(flights: Platform, tmp_path: Path) -> None:
    async def stall() -> dict[str, object]:
        await asyncio.Event().wait()
        return {}

    with TestClient(create_app(flights.config(tmp_path, body_timeout_seconds=0.2))) as client:
        status, body = asgi_post(client.app, "/v1/predict", stall, 300)  # type: ignore[arg-type]
    assert status == 408 and body["detail"][0] == {"field": "body", "problem": "body not received within 0.2 s"}


def test_401_404_405_are_counted_and_logged(flights: Platform, tmp_path: Path) -> None:
    config = flights.config(tmp_path, token="s3cret")
    with TestClient(create_app(config)) as client:
        unauthorised = client.post("/v1/predict", json=flights.requests(1)[0])
        missing = client.post("/v1/nothing", json={}, headers={"Authorization": "Bearer s3cret"})
        method = client.get("/v1/predict", headers={"Authorization": "Bearer s3cret"})
        metrics = client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
    assert (unauthorised.status_code, missing.status_code, method.status_code) == (401, 404, 405)
    assert missing.json()["detail"] == [{"field": "path", "problem": "no such endpoint"}]
    assert method.headers["allow"] == "POST"
    for expected in ('{endpoint="/v1/predict",status="401"} 1', '{endpoint="other",status="404"} 1',
                     '{endpoint="/v1/predict",status="405"} 1'):
        assert f"mlops_serving_requests_total{expected}" in metrics
    logged = {r["request_id"]: r["status"] for r in log_lines(config)}
    assert [logged[r.json()["request_id"]] for r in (unauthorised, missing, method)] == [401, 404, 405]


def test_a_repeated_request_id_is_refused(flights: Platform, tmp_path: Path) -> None:
    config = flights.config(tmp_path)
    instance = flights.requests(1)[0]
    with TestClient(create_app(config)) as client:
        first = client.post("/v1/predict", json=instance, headers={"X-Request-ID": "order-17"})
        again = client.post("/v1/predict", json=instance, headers={"X-Request-ID": "order-17"})
    assert first.status_code == 200 and first.json()["request_id"] == "order-17"
    assert again.status_code == 409 and again.json()["detail"][0]["field"] == "x-request-id"
    assert again.json()["request_id"] != "order-17"
    assert [r["status"] for r in log_lines(config) if r["request_id"] == "order-17"] == [200]


def test_with_a_token_only_health_is_public(flights: Platform, tmp_path: Path) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(flights.config(tmp_path, token="s3cret"))) as client:
        assert client.get("/health").status_code == 200
        for path in ("/ready", "/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=auth).status_code == 200, path
        assert client.get("/openapi.json", headers=auth).json()["paths"]["/v1/predict"]
    with TestClient(create_app(flights.config(tmp_path / "open"))) as client:
        assert [client.get(p).status_code for p in ("/ready", "/metrics", "/docs", "/openapi.json")] == [200] * 4


def test_an_error_no_handler_takes_is_the_generic_500_with_its_request_id(flights: Platform, tmp_path: Path) -> None:
    """A route that raises (here the event push, its store broken on purpose) answers the service's 500 shape
    with the request id header, counted; the exception's text stays in the server log."""
    config = flights.config(tmp_path)
    app = create_app(config)
    with TestClient(app, raise_server_exceptions=False) as client:
        def broken(source: str, events: list[object]) -> object:
            raise RuntimeError("secret internals")

        app.state.service.push = broken
        response = client.post("/v1/events/flights", json={"events": [{"x": 1}]})
        metrics = client.get("/metrics").text
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": INTERNAL_ERROR, "request_id": response.headers["x-request-id"]}
    assert 'mlops_serving_requests_total{endpoint="/v1/events",status="500"} 1' in metrics
