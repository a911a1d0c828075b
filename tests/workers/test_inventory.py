"""Workers announce what they have and take only the queues of the families they hold a checkpoint for."""

from __future__ import annotations

import pytest

from tumorsynth.api.metrics import online_workers, render_metrics
from tumorsynth.jobs.connection import connect
from tumorsynth.models.registry import ModelRegistry
from tumorsynth.settings import Settings
from tumorsynth.workers import inventory
from tumorsynth.workers.context import WorkerContext
from tumorsynth.workers.supervision import announce

PER_FAMILY = {"ldm": "q.ldm", "vqgan": "q.vqgan", "tavit": "q.tavit", "stylegan2": "q.stylegan2"}


@pytest.fixture(scope="module")
def ldm_only(tmp_path_factory):
    from tumorsynth.models.ldm.configs import create_untrained

    root = tmp_path_factory.mktemp("ldm-only")
    create_untrained(root / "ldm", preset="tiny", name="tiny", version="1", seed=0)
    return root


def test_auto_takes_the_queues_of_installed_families_only(ldm_only, tmp_path):
    s = Settings(model_dir=ldm_only, family_queues=PER_FAMILY)
    assert inventory.resolve_queues("auto", s, ModelRegistry(ldm_only)) == ["q.ldm"]
    # the single-machine default: one queue for every family, named as before
    assert inventory.resolve_queues("auto", Settings(model_dir=ldm_only), ModelRegistry(ldm_only)) == ["gpu"]
    assert inventory.resolve_queues("q.ldm,q.vqgan", s, ModelRegistry(ldm_only)) == ["q.ldm", "q.vqgan"]
    with pytest.raises(ValueError, match="no checkpoint under"):
        inventory.resolve_queues("auto", s, ModelRegistry(tmp_path))


def test_announcement_reaches_queues_view_and_metrics(ldm_only, redis_server):
    s = Settings(redis_url=redis_server.url, model_dir=ldm_only, family_queues=PER_FAMILY)
    ctx = WorkerContext(s)
    has = {"gpus": inventory.gpus(), "models": inventory.models(ctx.registry), "versions": inventory.versions()}
    announce(ctx, ["q.ldm"], has)
    me = next(w for w in online_workers(connect(s.redis_url), s) if w["id"] == ctx.worker_id)
    assert me["models"] == [{"id": "ldm/tiny@1", "sha256": ctx.registry.get("ldm/tiny@1").weights_sha256}]
    assert me["versions"]["tumorsynth"] and me["versions"]["celery"] and isinstance(me["gpus"], list)
    text = render_metrics(connect(s.redis_url), s).decode()
    assert f'tumorsynth_worker_model_installed{{model="ldm/tiny@1",worker="{ctx.worker_id}"}} 1.0' in text
    info = next(
        line
        for line in text.splitlines()
        if line.startswith("tumorsynth_worker_info{") and f'worker="{ctx.worker_id}"' in line
    )
    assert 'queues="q.ldm"' in info and 'gpus="none"' in info
    assert 'tumorsynth_workers_online{queue_name="q.ldm"}' in text
