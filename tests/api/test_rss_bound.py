"""A real API process (``tumorsynth serve --no-worker``, real Redis, S3 endpoint) takes both malformed corpora
several times over: every answer is the expected 4xx, nothing is stored or queued, and its RSS stays bounded.

The bound is generous for allocator noise and far below a leak: one round sends about 20 MB of bodies, so an API
that kept any part of each upload would grow by tens of MiB per round. ``benchmarks/malformed_rss.py`` prints the
figure over many rounds.
"""

from __future__ import annotations

import httpx
import redis

from tests.conftest import ALPHA, make_settings
from tests.support.hammer import ApiProcess, fire, rss_kib, shots
from tests.support.services import queue_depth, settings_env
from tumorsynth.embedded.redis_server import free_port
from tumorsynth.jobs import keys

WARM_ROUNDS, ROUNDS = 2, 5
BOUND_MIB = 32


def test_rss_stays_bounded_and_nothing_is_kept(redis_server, s3_endpoint, model_dir, tmp_path):
    from tumorsynth.storage import make_store

    s = make_settings(
        redis_server,
        s3_endpoint,
        model_dir,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/11",
        max_request_bytes=8 * 1024**2,
        max_file_bytes=4 * 1024**2,
        max_decompressed_bytes=32 * 1024**2,
    )
    store = make_store(s)
    store.ensure_bucket()
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    api = ApiProcess(settings_env(s), free_port(), tmp_path / "api.log").start()
    try:
        batch = shots(ALPHA)
        assert sum(len(b.body) for b in batch) > 16 * 1024**2
        with httpx.Client(base_url=api.base_url, timeout=60) as client:
            for _ in range(WARM_ROUNDS):
                assert fire(client, batch) == []
            warm, _ = rss_kib(api.proc.pid)
            for _ in range(ROUNDS):
                assert fire(client, batch) == []
            after, _ = rss_kib(api.proc.pid)
    finally:
        api.stop()
    assert (after - warm) / 1024 < BOUND_MIB, f"RSS grew {(after - warm) / 1024:.1f} MiB over {ROUNDS} rounds"
    assert store.list("") == []
    ours = tuple(f"{keys.PREFIX}{n}".encode() for n in ("job", "tenant", "queued"))
    assert [k for k in r.scan_iter() if k.startswith(ours)] == []
    assert all(queue_depth(r, q) == 0 for q in set(s.family_queues.values()))
