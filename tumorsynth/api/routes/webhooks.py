"""``GET /v1/jobs/{id}/webhooks``: what happened to a job's webhook deliveries."""

from __future__ import annotations

from fastapi import APIRouter

from ...jobs.outbox import Outbox
from ...jobs.records import rfc3339
from ..deps import JobIdDep, JobsDep, ServicesDep, TenantDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("/{job_id}/webhooks")
def deliveries(job_id: JobIdDep, tenant: TenantDep, jobs: JobsDep, services: ServicesDep) -> dict:
    """Each delivery: its ``webhook-id``, event type, state (pending, delivered, failed, refused) and attempts."""
    jobs.get_for_tenant(tenant, job_id)
    return {
        "deliveries": [
            {
                "id": d["id"],
                "type": d["type"],
                "url": d["url"],
                "state": d["state"],
                "attempts": d["attempts"],
                "last_status": d["last_status"],
                "last_error": d["last_error"],
                "next_attempt_at": rfc3339(d["next_attempt_at"]) if d["state"] == "pending" else None,
                "delivered_at": rfc3339(d["delivered_at"]),
            }
            for d in Outbox(services.redis).for_job(job_id)
        ]
    }
