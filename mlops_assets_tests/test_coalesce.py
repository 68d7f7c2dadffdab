"""Requests ready in the same event-loop turn are scored in one pass, and each is still answered, refused and
logged as itself. The service is the real app on a real registry, online store and prediction log, driven
through its ASGI interface so that concurrent requests reach it in one turn deterministically."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from mlops_assets.serving.app import create_app
from mlops_assets.serving.coalesce import Coalescer
from mlops_assets_tests.serving_fixtures import (
    Platform,
    build_weather,
    log_lines,
    shared_flights_fixture,  # noqa: F401 - registers it
)


async def _scored_together(items: list[int], score: Callable[[list[int]], list[object]],
                           max_rows: int = 100) -> tuple[list[object], list[int]]:
    sizes: list[int] = []
    coalescer = Coalescer(score, lambda item: item, max_rows, sizes.append)
    results = await asyncio.gather(*(coalescer.submit(i) for i in items), return_exceptions=True)
    return results, sizes


def test_items_of_one_turn_share_a_pass_and_an_error_stays_with_its_item() -> None:
    calls: list[list[int]] = []

    def score(items: list[int]) -> list[object]:
        calls.append(items)
        return [ValueError(f"refused {i}") if i == 3 else i * 10 for i in items]

    results, sizes = asyncio.run(_scored_together([1, 2, 3, 4], score))
    assert calls == [[1, 2, 3, 4]] and sizes == [4]
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], ValueError) and str(results[2]) == "refused 3"


def test_a_pass_holds_at_most_max_rows_and_the_rest_follow_in_the_next_turn() -> None:
    calls: list[list[int]] = []

    def score(items: list[int]) -> list[object]:
        calls.append(items)
        return list(items)

    results, sizes = asyncio.run(_scored_together([60, 30, 20, 150, 5], score, max_rows=100))
    assert results == [60, 30, 20, 150, 5]
    assert calls == [[60, 30], [20], [150], [5]] and sizes == [2, 1, 1, 1]


def test_a_failing_pass_is_scored_again_item_by_item_and_only_the_breaking_item_fails() -> None:
    calls: list[list[int]] = []

    def score(items: list[int]) -> list[object]:
        calls.append(items)
        if 3 in items:
            raise RuntimeError("model broke on 3")
        return [i * 10 for i in items]

    results, _ = asyncio.run(_scored_together([1, 3, 4], score))
    assert calls == [[1, 3, 4], [1], [3], [4]]
    assert results[0] == 10 and results[2] == 40
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "model broke on 3"

    def broken(items: list[int]) -> list[object]:
        raise RuntimeError("model broke")

    results, _ = asyncio.run(_scored_together([1, 2], broken))
    assert all(isinstance(r, RuntimeError) for r in results)


@pytest.fixture(scope="module")
def flights(shared_flights: Platform) -> Platform:
    shared_flights.move("champion", "1")
    return shared_flights


async def _post_all(app: object, bodies: list[object], concurrently: bool) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app), httpx.AsyncClient(  # type: ignore[attr-defined]
            transport=transport, base_url="http://service") as client:
        if concurrently:
            return list(await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies)))
        return [await client.post("/v1/predict", json=b) for b in bodies]


def _answer(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    body.pop("request_id")
    return body


def test_concurrent_requests_are_one_pass_answered_and_logged_as_each_alone(flights: Platform,
                                                                            tmp_path: Path) -> None:
    bodies = flights.requests(6)
    alone_config, together_config = flights.config(tmp_path / "alone"), flights.config(tmp_path / "together")
    alone = asyncio.run(_post_all(create_app(alone_config), bodies, concurrently=False))
    app = create_app(together_config)
    together = asyncio.run(_post_all(app, bodies, concurrently=True))
    assert [r.status_code for r in together] == [200] * 6
    assert app.state.coalescer.passes == 1 and app.state.coalescer.scored == 6
    assert [_answer(r) for r in together] == [_answer(r) for r in alone]
    records, time = {r["request_id"]: r for r in log_lines(together_config)}, flights.spec.request.time
    for response, body in zip(together, bodies, strict=True):
        record = records[response.json()["request_id"]]
        assert record["instance"] == 0 and record["status"] == 200 and record["endpoint"] == "/v1/predict"
        assert record["probability"] == response.json()["probability"]
        assert {k: v for k, v in record["inputs"].items() if k != time} == {k: v for k, v in body.items() if k != time}
    assert len(records) == 6


def test_a_refused_request_in_a_pass_is_refused_alone(tmp_path_factory: pytest.TempPathFactory,
                                                      tmp_path: Path) -> None:
    """weather's multiclass model never saw New York and the project refuses unknown categories."""
    _, kind = build_weather(tmp_path_factory.mktemp("coalesce_weather"))
    seattle = [r for r in kind.requests(40) if r["location"] == "Seattle"][:3]
    config = kind.config(tmp_path)
    app = create_app(config)
    responses = asyncio.run(_post_all(app, [seattle[0], {**seattle[1], "location": "New York"}, seattle[2]], True))
    assert [r.status_code for r in responses] == [200, 422, 200]
    assert responses[1].json()["detail"][0]["field"] == "location"
    # one pass scored the three together; the fast path handed the refused one to the route, which refused it
    assert app.state.coalescer.passes == 2 and app.state.coalescer.scored == 4
    statuses = {r["request_id"]: r["status"] for r in log_lines(config)}
    assert [statuses[r.json()["request_id"]] for r in responses] == [200, 422, 200]


def test_a_request_that_breaks_the_model_fails_alone_and_its_pass_is_answered(flights: Platform, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = flights.config(tmp_path)
    app = create_app(config)
    bodies = flights.requests(3)
    bodies[1] = {**bodies[1], "distance": 4321.0}

    def breaking(original: Callable[[np.ndarray], np.ndarray], column: int) -> Callable[[np.ndarray], np.ndarray]:
        def predict(matrix: np.ndarray) -> np.ndarray:
            if (matrix[:, column] == 4321.0).any():
                raise RuntimeError("secret failure in the model")
            return original(matrix)
        return predict

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with app.router.lifespan_context(app), httpx.AsyncClient(  # type: ignore[attr-defined]
                transport=transport, base_url="http://service") as client:
            model = app.state.service.slot.arms.champion.model
            monkeypatch.setattr(model, "predict_matrix", breaking(model.predict_matrix, model.features.index("distance")))
            return list(await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert "secret" not in responses[1].text
    statuses = {r["request_id"]: r["status"] for r in log_lines(config)}
    assert [statuses[r.json()["request_id"]] for r in responses] == [200, 500, 200]


def _fast_count(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("mlops_serving_fast_path_requests_total"))
    return float(line.rsplit(" ", 1)[1])


def _fast(client: TestClient) -> float:
    return _fast_count(client.get("/metrics").text)


def _fast_in(app: object) -> float:
    """The app's fast-path count as /metrics would show it (rendered after the app stopped)."""
    service = app.state.service  # type: ignore[attr-defined]
    return _fast_count(service.metrics.render(service.log).decode())


def test_the_fast_path_answers_like_the_routed_endpoint_and_leaves_refusals_to_it(flights: Platform,
                                                                                   tmp_path: Path) -> None:
    """A plain request skips FastAPI's routing; one with a query string takes the route; both answer alike.
    A refusal found on the fast path (here an unknown field) is answered by the route: a logged 422."""
    body = flights.requests(1)[0]
    config = flights.config(tmp_path)
    with TestClient(create_app(config)) as client:
        before = _fast(client)
        fast = client.post("/v1/predict", json=body)
        routed = client.post("/v1/predict?explain=false", json=body)
        refused = client.post("/v1/predict", json={**body, "runway": "4L"})
        batch = client.post("/v1/predict/batch", json={"instances": [body, body]})
        after = _fast(client)
    assert fast.status_code == routed.status_code == batch.status_code == 200
    assert _answer(fast) == _answer(routed) == batch.json()["predictions"][0]
    assert fast.headers["x-prediction-log"] == routed.headers["x-prediction-log"] == "durable"
    assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "runway"
    assert after - before == 2
    statuses = {r["request_id"]: r["status"] for r in log_lines(config)}
    assert statuses[refused.json()["request_id"]] == 422 and statuses[fast.json()["request_id"]] == 200


async def _post_chunked(app: object, path: str, body: bytes, size: int) -> httpx.Response:
    """POST `body` as a stream of `size`-byte chunks: the app receives one message per chunk."""
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start:start + size]

    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app), httpx.AsyncClient(  # type: ignore[attr-defined]
            transport=transport, base_url="http://service") as client:
        return await client.post(path, content=chunks(), headers={"content-type": "application/json"})


def test_a_body_in_several_messages_takes_the_fast_path_and_one_over_the_limit_the_route(
        flights: Platform, tmp_path: Path) -> None:
    """A large batch reaches the app in several messages: still the fast path, the same answers; a body over
    the limit is the route's 413, however it arrives."""
    body = json.dumps({"instances": flights.requests(20)}).encode()
    config = flights.config(tmp_path)
    whole = asyncio.run(_post_chunked(create_app(config), "/v1/predict/batch", body, len(body)))
    app = create_app(config)
    chunked = asyncio.run(_post_chunked(app, "/v1/predict/batch", body, 700))
    assert whole.status_code == chunked.status_code == 200
    assert _fast_in(app) == 1
    assert [{k: v for k, v in a.items() if k != "request_id"} for a in chunked.json()["predictions"]] == \
        [{k: v for k, v in a.items() if k != "request_id"} for a in whole.json()["predictions"]]
    small = flights.config(tmp_path / "small", max_body_bytes=len(body) - 1)
    app = create_app(small)
    over = asyncio.run(_post_chunked(app, "/v1/predict/batch", body, 700))
    assert over.status_code == 413 and "limit" in over.text
    assert _fast_in(app) == 0
    assert [r["status"] for r in log_lines(small)] == [413]


def test_pass_rows_one_scores_every_request_alone(flights: Platform, tmp_path: Path) -> None:
    app = create_app(flights.config(tmp_path, pass_rows=1))
    responses = asyncio.run(_post_all(app, flights.requests(3), concurrently=True))
    assert [r.status_code for r in responses] == [200] * 3
    assert app.state.coalescer.passes == 3
