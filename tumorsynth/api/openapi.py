"""What generated clients read in ``/openapi.json``: stable operation ids (the route function's name, so a client's
method names survive a path or tag change), the bearer security scheme, and ``application/problem+json`` with the
``Problem`` schema as every operation's 4XX and 5XX answer (FastAPI would declare its own ``HTTPValidationError``
for 422, a shape this API never sends)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from ..schemas import Problem
from .problems import PROBLEM

ERROR_ANSWERS = {
    "422": "The request names a field to change (``errors``); nothing was stored or queued",
    "4XX": "A client error (401 no or unknown key, 404 not found or another tenant's, 408/413 upload limits, "
    "429 too many event streams); nothing was stored or queued",
    "5XX": "503 with Retry-After when the job store, broker or object storage is unreachable",
}


def operation_id(route: APIRoute) -> str:
    return route.name


def _problem_schemas() -> dict[str, Any]:
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"Problem": schema, **defs}


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that declares the problem answers on every operation."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(_problem_schemas())
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        problem = {"content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for operations in schema.get("paths", {}).values():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                for code, description in ERROR_ANSWERS.items():
                    responses[code] = {"description": description, **problem}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
