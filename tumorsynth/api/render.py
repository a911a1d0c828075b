"""Records → the contract's shapes. Output URLs are presigned at read time, so they are always fresh."""

from __future__ import annotations

import time

from ..jobs.records import JobRecord, rfc3339
from ..schemas import Job, OutputInfo
from ..settings import Settings
from ..storage.base import ObjectStore


def output_url(store: ObjectStore, settings: Settings, rec: JobRecord, name: str, key: str) -> tuple[str, str | None]:
    url = store.presigned_get_url(key, settings.presign_expiry_seconds)
    if url is None:
        return f"{settings.public_url}/v1/jobs/{rec.id}/outputs/{name}", None
    return url, rfc3339(time.time() + settings.presign_expiry_seconds)


def job_view(rec: JobRecord, store: ObjectStore, settings: Settings) -> Job:
    outputs = []
    for o in rec.outputs:
        url, expires = output_url(store, settings, rec, o.name, o.key)
        outputs.append(
            OutputInfo(
                name=o.name,
                modality=o.modality,
                sample_index=o.sample_index,
                kind=o.kind,
                url=url,
                expires_at=expires,
                size=o.size,
                sha256=o.sha256,
                shape=o.shape,
                spacing=o.spacing,
            )
        )
    total = rec.total_steps
    metrics = {
        k: round(v, 3)
        for k, v in (("queue_seconds", rec.queue_seconds), ("run_seconds", rec.run_seconds))
        if v is not None
    }
    return Job(
        id=rec.id,
        model=rec.model,
        status=rec.status,
        created_at=rfc3339(rec.created_at),
        started_at=rfc3339(rec.started_at),
        completed_at=rfc3339(rec.completed_at),
        progress={
            "completed_steps": rec.completed_steps,
            "total_steps": total,
            "fraction": round(rec.completed_steps / total, 4) if total else (1.0 if rec.status == "succeeded" else 0.0),
        },
        request=rec.request,
        inputs=[
            {
                "name": i.name,
                "sha256": i.sha256,
                "shape": i.shape,
                "spacing": i.spacing,
                "size": i.size,
                "label_convention": i.label_convention,
                "labels": i.labels,
            }
            for i in rec.inputs
        ],
        outputs=outputs,
        error=rec.error,
        attempts=rec.attempts,
        metrics=metrics,
        batch_id=rec.batch_id,
        delivery=delivery_view(rec),
    )


def delivery_view(rec: JobRecord) -> dict | None:
    """The PACS delivery: as the delivery loop last wrote it, or pending until its first attempt."""
    if rec.delivery is not None:
        return rec.delivery
    if rec.request.get("send_to") == "pacs" and rec.status == "succeeded":
        return {"target": "pacs", "destination": "", "state": "pending", "attempts": 0}
    return None
