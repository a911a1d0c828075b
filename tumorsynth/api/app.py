"""``create_app()``: the FastAPI application. The API never imports torch."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .. import __version__
from ..schemas import JobRequest
from ..settings import Settings, get_settings
from . import openapi, problems
from .framing import ConflictingFraming
from .limits import BodySizeLimit, BodyTimeout
from .routes import batches, dashboard, datasets, health, jobs, models, objects, ops, webhooks
from .services import Services


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="tumorsynth",
        version=__version__,
        summary="Synthetic brain-tumour MRI for data augmentation",
        description="Generation jobs for mask-conditioned, class-conditioned and contrast-synthesis models. "
        "Every output is synthetic and labelled so.",
        generate_unique_id_function=openapi.operation_id,
        lifespan=_freeze_what_startup_built,
    )
    app.state.services = services or Services.from_settings(settings)
    problems.install(app)
    openapi.install(app)
    for module in (health, models, jobs, batches, datasets, objects, ops, webhooks, dashboard):
        app.include_router(module.router)
    app.include_router(batches.masks_router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(BodyTimeout, idle=settings.body_idle_timeout_seconds, total=settings.body_timeout_seconds)
    app.add_middleware(ConflictingFraming)  # outermost: refused before any body is read
    _document_job_request(app)
    return app


_frozen = False


@asynccontextmanager
async def _freeze_what_startup_built(app: FastAPI) -> AsyncIterator[None]:
    """Move the objects the process built to serve (~120,000: FastAPI, pydantic, the routes, the clients) out of
    the cyclic collector's sight, once per process (CPython's ``gc.freeze``). They live as long as the process, yet
    every full collection scanned them: ~30–60 ms on the 2-core dev machine, now and then in the middle of a request,
    which set the submit p99. Garbage made later is collected as before."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
    yield


def _document_job_request(app: FastAPI) -> None:
    """``JobRequest`` travels as a JSON form field, so FastAPI does not list it; add it to the components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # FastAPI's, cached on the app
            defs = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs.pop("$defs", {}))
            components["JobRequest"] = defs
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
