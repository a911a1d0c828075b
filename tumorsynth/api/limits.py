"""Caps on request bodies, enforced while the body streams in: size (Content-Length can lie or be absent) and time
(a client that stops sending, or sends too slowly, cannot hold a connection and a request for ever)."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLarge, TumorsynthError


class BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` mid-stream; the typed-error handler answers 413 (the middleware is a fallback)."""


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(
                        f"the request body exceeds {self.max_bytes} bytes; upload smaller or compressed files"
                    )
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "type": "https://tumorsynth.dev/problems/payload_too_large",
                "title": "Payload too large",
                "status": 413,
                "code": "payload_too_large",
                "detail": f"the request body exceeds {self.max_bytes} bytes; "
                "upload smaller or compressed (.nii.gz) files",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTimedOut(TumorsynthError):
    status = 408
    code = "request_timeout"
    title = "Request timeout"


class BodyTimeout:
    """Each wait for more of the body is bounded by ``idle`` seconds and by ``total`` seconds since the request
    began; after the last body message, ``receive`` is passed through untouched (an event stream waits on it for
    the client's disconnect as long as it likes)."""

    def __init__(self, app: ASGIApp, idle: float, total: float):
        self.app, self.idle, self.total = app, idle, total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.total
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            wait = min(self.idle, deadline - time.monotonic())
            try:
                msg = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except TimeoutError as exc:
                raise BodyTimedOut(
                    f"the request body stopped arriving (nothing for {self.idle:.0f} s, or not complete within "
                    f"{self.total:.0f} s); send it again"
                ) from exc
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                body_done = True
            return msg

        await self.app(scope, timed_receive, send)
