"""A very small ASGI toolkit: requests, responses and a method + path router.

Hypercorn does the HTTP and WebSocket protocol work; this module only turns ASGI scopes into
:class:`Request` objects and :class:`Response` objects back into ASGI messages.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec

__all__ = [
    "ENCODER",
    "Handler",
    "Receive",
    "Request",
    "Response",
    "Router",
    "Send",
    "json_response",
    "read_request",
    "send_response",
    "text_response",
]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Decimals go out as JSON numbers (Tradier's prices are numbers in REST answers).
ENCODER = msgspec.json.Encoder(decimal_format="number")
_MAX_BODY = 1 << 20


class Request(msgspec.Struct):
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    form: dict[str, str]
    body: bytes
    path_params: dict[str, str] = msgspec.field(default_factory=dict)

    def param(self, name: str, default: str | None = None) -> str | None:
        """A parameter from the form body or, failing that, the query string: Tradier
        clients send order parameters either way."""
        if name in self.form:
            return self.form[name]
        return self.query.get(name, default)

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() == "true"


class Response(msgspec.Struct):
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, ENCODER.encode(payload))


def text_response(text: str, status: int) -> Response:
    return Response(status, text.encode(), content_type="text/plain; charset=utf-8")


async def read_request(scope: dict[str, Any], receive: Receive) -> Request:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise ValueError("request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                           keep_blank_values=True))
    form: dict[str, str] = {}
    content_type = headers.get("content-type", "")
    if body and ("form-urlencoded" in content_type or not content_type):
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return Request(scope["method"].upper(), scope["path"], headers, query, form, body)


async def send_response(send: Send, response: Response) -> None:
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(response.body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


class Router:
    """Routes ``METHOD /path/{param}`` to handlers. Unknown paths are 404, known paths with
    another method 405."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method.upper(), re.compile(f"^{regex}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | int:
        path_known = False
        for route_method, regex, handler in self._routes:
            found = regex.match(path)
            if found is None:
                continue
            path_known = True
            if route_method == method:
                return handler, found.groupdict()
        return 405 if path_known else 404
