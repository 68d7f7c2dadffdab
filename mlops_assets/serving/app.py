"""The FastAPI app: `create_app()` builds it from the environment (uvicorn calls it as a factory).

No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
Bodies are read and validated by hand (transport.py) so that every refusal has one shape, names
the field and never echoes the schema, the input or a traceback.
"""

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlops_assets.features.online_store import EventError, UnknownSource
from mlops_assets.serving.coalesce import Coalescer
from mlops_assets.serving.config import ServingConfig, from_env
from mlops_assets.serving.encoding import encode_answer
from mlops_assets.serving.errors import ClientError, body_problem, error_response, problems_of
from mlops_assets.serving.metrics import StageClock
from mlops_assets.serving.schemas import RequestModels, batch_schema, openapi_body
from mlops_assets.serving.service import Answered, Group, NotReady, Service
from mlops_assets.serving.transport import (
    INTERNAL_ERROR,
    ObserveMiddleware,
    SeenIds,
    parse_body,
    parse_events,
    read_json_body,
    refuse_repeated_id,
)

log = logging.getLogger(__name__)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _service(request: Request) -> Service:
    return request.app.state.service


async def require_token(request: Request) -> None:
    """Bearer token when one is configured (constant-time comparison): /v1/*, /ready, /metrics, the docs."""
    token = _service(request).config.token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ClientError(401, [{"field": "authorization", "problem": "missing or invalid bearer token"}])


LOG_HEADER = "X-Prediction-Log"
LOG_UNAVAILABLE = "the prediction log cannot be written; retry later"


async def log_state(service: Service, future: "Future[bool] | None") -> str:
    """Await (without blocking the event loop) the writer's verdict on the request's records: 'durable',
    'queued' (log_ack=queued) or 'not-logged' (the disk is failing; the records are held, written later)."""
    if future is None or not await _awaitable(future):
        return "not-logged"
    return "durable" if service.config.log_ack == "fsync" else "queued"


def _awaitable(future: "Future[bool]") -> "asyncio.Future[bool]":
    """The event loop's twin of a log future, one per future: the requests of a pass share one log write,
    so they share its twin too (one wake-up of the loop when it is durable, not one per request)."""
    twin = getattr(future, "twin", None)
    if twin is None:
        twin = future.twin = asyncio.wrap_future(future)  # type: ignore[attr-defined]
    return twin


async def refusal(service: Service, request_id: str, path: str, started: float, status: int, detail: object,
                  message: object) -> Response:
    """An error answer of /v1 whose log record is written first (like a prediction's)."""
    future = service.log_refusal(request_id, path, status, detail, started)
    response = error_response(status, message, request_id)  # type: ignore[arg-type]
    response.headers[LOG_HEADER] = await log_state(service, future)
    return response


async def logged_error(request: Request, status: int, detail: object, message: object) -> Response:
    state = request.state
    return await refusal(_service(request), state.request_id, request.url.path, state.started, status, detail, message)


INLINE_ROWS = 100


def _encode(request_id: str, answers: list[dict[str, object]], single: bool) -> Response:
    body = {"request_id": request_id, **answers[0]} if single else {"request_id": request_id, "predictions": answers}
    return Response(encode_answer(body), media_type="application/json")


async def answer_instances(service: Service, coalescer: "Coalescer[Group, Answered]", request_id: str,
                           started: float, endpoint: str, instances: list[BaseModel], explain: bool, single: bool,
                           clock: StageClock) -> Response:
    """Score, wait until the records are durable, answer; any failure inside features/model code is a
    logged generic 500. Up to INLINE_ROWS unexplained instances (a few ms of CPU) are scored on the event
    loop itself, together with the other requests ready in the same turn (coalesce.py): a hop to a worker
    thread would cost more than it frees. Explained or larger requests run alone in a worker thread, so the
    event loop stays free for other requests."""
    refuse = service.config.log_unavailable == "refuse"
    if refuse and service.log.degraded:
        return await refusal(service, request_id, endpoint, started, 503, "prediction log unavailable",
                             LOG_UNAVAILABLE)

    def in_worker() -> "tuple[Response, Future[bool] | None]":
        """Scoring and the JSON encoding of the answer (for a batch, the larger part) in one call."""
        clock.restart()  # CPU time is per thread
        answers, future = service.predict(instances, explain, request_id, endpoint, started, single, clock)
        response = _encode(request_id, answers, single)
        clock.lap("encode")
        return response, future

    try:
        if explain or len(instances) > INLINE_ROWS:
            response, future = await run_in_threadpool(in_worker)
        else:
            answers, future = await coalescer.submit(Group(instances, request_id, endpoint, started, single))
            clock.restart()  # the pass ran on this thread in between: its CPU is counted by its own clock
            response = _encode(request_id, answers, single)
            clock.lap("encode")
    except (NotReady, ClientError):
        raise
    except Exception:
        log.exception("prediction failed for request %s", request_id)
        return await refusal(service, request_id, endpoint, started, 500, INTERNAL_ERROR, INTERNAL_ERROR)
    waited = time.perf_counter()
    logged = await log_state(service, future)
    service.metrics.waited(time.perf_counter() - waited)
    if refuse and logged == "not-logged":
        return error_response(503, LOG_UNAVAILABLE, request_id)
    response.headers[LOG_HEADER] = logged
    return response


async def _respond(request: Request, instances: list[BaseModel], explain: bool, endpoint: str,
                   single: bool, clock: StageClock) -> Response:
    state = request.state
    return await answer_instances(_service(request), request.app.state.coalescer, state.request_id, state.started,
                                  endpoint, instances, explain, single, clock)


# FastAPI >= 0.165 looks up OpenTelemetry providers on every request (~3 % of a single prediction's CPU)
# unless told its telemetry is off; the service exports its own Prometheus metrics.
TELEMETRY_OFF = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
                 if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})
PREDICT_PATHS = {b"/v1/predict": True, b"/v1/predict/batch": False}  # raw path -> single


class PredictFastPath:
    """POST /v1/predict and /v1/predict/batch on their common path without FastAPI's routing, dependency
    and exception layers (measured: they cost ~0.1 ms a request, as much as scoring one coalesced instance).
    Common means: no token configured, no query string, a JSON media type, a body within the limit (in
    however many messages it arrives), a valid body, a champion to score with. Anything else goes on to
    FastAPI with the messages replayed, which answers exactly as before (the 4xx naming the field, the
    logged 409, 503 or 499)."""

    def __init__(self, app: ASGIApp, service: Service, coalescer: "Coalescer[Group, Answered]",
                 models: RequestModels) -> None:
        self.app, self.service, self.coalescer, self.models = app, service, coalescer, models
        self.config = service.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        single = PREDICT_PATHS.get(scope.get("raw_path") or b"") if scope["type"] == "http" else None
        state = scope.get("state", {})
        if (single is None or scope["method"] != "POST" or scope["query_string"] or self.config.token is not None
                or state.get("repeated_id") is not None or not _json_media(scope)):
            await self.app(scope, receive, send)
            return
        limit = self.config.max_body_bytes
        try:
            async with asyncio.timeout(self.config.body_timeout_seconds):
                taken = await _body_messages(receive, limit)
        except TimeoutError:
            problem = body_problem(f"body not received within {self.config.body_timeout_seconds:g} s")
            response = await refusal(self.service, state["request_id"], scope["path"], state["started"], 408,
                                     problem, problem)
            await response(scope, receive, send)
            return
        body = b"".join(m.get("body", b"") for m in taken if m["type"] == "http.request")
        last = taken[-1]
        if last["type"] != "http.request" or last.get("more_body") or len(body) > limit or not body.strip():
            await self.app(scope, _replay(taken, receive), send)
            return
        message = {"type": "http.request", "body": body, "more_body": False}
        clock = self.service.metrics.clock()
        try:
            parsed = parse_body(self.models.single if single else self.models.batch, body, {})
            clock.lap("parse")
            instances = [parsed] if single else list(parsed.instances)  # type: ignore[attr-defined]
            response = await answer_instances(self.service, self.coalescer, state["request_id"], state["started"],
                                              scope["path"], instances, parsed.explain, single,  # type: ignore[attr-defined]
                                              clock)
        except (NotReady, ClientError):  # nothing logged yet: FastAPI's handlers refuse it, logged, as ever
            await self.app(scope, _replay([message], receive), send)
            return
        self.service.metrics.answered_fast()
        await response(scope, receive, send)


def _json_media(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return media == "application/json" or media.endswith("+json")
    return False


async def _body_messages(receive: Receive, limit: int) -> list[Message]:
    """The request's messages up to its whole body (a large batch arrives in several), the first message
    that is not body (a disconnect), or the first past `limit` bytes."""
    taken = [await receive()]
    size = len(taken[0].get("body", b""))
    while taken[-1]["type"] == "http.request" and taken[-1].get("more_body") and size <= limit:
        taken.append(await receive())
        size += len(taken[-1].get("body", b""))
    return taken


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands back the messages the fast path took, in order, then the connection's own."""
    pending = list(reversed(messages))

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again


EVENTS_BODY = {"type": "object", "required": ["events"], "additionalProperties": False,
               "properties": {"events": {"type": "array", "minItems": 1,
                                         "items": {"type": "object", "description": "columns of the source's schema "
                                                   "the feature views read, plus an optional event_id"}}}}


EXPLAIN_PARAMETER = {"name": "explain", "in": "query", "required": False, "schema": {"type": "boolean"},
                     "description": "add the top TreeSHAP contributions (also a body field)"}
TRUE, FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})


def explain_parameter(request: Request) -> bool:
    """`?explain=` read by hand (FastAPI's parameter machinery costs more than the rest of a request's
    routing); anything but a boolean word is a 422 naming it."""
    value = request.query_params.get("explain")
    if value is None or value.lower() in FALSE:
        return False
    if value.lower() in TRUE:
        return True
    raise ClientError(422, [{"field": "explain", "problem": "must be true or false"}])


async def guarded(request: Request) -> None:
    """What every /v1 request passes first: the bearer token, then the repeated-id check. Called by the
    handlers themselves rather than as router dependencies, which FastAPI resolves at a cost per request."""
    await require_token(request)
    await refuse_repeated_id(request)


def prediction_router(config: ServingConfig, models: RequestModels) -> APIRouter:
    router = APIRouter(prefix="/v1")
    single_doc = {**openapi_body(models.single.model_json_schema()), "parameters": [EXPLAIN_PARAMETER]}
    batch_doc = {**openapi_body(batch_schema(models, config.max_batch)), "parameters": [EXPLAIN_PARAMETER]}

    @router.post("/predict", openapi_extra=single_doc)
    async def predict(request: Request) -> Response:
        """One instance -> the prediction, feature freshness, model version (+ explanation)."""
        await guarded(request)
        explain = explain_parameter(request)
        body = await read_json_body(request, config.max_body_bytes, config.body_timeout_seconds)
        clock = _service(request).metrics.clock()
        instance = parse_body(models.single, body, {})
        clock.lap("parse")
        return await _respond(request, [instance], explain or instance.explain, "/v1/predict", True, clock)

    @router.post("/predict/batch", openapi_extra=batch_doc)
    async def predict_batch(request: Request) -> Response:
        """Up to `max_batch` instances in one call, answered in order."""
        await guarded(request)
        explain = explain_parameter(request)
        body = await read_json_body(request, config.max_body_bytes, config.body_timeout_seconds)
        clock = _service(request).metrics.clock()
        batch = parse_body(models.batch, body, {})
        clock.lap("parse")
        return await _respond(request, list(batch.instances), explain or batch.explain,
                              "/v1/predict/batch", False, clock)

    @router.post("/events/{source}", openapi_extra=openapi_body(EVENTS_BODY))
    async def push_events(request: Request, source: str) -> Response:
        """Events of a source (e.g. an arrival just reported): the next prediction in every worker counts them.
        The write runs off the event loop: a store busy with a rewrite must not stall predictions."""
        await guarded(request)
        body = await read_json_body(request, config.max_body_bytes, config.body_timeout_seconds)
        events = parse_events(body, config.max_events)
        try:
            result = await run_in_threadpool(_service(request).push, source, events)
        except UnknownSource as exc:
            raise ClientError(404, [{"field": "source", "problem": str(exc.args[0])}]) from None
        except EventError as exc:
            raise ClientError(422, exc.problems) from None
        return JSONResponse({"request_id": request.state.request_id, "accepted": result.accepted,
                             "duplicates": result.duplicates, "unused": result.unused})

    return router


def log_health(service: Service) -> dict[str, object]:
    plog = service.log
    return {"status": "degraded" if plog.degraded else "ok", "reason": plog.degraded_reason or None,
            "backlog": plog.backlog, "written": plog.written, "dropped": plog.dropped}


def ops_router(config: ServingConfig) -> APIRouter:
    """/health is public (liveness); with a token set, /ready and /metrics need it like /v1."""
    router = APIRouter()
    guarded = [Depends(require_token)] if config.token else []

    @router.get("/health")
    async def health(request: Request) -> Response:
        """The process is up (200 even when degraded: restarting would not help); says what is degraded."""
        service = _service(request)
        degraded = service.log.degraded or service.watcher.refused is not None
        body: dict[str, object] = {"status": "degraded" if degraded else "ok", "prediction_log": log_health(service)}
        if service.watcher.refused is not None:
            body["governance"] = service.watcher.refused
        return JSONResponse(body)

    @router.get("/ready", dependencies=guarded)
    async def ready(request: Request) -> Response:
        """200 once a champion is loaded and the prediction log writes, 503 otherwise: what a load
        balancer should route on."""
        service = _service(request)
        arms = service.slot.arms
        if arms.champion is None:
            return JSONResponse(
                {"status": "not ready", "detail": "no champion model loaded"}, status_code=503
            )
        if service.log.degraded:
            return JSONResponse({"status": "not ready", "detail": "prediction log cannot be written",
                                 "prediction_log": log_health(service)}, status_code=503)
        served = {
            arm: {"name": m.name, "version": m.version}
            for arm, m in (("champion", arms.champion), ("challenger", arms.challenger))
            if m is not None
        }
        features = service.features.snapshot
        store = {"generation": features.generation, "pushed_seq": features.last_seq,
                 "views_loaded": sorted(n for n, v in features.views.items() if v.loaded)}
        return JSONResponse({"status": "ready", "models": served, "online_store": store})

    @router.get("/metrics", dependencies=guarded)
    async def metrics(request: Request) -> Response:
        """Every worker's figures (one scrape sees the fleet), in the Prometheus text format."""
        service = _service(request)
        return Response(await run_in_threadpool(service.metrics.render, service.log), media_type=PROMETHEUS_TEXT)

    return router


def docs_router(app: FastAPI) -> APIRouter:
    """/openapi.json and /docs behind the token (FastAPI's own are public, so they are off then)."""
    router = APIRouter(dependencies=[Depends(require_token)], include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi() -> Response:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    return router


def _install_handlers(app: FastAPI) -> None:
    """Every /v1 refusal (401, 404, 405 and 4xx of a body alike) is logged and counted, in one shape."""

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> Response:
        if request.url.path.startswith("/v1/"):
            response = await logged_error(request, exc.status, exc.problems, exc.problems)
        else:
            response = error_response(exc.status, exc.problems, request.state.request_id)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, exc: RequestValidationError) -> Response:
        return await client_error(request, ClientError(422, problems_of(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown path (404) or method (405): the service's error shape, logged under /v1."""
        problem = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, "refused")
        response = await client_error(request, ClientError(exc.status_code, [{"field": "path", "problem": problem}]))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> Response:
        return await logged_error(request, 503, "no model loaded", "no model loaded yet; retry later")

    @app.exception_handler(Exception)
    async def escaped(request: Request, exc: Exception) -> Response:
        """An error no handler took: the generic 500 in the service's shape (ObserveMiddleware, in front,
        logs it); never the exception's text."""
        return error_response(500, INTERNAL_ERROR, request.state.request_id)


class ServiceApp(FastAPI):
    """FastAPI, with every HTTP request entering through `front` first: request ids, latency and status
    (ObserveMiddleware), then the prediction fast path, which hands anything else to FastAPI's own stack
    (`stack`: its error, telemetry and body-limit layers, the handlers, the routes). In front of those layers
    rather than inside them: they cost a prediction ~20 µs on the way in and on each send."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.front is not None:
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(config: ServingConfig | None = None) -> FastAPI:
    """The service for `config` (default: from the environment); starts and stops with the lifespan."""
    cfg = config or from_env()
    service = Service(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        service.start()
        service.metrics.start_sampling(service.log)
        log.info("serving %s (ready=%s) after %.1f s", service.project.model_name, service.ready,
                 time.perf_counter() - started)
        try:
            yield
        finally:
            service.metrics.stop_sampling()
            service.stop()

    public = {} if cfg.token is None else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    app = ServiceApp(title=f"{service.project.name} prediction service", version="1", lifespan=lifespan,
                     description=service.project.description, **public, **TELEMETRY_OFF)  # type: ignore[arg-type]
    app.state.service = service
    app.state.coalescer = Coalescer(service.predict_groups, lambda group: len(group.instances), cfg.pass_rows,
                                    service.metrics.scored_pass)
    fast = PredictFastPath(app.stack, service, app.state.coalescer, service.models)
    app.front = ObserveMiddleware(fast, metrics=service.metrics, seen=SeenIds(cfg.request_id_memory))
    app.include_router(prediction_router(cfg, service.models))
    app.include_router(ops_router(cfg))
    if cfg.token is not None:
        app.include_router(docs_router(app))
    _install_handlers(app)
    return app
