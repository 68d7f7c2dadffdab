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

from mlops_assets.serving.config import ServingConfig, from_env
from mlops_assets.serving.errors import ClientError, error_response, problems_of
from mlops_assets.serving.schemas import BatchRequest, FlightRequest, PredictRequest, openapi_body
from mlops_assets.serving.service import NotReady, Service
from mlops_assets.serving.transport import (
    INTERNAL_ERROR,
    ObserveMiddleware,
    check_batch_size,
    parse_body,
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


def _respond(
    request: Request, flights: list[FlightRequest], explain: bool, endpoint: str, single: bool
) -> Response:
    """Score, or turn any failure inside features/model code into a logged generic 500."""
    service, state = _service(request), request.state
    try:
        answers = service.predict(flights, explain, state.request_id, endpoint, state.started)
    except NotReady:
        raise
    except Exception:
        log.exception("prediction failed for request %s", state.request_id)
        service.log_refusal(state.request_id, endpoint, 500, INTERNAL_ERROR, state.started)
        return error_response(500, INTERNAL_ERROR, state.request_id)
    body = (
        {"request_id": state.request_id, **answers[0]}
        if single
        else {"request_id": state.request_id, "predictions": answers}
    )
    return JSONResponse(body)


def batch_openapi(limit: int) -> dict[str, object]:
    schema = {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "maxItems": limit,
                "items": FlightRequest.model_json_schema(),
            },
            "explain": {"type": "boolean", "default": False},
        },
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def prediction_router(config: ServingConfig) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @router.post("/predict", openapi_extra=openapi_body(PredictRequest))
    async def predict(request: Request, explain: bool | None = None) -> Response:
        """One flight -> probability of arriving >15 min late, freshness, model version (+ explanation)."""
        body = await read_json_body(request, config.max_body_bytes)
        flight = parse_body(PredictRequest, body, _service(request).validation_context)
        return _respond(request, [flight], bool(explain) or flight.explain, "/v1/predict", single=True)

    @router.post("/predict/batch", openapi_extra=batch_openapi(config.max_batch))
    async def predict_batch(request: Request, explain: bool | None = None) -> Response:
        """Up to `max_batch` flights in one call, answered in order."""
        body = await read_json_body(request, config.max_body_bytes)
        check_batch_size(body, config.max_batch)
        batch = parse_body(BatchRequest, body, _service(request).validation_context)
        return _respond(
            request, list(batch.instances), bool(explain) or batch.explain, "/v1/predict/batch", single=False
        )

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
        return JSONResponse({"status": "ready", "models": served})

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
        log.info(
            "serving %s (ready=%s) after %.1f s",
            service.task.model_name,
            service.ready,
            time.perf_counter() - started,
        )
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="mlops_assets prediction service", version="1", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(ObserveMiddleware, metrics=service.metrics)
    app.include_router(prediction_router(cfg))
    app.include_router(ops_router())
    _install_handlers(app)
    return app
