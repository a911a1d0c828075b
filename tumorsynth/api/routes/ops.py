"""What ops watch: ``/metrics`` and ``/metrics/api`` (Prometheus text format) and ``GET /v1/queues``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import ServicesDep, TenantDep
from ..metrics import online_workers, queues_view, render_api_metrics, render_metrics

router = APIRouter(tags=["ops"])


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    body = await run_in_threadpool(render_metrics, services.redis, services.settings)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/api", include_in_schema=False)
async def api_metrics(services: ServicesDep) -> Response:
    """The API process's own view (``tumorsynth_redis_up``): a 200 while Redis is down, so the alerts can tell a Redis
    outage (reads 0) from the API being down (this scrape fails)."""
    body = await run_in_threadpool(render_api_metrics, services.redis)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/queues")
def queues(services: ServicesDep, tenant: TenantDep) -> dict:
    """Per queue: depth, oldest queued age, running jobs, workers online (the same for every tenant)."""
    return {
        "queues": queues_view(services.redis, services.settings),
        "workers": [
            {k: w.get(k) for k in ("id", "queues", "device", "host", "seen_at", "gpus", "models", "versions")}
            for w in online_workers(services.redis, services.settings)
        ],
    }
