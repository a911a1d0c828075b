"""Liveness and readiness: ready means the broker, the job store and object storage answer and a worker is up."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ...jobs import keys
from ..deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/livez")
def livez() -> dict:
    return {"status": "ok"}


def _checks(services) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        services.jobs.ping()
        checks["broker"] = checks["job_store"] = "ok"
    except Exception as exc:
        checks["broker"] = checks["job_store"] = f"unreachable: {type(exc).__name__}"
    try:
        services.store.ping()
        checks["object_store"] = "ok"
    except Exception as exc:
        checks["object_store"] = f"unreachable: {type(exc).__name__}"
    try:
        seen = services.redis.zrangebyscore(keys.WORKERS, time.time() - services.settings.lease_seconds, "+inf")
        checks["workers"] = "ok" if seen else "no worker has reported in"
    except Exception as exc:
        checks["workers"] = f"unknown: {type(exc).__name__}"
    return checks


@router.get("/readyz")
async def readyz(services: ServicesDep):
    checks = await run_in_threadpool(_checks, services)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )
