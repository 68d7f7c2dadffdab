"""The FastAPI app: `create_app()` builds it from the environment (uvicorn calls it as a factory).

No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
Bodies are read and validated by hand (transport.py) so that every refusal has one shape, names
the field and never echoes the schema, the input or a traceback.
"""

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from mlops_assets.features.online_store import EventError, UnknownSource
from mlops_assets.serving.config import ServingConfig, from_env
from mlops_assets.serving.errors import ClientError, error_response, problems_of
from mlops_assets.serving.schemas import RequestModels, batch_schema, openapi_body
from mlops_assets.serving.service import NotReady, Service
from mlops_assets.serving.transport import (
    INTERNAL_ERROR,
    ObserveMiddleware,
    check_batch_size,
    parse_body,
    parse_events,
    read_json_body,
)

log = logging.getLogger(__name__)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _service(request: Request) -> Service:
    return request.app.state.service


async def require_token(request: Request) -> None:
    """Bearer token on /v1/* when one is configured (constant-time comparison)."""
    token = _service(request).config.token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ClientError(401, [{"field": "authorization", "problem": "missing or invalid bearer token"}])


def _respond(request: Request, instances: list[BaseModel], explain: bool, endpoint: str, single: bool) -> Response:
    """Score, or turn any failure inside features/model code into a logged generic 500."""
    service, state = _service(request), request.state
    try:
        answers = service.predict(instances, explain, state.request_id, endpoint, state.started, single)
    except (NotReady, ClientError):
        raise
    except Exception:
        log.exception("prediction failed for request %s", state.request_id)
        service.log_refusal(state.request_id, endpoint, 500, INTERNAL_ERROR, state.started)
        return error_response(500, INTERNAL_ERROR, state.request_id)
    body = ({"request_id": state.request_id, **answers[0]} if single
            else {"request_id": state.request_id, "predictions": answers})
    return JSONResponse(body)


EVENTS_BODY = {"type": "object", "required": ["events"], "additionalProperties": False,
               "properties": {"events": {"type": "array", "minItems": 1,
                                         "items": {"type": "object", "description": "columns of the source's schema "
                                                   "the feature views read, plus an optional event_id"}}}}


def prediction_router(config: ServingConfig, models: RequestModels) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @router.post("/predict", openapi_extra=openapi_body(models.single.model_json_schema()))
    async def predict(request: Request, explain: bool | None = None) -> Response:
        """One instance -> the prediction, feature freshness, model version (+ explanation)."""
        body = await read_json_body(request, config.max_body_bytes)
        instance = parse_body(models.single, body, {})
        return _respond(request, [instance], bool(explain) or instance.explain, "/v1/predict", single=True)

    @router.post("/predict/batch", openapi_extra=openapi_body(batch_schema(models, config.max_batch)))
    async def predict_batch(request: Request, explain: bool | None = None) -> Response:
        """Up to `max_batch` instances in one call, answered in order."""
        body = await read_json_body(request, config.max_body_bytes)
        check_batch_size(body, config.max_batch)
        batch = parse_body(models.batch, body, {})
        return _respond(request, list(batch.instances), bool(explain) or batch.explain, "/v1/predict/batch",
                        single=False)

    @router.post("/events/{source}", openapi_extra=openapi_body(EVENTS_BODY))
    async def push_events(request: Request, source: str) -> Response:
        """Events of a source (e.g. an arrival just reported): the next prediction in every worker counts them.
        The write runs off the event loop: a store busy with a rewrite must not stall predictions."""
        body = await read_json_body(request, config.max_body_bytes)
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


def ops_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> Response:
        """The process is up (no dependency checked)."""
        return JSONResponse({"status": "ok"})

    @router.get("/ready")
    async def ready(request: Request) -> Response:
        """200 once a champion is loaded, 503 before: what a load balancer should route on."""
        arms = _service(request).slot.arms
        if arms.champion is None:
            return JSONResponse(
                {"status": "not ready", "detail": "no champion model loaded"}, status_code=503
            )
        served = {
            arm: {"name": m.name, "version": m.version}
            for arm, m in (("champion", arms.champion), ("challenger", arms.challenger))
            if m is not None
        }
        features = _service(request).features.snapshot
        store = {"generation": features.generation, "pushed_seq": features.last_seq,
                 "views_loaded": sorted(n for n, v in features.views.items() if v.loaded)}
        return JSONResponse({"status": "ready", "models": served, "online_store": store})

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        service = _service(request)
        text = service.metrics.render(service.log.queue.qsize(), service.log.written)
        return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)

    return router


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> Response:
        if request.url.path.startswith("/v1/") and exc.status != 401:
            _service(request).log_refusal(
                request.state.request_id, request.url.path, exc.status, exc.problems, request.state.started
            )
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        response = error_response(exc.status, exc.problems, request.state.request_id)
        response.headers.update(headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_parameters(request: Request, exc: RequestValidationError) -> Response:
        return await client_error(request, ClientError(422, problems_of(exc.errors())))

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> Response:
        _service(request).log_refusal(
            request.state.request_id, request.url.path, 503, "no model loaded", request.state.started
        )
        return error_response(503, "no model loaded yet; retry later", request.state.request_id)


def create_app(config: ServingConfig | None = None) -> FastAPI:
    """The service for `config` (default: from the environment); starts and stops with the lifespan."""
    cfg = config or from_env()
    service = Service(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        service.start()
        log.info("serving %s (ready=%s) after %.1f s", service.project.model_name, service.ready,
                 time.perf_counter() - started)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title=f"{service.project.name} prediction service", version="1", lifespan=lifespan,
                  description=service.project.description)
    app.state.service = service
    app.add_middleware(ObserveMiddleware, metrics=service.metrics)
    app.include_router(prediction_router(cfg, service.models))
    app.include_router(ops_router())
    _install_handlers(app)
    return app
