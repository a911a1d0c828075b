"""Requests whose framing two parsers could read differently are refused before anything reads their body.

A body framed by both ``Transfer-Encoding`` and ``Content-Length`` is the request-smuggling shape (RFC 9112 §6.1:
a server may reject it, and must close the connection if it does not): a proxy in front that honours the other
header would see a different request than the API does.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send


class ConflictingFraming:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = [name.lower() for name, _ in scope.get("headers") or []]
            if b"transfer-encoding" in names and b"content-length" in names:
                return await self._refuse(send)
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "type": "https://tumorsynth.dev/problems/malformed_request",
                "title": "Malformed request",
                "status": 400,
                "code": "malformed_request",
                "detail": "the request has both Transfer-Encoding and Content-Length; send one of them",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
