"""Per-tenant fairness (issue 14, #12) with two tenants and one worker: a tenant's flood queues behind another
tenant's first job, and a tenant over its cap of outstanding jobs or work gets a 429 with nothing stored.

Tenants are named per test: the suite's Redis is shared, and the counters are per tenant.
"""

from __future__ import annotations

import uuid

from tests.api.helpers import submit, wait_status
from tests.support.services import WorkerProcess
from tests.support.volumes import mask_bytes

from .faults import SHAPE, request, stack


def tenants() -> tuple[dict, dict, str]:
    a, b = f"flood{uuid.uuid4().hex[:6]}", f"calm{uuid.uuid4().hex[:6]}"
    keys = f"{a}:key-{a},{b}:key-{b}"
    return {"Authorization": f"Bearer key-{a}"}, {"Authorization": f"Bearer key-{b}"}, keys


def post(st, req: dict, headers: dict):
    return submit(st.client, req, {"mask": mask_bytes(SHAPE)}, headers=headers)


def test_one_tenants_flood_does_not_delay_anothers_first_job(redis_server, s3_endpoint, model_dir, tmp_path):
    flood, calm, keys = tenants()
    with stack(redis_server, s3_endpoint, model_dir, api_keys=keys) as st:
        floods = [post(st, request(), flood).json()["id"] for _ in range(6)]
        mine = post(st, request(), calm).json()["id"]  # submitted last, after the whole flood
        w = WorkerProcess(st.settings, tmp_path / "worker.log", queues=st.settings.queue_for("ldm")).start()
        try:
            for job_id, headers in [(j, flood) for j in floods] + [(mine, calm)]:
                done = wait_status(st.client, job_id, {"succeeded", "failed"}, timeout=240, headers=headers)
                assert done["status"] == "succeeded", done["error"]
            started = sorted([*floods, mine], key=lambda j: st.services.jobs.get(j).started_at)
            # one flood job may run first (level 0, like the calm tenant's); then the calm tenant's, not 5 more
            assert started.index(mine) <= 1, [st.services.jobs.get(j).started_at for j in started]
        finally:
            w.stop()


def test_a_tenant_over_its_caps_gets_429_and_nothing_is_kept(redis_server, s3_endpoint, model_dir):
    flood, calm, keys = tenants()
    tenant = flood["Authorization"].removeprefix("Bearer key-")
    with stack(
        redis_server,
        s3_endpoint,
        model_dir,
        api_keys=keys,
        max_active_jobs_per_tenant=2,
        max_active_work_per_tenant=1000,
    ) as st:  # no worker: the jobs stay queued
        first = [post(st, request(), flood) for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202]
        stored = sorted(o.key for o in st.services.store.list(f"tenants/{tenant}/"))
        over = post(st, request(), flood)
        assert over.status_code == 429 and int(over.headers["retry-after"]) > 0, over.text
        assert over.headers["content-type"] == "application/problem+json" and over.json()["code"] == "tenant_busy"
        assert "2 jobs queued or running" in over.json()["detail"]
        assert sorted(o.key for o in st.services.store.list(f"tenants/{tenant}/")) == stored
        assert len(st.client.get("/v1/jobs", headers=flood).json()["jobs"]) == 2
        assert post(st, request(), calm).status_code == 202  # the other tenant is not held by it
        st.client.post(f"/v1/jobs/{first[0].json()['id']}/cancel", headers=flood)
        assert post(st, request(), flood).status_code == 202  # a canceled job frees its place
        st.client.post(f"/v1/jobs/{first[1].json()['id']}/cancel", headers=flood)
        big = post(st, {**request(20), "num_samples": 64}, flood)  # 64 × 20 = 1280 sample-steps > 1000
        assert big.status_code == 429 and "1280 sample-steps" in big.json()["detail"], big.text
