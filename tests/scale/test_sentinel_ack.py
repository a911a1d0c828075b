"""Behind Sentinel, a job is acknowledged only once a replica holds it: with the replica down, POST /v1/jobs is a
503 with Retry-After and nothing is kept; with it back, 202. Event streams follow the primary through the sentinels
too (redis.asyncio's Sentinel)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ALPHA, make_settings
from tests.support.sentinel import SentinelGroup
from tests.support.volumes import mask_bytes
from tumorsynth.jobs import keys
from tumorsynth.jobs.connection import connect, connect_async


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    g = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    yield g
    g.stop()


def _post(client: TestClient):
    files = {
        "request": (None, json.dumps({"model": "ldm/tiny@1"}), "application/json"),
        "mask": ("m.nii.gz", mask_bytes((24, 28, 20)), "application/octet-stream"),
    }
    return client.post("/v1/jobs", files=files, headers=ALPHA)


def test_no_replica_no_acknowledgement(group, s3_endpoint, model_dir):
    from tumorsynth.api.app import create_app
    from tumorsynth.storage import make_store

    s = make_settings(group, s3_endpoint, model_dir, family_queues={"ldm": "parked-ack"})
    make_store(s).ensure_bucket()
    replica = next(p for p in group.data_ports if p != group.primary_port())
    with TestClient(create_app(s)) as client:
        assert _post(client).status_code == 202
        group.nodes[replica].kill9()
        refused = _post(client)
        assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
        assert "replica" in refused.json()["detail"]
        listed = client.get("/v1/jobs", headers=ALPHA).json()["jobs"]
        assert len(listed) == 1, "the refused submission left a job behind"
        r = connect(s.redis_url)  # its queue message may stay: a worker finds no record and drops it
        assert len(r.keys(keys.job("*"))) == 1 and r.zcard(keys.queued("parked-ack")) == 1
        group.restart(replica)
        group.wait_replicated(group.primary_port())
        assert _post(client).status_code == 202


def test_async_clients_find_the_primary_through_the_sentinels(group):
    async def ping() -> bool:
        client = connect_async(group.url, socket_timeout=2, socket_connect_timeout=1)
        try:
            return await client.ping()
        finally:
            await client.aclose()

    assert asyncio.run(ping()) is True
