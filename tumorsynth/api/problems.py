"""Every error as RFC 9457 ``application/problem+json``, with field errors for validation."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import JobStoreUnavailable, TumorsynthError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    code: str | None = None,
    errors: list[dict] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "type": f"https://tumorsynth.dev/problems/{code or status}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if code:
        body["code"] = code
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(TumorsynthError)
    async def _typed(_: Request, exc: TumorsynthError):
        headers = {"WWW-Authenticate": 'Bearer realm="tumorsynth"'} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": "5"}
        if retry_after := getattr(exc, "retry_after", None):
            headers = {"Retry-After": str(retry_after)}
        if exc.status == 408:  # the rest of the body may still arrive; the connection cannot carry another request
            headers = {"Connection": "close"}
        return problem(
            exc.status,
            exc.title,
            exc.message,
            code=exc.code,
            errors=[{"field": e.field, "message": e.message} for e in exc.errors] or None,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = [
            {
                "field": ".".join(str(p) for p in e["loc"] if p not in ("body", "query", "path", "header")),
                "message": e["msg"],
            }
            for e in exc.errors()
        ]
        return problem(
            422,
            "Invalid request",
            "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            code="invalid_request",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return problem(exc.status_code, _title(exc.status_code), str(exc.detail), headers=exc.headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _store_gone(request: Request, exc: Exception):
        log.warning("job store unreachable on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return await _typed(
            request,
            JobStoreUnavailable(
                "the job store (Redis) did not answer; nothing was changed, retry after the Retry-After seconds"
            ),
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect):
        # A client that hangs up mid-upload is routine (a timeout, a closed laptop), not a server error: one line,
        # no traceback. Nothing was stored, since nothing is stored before the whole body has been checked.
        log.info(
            "upload aborted by the client: %s %s (declared %s bytes); nothing was kept",
            request.method,
            request.url.path,
            request.headers.get("content-length", "no length"),
        )
        return Response(status_code=400)  # the connection is gone: nobody reads it

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):  # reached only from outside UnhandledErrors
        log.exception("unhandled error")
        return _internal_error()

    app.add_middleware(UnhandledErrors)


def _internal_error() -> JSONResponse:
    return problem(500, "Internal error", "an unexpected error occurred; it has been logged", code="internal_error")


class UnhandledErrors:
    """A bug's exception becomes one logged traceback and a 500 problem+json, and goes no further.

    Starlette's outermost error middleware answers too, but then re-raises, and uvicorn logs the traceback a second
    time and closes the connection, so a client's next request on it is reset. Typed errors are left to their
    handlers.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except TumorsynthError:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # half an answer has gone out: only closing the connection can end it
                raise
            await _internal_error()(scope, receive, send)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
