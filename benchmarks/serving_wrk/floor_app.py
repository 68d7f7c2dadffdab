"""The HTTP floor: a bare ASGI app that reads the body and answers a fixed JSON, under the same uvicorn
settings as our service (uvloop, httptools, no access log). What any Python service on this server pays per
request before doing any work of its own."""

from __future__ import annotations

from typing import Any

ANSWER = b'{"prediction": 0.5}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})
