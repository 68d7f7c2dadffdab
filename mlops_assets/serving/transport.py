"""HTTP plumbing: request ids, timing and the last-resort 500 (one pure ASGI middleware), body reading.

A pure ASGI middleware rather than `BaseHTTPMiddleware`: it adds microseconds, not a task per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from typing import TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlops_assets.serving.errors import ClientError, body_problem, error_response, problems_of
from mlops_assets.serving.metrics import Metrics

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ENDPOINTS = frozenset({"/v1/predict", "/v1/predict/batch", "/health", "/ready", "/metrics"})
EVENTS_PREFIX = "/v1/events/"
INTERNAL_ERROR = "internal error; quote the request id when reporting it"
Body = TypeVar("Body", bound=BaseModel)


def endpoint_label(path: str) -> str:
    """A bounded metrics label: the known routes, all event sources as one, the rest as 'other'."""
    if path in ENDPOINTS:
        return path
    return "/v1/events" if path.startswith(EVENTS_PREFIX) else "other"


def caller_request_id(scope: Scope) -> str | None:
    """The caller's X-Request-ID when it is a sane token."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID.match(text):
                return text
    return None


class SeenIds:
    """The last `size` caller request ids of /v1 requests (per process): a repeat would make two log
    records with one id, so it is refused (409) under a fresh id."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, request_id: str) -> bool:
        if request_id in self._ids:
            return False
        self._ids[request_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


class ObserveMiddleware:
    """Request id in and out, latency and status into the metrics, and a generic 500 for any escape."""

    def __init__(self, app: ASGIApp, metrics: Metrics, seen: SeenIds) -> None:
        self.app = app
        self.metrics = metrics
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given, repeated = caller_request_id(scope), None
        if given is not None and scope.get("path", "").startswith("/v1/") and not self.seen.first_time(given):
            given, repeated = None, given
        request_id = given or str(uuid.uuid4())
        scope.setdefault("state", {}).update(request_id=request_id, started=started, repeated_id=repeated)
        status, responded = 500, False
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def observed(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if not responded:
                await error_response(500, INTERNAL_ERROR, request_id)(scope, receive, observed)
        finally:
            self.metrics.observe(endpoint_label(scope.get("path", "")), status, time.perf_counter() - started)


async def refuse_repeated_id(request: Request) -> None:
    """A /v1 dependency: 409 for a caller request id this process has already answered (async: FastAPI
    would run a plain function in a worker thread, a thread hop per request)."""
    if request.state.repeated_id is not None:
        raise ClientError(409, [{"field": "x-request-id", "problem": "already used by an earlier request; "
                                                                    "send a unique id (or none)"}])


async def read_json_body(request: Request, limit: int, timeout: float) -> bytes:
    """The raw body, after checking the media type (415), the size (413) and emptiness (400); a body
    not received within `timeout` is a 408 (a slow client must not hold a connection), a client gone
    before sending it a 499 (logged and counted as the client's doing, not a 500)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ClientError(415, body_problem("Content-Type must be application/json"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ClientError(413, body_problem(f"body larger than the limit of {limit} bytes"))
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            await _receive(request, limit, chunks)
    except TimeoutError:
        raise ClientError(408, body_problem(f"body not received within {timeout:g} s")) from None
    except ClientDisconnect:
        raise ClientError(499, body_problem("the client closed the connection before sending the body")) from None
    body = b"".join(chunks)
    if not body.strip():
        raise ClientError(400, body_problem("request body is empty; send a JSON object"))
    return body


async def _receive(request: Request, limit: int, chunks: list[bytes]) -> None:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, body_problem(f"body larger than the limit of {limit} bytes"))
        chunks.append(chunk)


def parse_body(model: type[Body], body: bytes, context: dict[str, object]) -> Body:
    """Validate straight from JSON bytes; invalid JSON is a 400, a batch over its limit a 413 naming the limit
    (pydantic checks a list's length before its items), invalid fields a 422 naming them."""
    try:
        return model.model_validate_json(body, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ClientError(400, body_problem("body is not valid JSON")) from None
        for e in errors:
            if e["type"] == "too_long" and e["loc"] == ("instances",):
                given, limit = e["ctx"]["actual_length"], e["ctx"]["max_length"]
                raise ClientError(413, [{"field": "instances",
                                         "problem": f"{given} instances; at most {limit} per request"}]) from None
        raise ClientError(422, problems_of(errors)) from None


def parse_events(body: bytes, limit: int) -> list[object]:
    """`{"events": [...]}` -> the list (400 for invalid JSON, 413 over the limit, 422 for another shape)."""
    try:
        data = pydantic_core.from_json(body)
    except ValueError:
        raise ClientError(400, body_problem("body is not valid JSON")) from None
    if not isinstance(data, dict):
        raise ClientError(422, body_problem('must be a JSON object {"events": [...]}'))
    unknown = [str(k)[:40] for k in data if k != "events"]
    if unknown:
        raise ClientError(422, [{"field": name, "problem": "unknown field"} for name in unknown[:20]])
    events = data.get("events")
    if not isinstance(events, list):
        problem = "field required" if events is None else "must be a JSON array"
        raise ClientError(422, [{"field": "events", "problem": problem}])
    if len(events) > limit:
        raise ClientError(413, [{"field": "events", "problem": f"{len(events)} events; at most {limit} per request"}])
    return events
