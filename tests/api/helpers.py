from __future__ import annotations

import json
import time

from tests.conftest import ALPHA


def submit(client, request: dict, files: dict[str, bytes] | None = None, headers=ALPHA, **kw):
    parts = {"request": (None, json.dumps(request), "application/json")}
    for name, data in (files or {}).items():
        parts[name] = (f"upload-{name}.nii.gz", data, "application/octet-stream")
    return client.post("/v1/jobs", files=parts, headers=headers | kw.pop("extra_headers", {}), **kw)


def wait_status(client, job_id: str, statuses: set[str], timeout: float = 120, headers=ALPHA, pred=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in statuses and (pred is None or pred(job)):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is {job['status']} ({job['progress']}), wanted {statuses}")
        time.sleep(0.05)
